"""Processes a bench starts, ended with it however it ends.

A bench killed mid-run (Ctrl-C twice, SIGTERM, SIGKILL) never reaches its ``finally``: the
daemon it was measuring, or the process it keeps busy on a core, would run on and skew every
measurement after it. Started with ``preexec_fn=dies_with_parent``, the kernel sends such a
child SIGTERM when the bench's process ends (Linux's PR_SET_PDEATHSIG); elsewhere it is a
no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1

try:  # looked up here, not in the child: a dlopen between fork and exec can deadlock
    _prctl = getattr(ctypes.CDLL(None), "prctl", None)
except OSError:
    _prctl = None


def dies_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: runs in the child between fork and exec."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the bench ended before the call: nothing would signal this child
            os._exit(1)
