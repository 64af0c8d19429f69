"""Internals shared with h5feed's converters and benchmarks.

``converters/`` (installed as ``h5feed.convert``) and ``benchmarks/``
(installed as ``h5feed.benchmarks``) sit on top of the core package: they
import h5feed's public names and, for what is not public, this module only.
So this list is every internal those two depend on; change one of these
names and the converters or the benchmarks change with it. Nothing in the
core package imports this module (nor the converters).
"""

from __future__ import annotations

from ._args import check_bool, check_int, check_shard, int_at_least, shard_arg
from ._codecs import COMPRESSIONS
from ._damage import first_line
from ._files import open_h5
from ._meta import MetaTable, load_table as load_metadata
from ._plan import shard_of_keys
from ._progress import Progress
from ._publish import check_output, discard
from .grow import incoming_path
from ._readahead import MIN_ROW_BYTES
from .cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .layout import W as WEIGHTS_DATASET, check_virtual_source, source_name

__all__ = [
    "COMPRESSIONS",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MIN_ROW_BYTES",
    "MetaTable",
    "Progress",
    "WEIGHTS_DATASET",
    "check_bool",
    "check_int",
    "check_output",
    "check_shard",
    "check_virtual_source",
    "discard",
    "first_line",
    "incoming_path",
    "int_at_least",
    "load_metadata",
    "open_h5",
    "shard_arg",
    "shard_of_keys",
    "source_name",
]
