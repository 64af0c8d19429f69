"""The exceptions h5feed raises.

Every error is an :class:`H5FeedError`, which is also a :class:`ValueError`,
so callers can catch the specific type, the package's base class, or the
builtin. Some also subclass the builtin that matches their meaning (a missing
split is also a :class:`KeyError`, a file that is not HDF5 is also an
:class:`OSError`). Messages name the file, the HDF5 path, the sample ID or
row, and echo the offending value with ``!r``.
"""

from __future__ import annotations

__all__ = [
    "DiskFullError",
    "FormatError",
    "H5FeedError",
    "IncompleteFileError",
    "InvalidSampleIDError",
    "LayoutError",
    "NotH5FeedFileError",
    "ReadError",
    "SampleError",
    "SourceError",
    "UnknownIDError",
    "UnknownSplitError",
    "UnsupportedFormatVersionError",
    "UntrustedFileError",
    "WorkerError",
    "WriterError",
]


class H5FeedError(ValueError):
    """Base class of every error h5feed raises on purpose."""


class FormatError(H5FeedError):
    """A file is not a valid h5feed file."""


class NotH5FeedFileError(FormatError, OSError):
    """The path is missing, unreadable, truncated, or not HDF5 at all."""


class UnsupportedFormatVersionError(FormatError):
    """The file's ``h5feed_format`` attribute is missing or unknown."""


class LayoutError(FormatError):
    """A dataset is missing, has the wrong shape or dtype, or disagrees."""


class IncompleteFileError(FormatError):
    """The file has no completion record: its writer never finished."""


class UntrustedFileError(FormatError):
    """The file uses a feature h5feed refuses to read from untrusted input
    (external storage, links, virtual datasets, unknown filters, absurd
    shapes)."""


class UnknownSplitError(H5FeedError, KeyError):
    """A split name that the file does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message.
        return str(self.args[0]) if self.args else ""


class UnknownIDError(H5FeedError, KeyError):
    """A sample ID that the file does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidSampleIDError(H5FeedError):
    """A sample ID that is empty, not text, or unsafe as a file name."""


class SampleError(H5FeedError):
    """A sample or label that does not match what the writer expects."""


class WriterError(H5FeedError):
    """Writing failed for a reason other than one bad sample."""


class DiskFullError(WriterError, OSError):
    """The disk (or the file size limit) ran out while writing."""


class SourceError(H5FeedError):
    """A conversion source (folder, table, label file) is unusable."""


class ReadError(H5FeedError, OSError):
    """Data could not be read back: a damaged chunk or a failed checksum."""


class WorkerError(H5FeedError, RuntimeError):
    """A worker process died or stopped answering."""
