"""The exceptions h5feed raises.

Every error is an :class:`H5FeedError`, the one class to catch everything.
Each also subclasses the builtin that matches its meaning, so callers can
catch the specific type, the package's base class, or the builtin:

- bad input or a bad file is a :class:`ValueError` (a missing split or ID is
  also a :class:`KeyError`; a path that is not an HDF5 file also an
  :class:`OSError`);
- an I/O failure -- a full disk (:class:`DiskFullError`) or a chunk that
  cannot be read back (:class:`ReadError`) -- is an :class:`OSError` and
  *not* a :class:`ValueError`, so a caller's ``except ValueError`` never
  swallows it;
- a worker process that died (:class:`WorkerError`) is a
  :class:`RuntimeError`, not a :class:`ValueError`.

The hierarchy::

    H5FeedError(Exception)
      FormatError(ValueError)                 a file that is not a sound h5feed file
        NotH5FeedFileError(OSError)           missing, not HDF5, truncated
        DamagedFileError                      HDF5 cannot read its structure
        UnsupportedFormatVersionError
        LayoutError
        IncompleteFileError
        UntrustedFileError
      UnknownSplitError(KeyError, ValueError)
      UnknownIDError(KeyError, ValueError)
      UnknownColumnError(KeyError, ValueError) a metadata column the file lacks
      InvalidSampleIDError(ValueError)
      SampleError(ValueError)
      SourceError(ValueError)
      StateMismatchError(ValueError)          a saved state that belongs to another
                                              file, selection or option set
      WriterError                             writing failed, or was refused
        WriterInputError(ValueError)          refused: the writer was asked for
                                              something it cannot do
          OutputExistsError(FileExistsError)  the output exists (no overwrite)
        DiskFullError(OSError)                the disk or file size limit ran out
      ReadError(OSError)                      data could not be read back
      WorkerError(RuntimeError)               a worker process died

A :class:`WriterError` that is neither of its subclasses is a write that
failed for another reason (an I/O error other than a full disk, a writing
child process that crashed): not bad input, so not a :class:`ValueError`.

Messages name the file, the HDF5 path, the sample ID or row, and echo the
offending value with ``!r``.
"""

from __future__ import annotations

__all__ = [
    "DamagedFileError",
    "DiskFullError",
    "FormatError",
    "H5FeedError",
    "IncompleteFileError",
    "InvalidSampleIDError",
    "LayoutError",
    "NotH5FeedFileError",
    "OutputExistsError",
    "ReadError",
    "SampleError",
    "SourceError",
    "StateMismatchError",
    "UnknownColumnError",
    "UnknownIDError",
    "UnknownSplitError",
    "UnsupportedFormatVersionError",
    "UntrustedFileError",
    "WorkerError",
    "WriterError",
    "WriterInputError",
]


class H5FeedError(Exception):
    """Base class of every error h5feed raises on purpose."""


class FormatError(H5FeedError, ValueError):
    """A file is not a valid h5feed file."""


class NotH5FeedFileError(FormatError, OSError):
    """The path is missing, unreadable, truncated, or not HDF5 at all."""


class DamagedFileError(FormatError):
    """HDF5 cannot read the file's structure: a damaged superblock, object
    header, B-tree, heap, attribute or string. The message names the file
    and the HDF5 object; the error h5py raised is chained as ``__cause__``.
    (A chunk of data that cannot be read is a :class:`ReadError`.)"""


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


class _KeyMessage(KeyError):
    """A KeyError whose ``str`` is its message (KeyError would repr() it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownSplitError(H5FeedError, _KeyMessage, ValueError):
    """A split name that the file does not have."""


class UnknownColumnError(H5FeedError, _KeyMessage, ValueError):
    """A metadata column that the file does not have."""


class UnknownIDError(H5FeedError, _KeyMessage, ValueError):
    """A sample ID that the file does not have."""


class InvalidSampleIDError(H5FeedError, ValueError):
    """A sample ID that is empty, not text, or unsafe as a file name."""


class SampleError(H5FeedError, ValueError):
    """A sample or label that does not match what the writer expects."""


class SourceError(H5FeedError, ValueError):
    """A conversion source (folder, table, label file) is unusable."""


class StateMismatchError(H5FeedError, ValueError):
    """A saved position (``state_dict()``) that cannot be loaded here: saved
    for another file, selection, option set or seed (the message names each
    difference), or not a state at all."""


class WriterError(H5FeedError):
    """Writing failed, or was refused, for a reason other than one bad sample."""


class WriterInputError(WriterError, ValueError):
    """The writer refused what it was asked to do: an output path it cannot
    use, splits that overlap or name rows it does not have, a row count other
    than ``expected_rows``, no samples at all, a closed writer, parts that
    cannot be merged."""


class OutputExistsError(WriterInputError, FileExistsError):
    """The output file exists and ``overwrite`` was not given."""


class DiskFullError(WriterError, OSError):
    """The disk (or the file size limit) ran out while writing."""


class ReadError(H5FeedError, OSError):
    """Data could not be read back: a damaged chunk or a failed checksum."""


class WorkerError(H5FeedError, RuntimeError):
    """A worker process died or stopped answering."""
