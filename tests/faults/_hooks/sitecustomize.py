"""Kill-point hooks for any Python process of a test (on PYTHONPATH only in tests).

When ``H5FEED_TEST_KILL_POINT`` is ``"POINT SIGNAL"`` (see writer_script.py),
every Python process started with this folder on ``PYTHONPATH`` -- the
``h5feed`` command and the child it writes in -- installs the hook; the first
process to reach the point claims ``H5FEED_TEST_KILL_ONCE`` (a file created
exclusively) and sends itself the signal, so exactly one kill happens.
``H5FEED_TEST_SLOW_WRITES`` (seconds) slows every write to HDF5 down
(``writer_script.slow_writes``), so that a timed kill lands mid-write.
"""

import os

if os.environ.get("H5FEED_TEST_SLOW_WRITES"):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import writer_script

    writer_script.slow_writes(float(os.environ["H5FEED_TEST_SLOW_WRITES"]))

if os.environ.get("H5FEED_TEST_KILL_POINT"):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import writer_script

    _point, _signame = os.environ["H5FEED_TEST_KILL_POINT"].split()
    writer_script.install_hook(_point, writer_script.SIGNALS[_signame], once=os.environ.get("H5FEED_TEST_KILL_ONCE"))
