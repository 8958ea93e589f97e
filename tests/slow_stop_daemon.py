"""The real daemon, but its capture part takes two seconds to stop.

Run as ``python slow_stop_daemon.py``: the test sends SIGTERM, then a request while the
daemon is still stopping, the window in which a client used to wait out its whole timeout.
"""

from __future__ import annotations

import sys
import time

from edged.models.installed import ModelChoice
from edged.parts import Part, ProgressMonitor
from edged.service import build_parts, serve
from edged.settings import Settings


class SlowToStop:
    """A part that takes two seconds longer to stop than the one it wraps."""

    def __init__(self, part: Part) -> None:
        self._part = part
        self.name = part.name

    def start(self) -> None:
        self._part.start()

    def stop(self, deadline: float) -> None:
        time.sleep(2)
        self._part.stop(deadline)

    def apply(self, settings: Settings) -> None:
        self._part.apply(settings)

    def describe(self) -> str:
        return self._part.describe()


def slow_capture(settings: Settings, monitor: ProgressMonitor, model: ModelChoice) -> list[Part]:
    return [SlowToStop(part) if part.name == "capture" else part for part in build_parts(settings, monitor, model)]


if __name__ == "__main__":
    sys.exit(serve(parts_factory=slow_capture))
