"""h5feed.original_errors(): h5feed's exception types back out of tf.data."""

from __future__ import annotations

import numpy as np
import pytest

import h5feed
from h5feed._origin import note_raised


class Refused(ArithmeticError):
    """A user's transform error: not an h5feed type, not a ValueError."""


def refuse_row_7(X, Y):
    if np.any(X.reshape(len(X), -1)[:, 0] == 7):
        raise Refused("refused row 7")
    return X, Y


def _fake_tf_error(text: str) -> Exception:
    """An exception whose type lives in a 'tensorflow' module, as tf.errors do."""
    cls = type("UnknownError", (Exception,), {"__module__": "tensorflow.python.framework.errors_impl"})
    return cls(text)


def test_tf_data_error_comes_out_as_the_original_with_its_sample_ids(small_file):
    pytest.importorskip("tensorflow")
    ds = h5feed.tf_dataset(small_file, batch_size=4, shuffle=False, transform=refuse_row_7)
    with pytest.raises(Refused, match=r"refused row 7.*'id-7'") as caught:
        with h5feed.original_errors():
            for _ in ds:
                pass
    assert type(caught.value.__cause__).__module__.startswith("tensorflow")  # chained to TF's error
    assert "Refused: refused row 7" in str(caught.value.__cause__)


def test_other_exceptions_pass_through_unchanged():
    err = KeyError("not from a reader")
    with pytest.raises(KeyError) as caught:
        with h5feed.original_errors():
            raise err
    assert caught.value is err
    tf_err = _fake_tf_error("something TensorFlow found on its own")
    with pytest.raises(Exception) as caught:
        with h5feed.original_errors():
            raise tf_err
    assert caught.value is tf_err


def test_only_exceptions_raised_inside_the_block_are_restored():
    old = h5feed.errors.ReadError("rows 0-9 are damaged")
    note_raised(old)  # raised before the block: never restored
    tf_err = _fake_tf_error("ReadError: rows 0-9 are damaged")
    with pytest.raises(Exception) as caught:
        with h5feed.original_errors():
            raise tf_err
    assert caught.value is tf_err
    new = h5feed.errors.ReadError("rows 10-19 are damaged")
    with pytest.raises(h5feed.errors.ReadError) as caught:
        with h5feed.original_errors():
            note_raised(new)
            raise _fake_tf_error("... ReadError: rows 10-19 are damaged\n traceback ...")
    assert caught.value is new
