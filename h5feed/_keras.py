"""Keras, imported on first use with an error that says what to install.

``import h5feed`` must not import TensorFlow (it takes seconds and gigabytes);
only the modules that need Keras import this one.
"""

from __future__ import annotations

try:
    import keras
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "h5feed's H5Sequence needs Keras 3, which comes with TensorFlow: "
        "pip install tensorflow (or pip install keras plus a backend such as jax or torch)"
    ) from exc

if not hasattr(keras.utils, "PyDataset"):  # pragma: no cover
    raise ImportError(
        f"h5feed needs Keras 3 (keras.utils.PyDataset); found keras {keras.__version__}. "
        "pip install --upgrade tensorflow"
    )

__all__ = ["keras"]
