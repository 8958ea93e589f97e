"""The real lifecycle with one part whose thread dies of a bug when a file appears.

Run as ``python dying_daemon.py CONFIG DIE_FILE``: the test starts it the way systemd starts
``edged run``, then creates DIE_FILE.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from edged.parts import ProgressMonitor
from edged.service import serve
from edged.settings import Settings


class DyingPart:
    """Beats every 20 ms from its own thread until DIE_FILE appears, then raises."""

    name = "dying"

    def __init__(self, monitor: ProgressMonitor, die_file: Path) -> None:
        self._pulse = monitor.register(self.name)
        self._die_file = die_file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._loop), daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            if self._die_file.exists():
                raise ZeroDivisionError("a bug in the part")
            self._pulse.beat()

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float) -> None:
        self._stop.set()
        self._thread.join()

    def apply(self, settings: Settings) -> None:
        pass

    def describe(self) -> str:
        return "alive"


def main() -> int:
    config, die_file = Path(sys.argv[1]), Path(sys.argv[2])
    return serve(config, parts_factory=lambda settings, monitor, model: [DyingPart(monitor, die_file)])


if __name__ == "__main__":
    sys.exit(main())
