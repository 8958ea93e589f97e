"""The real daemon, but every frame's read first takes three seconds, in ten pieces.

Run as ``python slow_read_daemon.py CONFIG``: between the pieces the read lets waiting
questions in, as a read on a slow board does between its pieces (the tiny model reads a frame
in milliseconds, in too few pieces to show how questions are let in over a long read).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edged.agent.tasks import FrameTasks
from edged.service import serve

read = FrameTasks.read


def slow_read(self, frame, between=None):  # noqa: ANN001, ANN202
    for _ in range(10):
        time.sleep(0.3)
        if between is not None:
            between()
    return read(self, frame, between)


if __name__ == "__main__":
    FrameTasks.read = slow_read  # type: ignore[method-assign]
    sys.exit(serve(Path(sys.argv[1])))
