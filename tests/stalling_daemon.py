"""The real lifecycle with one part that reports progress until a file appears.

Run as ``python stalling_daemon.py CONFIG STALL_FILE``: the watchdog tests start it the way
systemd starts ``edged run``, then create STALL_FILE to make the part stop reporting.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from edged.parts import ProgressMonitor
from edged.service import serve
from edged.settings import Settings


class StallingPart:
    """Beats every 20 ms from its own thread, like a capture loop, until told to stall."""

    name = "stalling"

    def __init__(self, monitor: ProgressMonitor, stall_file: Path) -> None:
        self._pulse = monitor.register(self.name)
        self._stall_file = stall_file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            if not self._stall_file.exists():
                self._pulse.beat()

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float) -> None:
        self._stop.set()
        self._thread.join()

    def apply(self, settings: Settings) -> None:
        pass

    def describe(self) -> str:
        return "stalled" if self._stall_file.exists() else "making progress"


def main() -> int:
    config, stall_file = Path(sys.argv[1]), Path(sys.argv[2])
    return serve(config, parts_factory=lambda settings, monitor, model: [StallingPart(monitor, stall_file)])


if __name__ == "__main__":
    sys.exit(main())
