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


def dies_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: runs in the child between fork and exec."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    prctl = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the bench ended before the call: nothing would signal this child
            os._exit(1)
