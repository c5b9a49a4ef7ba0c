"""Child processes that never outlive the process that started them.

`tied_to_parent()` is a `preexec_fn` for subprocess.Popen: on Linux it asks the kernel
(prctl PR_SET_PDEATHSIG) to send the child SIGTERM when its parent dies, however the parent
dies — SIGKILL included, where no cleanup code of the parent can run. Elsewhere it does
nothing (the parent's own shutdown still stops its children).
"""
import ctypes
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _tie(parent_pid):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl: nobody would tell us
        os._exit(1)


def tied_to_parent():
    if not sys.platform.startswith("linux"):
        return None
    return functools.partial(_tie, os.getpid())
