"""h5feed: train Keras models on data larger than memory, from one HDF5 file.

The public names are listed here. ``H5Sequence``, ``BackupAndRestore`` and
``tf_dataset`` need Keras and are imported on first use, so ``import h5feed``
stays light (no TensorFlow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors as errors
from .errors import (
    FormatError as FormatError,
    H5FeedError as H5FeedError,
    IncompleteFileError as IncompleteFileError,
    LayoutError as LayoutError,
    NotH5FeedFileError as NotH5FeedFileError,
    SampleError as SampleError,
    UnknownIDError as UnknownIDError,
    UnknownSplitError as UnknownSplitError,
)
from ._origin import original_errors as original_errors
from .layout import FORMAT_VERSION as FORMAT_VERSION, Layout as Layout, open_and_validate
from .metadata import read_metadata as read_metadata, select_ids as select_ids
from .splits import make_splits as make_splits
from .grow import append as append, compact as compact
from .reader import Reader as Reader
from .writer import DatasetWriter as DatasetWriter, write_arrays as write_arrays

if TYPE_CHECKING:
    from .backup import BackupAndRestore as BackupAndRestore
    from .sequence import H5Sequence as H5Sequence
    from .tf_data import tf_dataset as tf_dataset

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "BackupAndRestore",
    "DatasetWriter",
    "FormatError",
    "H5FeedError",
    "H5Sequence",
    "IncompleteFileError",
    "Layout",
    "LayoutError",
    "NotH5FeedFileError",
    "Reader",
    "SampleError",
    "UnknownIDError",
    "UnknownSplitError",
    "__version__",
    "append",
    "compact",
    "errors",
    "open_file",
    "make_splits",
    "original_errors",
    "read_metadata",
    "select_ids",
    "tf_dataset",
    "write_arrays",
]

# Names that import Keras or TensorFlow: resolved on first access (PEP 562).
_LAZY = {
    "BackupAndRestore": ("h5feed.backup", "BackupAndRestore"),
    "H5Sequence": ("h5feed.sequence", "H5Sequence"),
    "tf_dataset": ("h5feed.tf_data", "tf_dataset"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'h5feed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def open_file(path: Any, *, allow_virtual: bool = False) -> Layout:
    """Validate the h5feed file at ``path`` and describe it.

    Reads the file's metadata only, so it takes as long for a hundred
    million rows as for a thousand; the checks that need the rows (IDs
    unique, class indices and splits in range) are made where the rows are
    read, and all of them by ``h5feed verify`` (see the format specification).

    ``allow_virtual=True`` accepts a file made by ``h5feed merge`` whose
    datasets are virtual, once its parts pass the trust checks (see the
    design note ``docs/design/merged-files.md``).

    Raises:
        NotH5FeedFileError: missing, truncated or not HDF5.
        FormatError: not a valid h5feed file (the subclass says why).
    """
    return open_and_validate(path, allow_virtual=allow_virtual)
