"""Converters: turn what labs already have into one h5feed file.

Installed as ``h5feed.convert`` (see ``package_dir`` in setup.cfg). One
function per source format, each returning a :class:`ConversionResult`
(``.path``, ``.rows``); all writing goes through :class:`h5feed.DatasetWriter`.
The shell front is ``h5feed convert FORMAT ...`` (``converters/cli.py``).
"""

from __future__ import annotations

from ._common import ConversionResult as ConversionResult
from .arrays import from_arrays as from_arrays
from .csv import from_csv as from_csv
from .h5 import from_h5 as from_h5
from .images import from_image_dir as from_image_dir
from .npy import from_npy_dir as from_npy_dir

__all__ = ["ConversionResult", "from_arrays", "from_csv", "from_h5", "from_image_dir", "from_npy_dir"]
