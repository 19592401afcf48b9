"""Test-only shim: with SQZ_TEST_NOOP_FLOCK=1, `fcntl.flock` succeeds without locking.

Put this directory on PYTHONPATH of a subprocess (tests/test_sweep_load.py does) to simulate a
filesystem whose file locks are not shared between workers (Lustre `localflock` across nodes, NFS
`local_lock=flock`): every worker then "holds" every lock at once. Never on the library's path.
"""

import os

if os.environ.get("SQZ_TEST_NOOP_FLOCK") == "1":
    import fcntl

    def _no_op_flock(fd, operation):
        return None

    fcntl.flock = _no_op_flock
