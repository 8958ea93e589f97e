"""What every camera source is and raises, and what they share."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


class SourceError(Exception):
    """The source failed; a live one is reopened with backoff."""


class SourceEnded(Exception):
    """A file source reached its end (and does not loop)."""


class FrameSource(Protocol):
    def open(self) -> None: ...

    def read(self, timeout: float) -> np.ndarray | None:
        """The next RGB frame, or None when none came within ``timeout`` seconds."""

    def close(self) -> None: ...


class Pacer:
    """Releases one frame per ``interval`` seconds, for sources that would otherwise deliver
    as fast as they are read (files, the synthetic camera). A reader that falls behind
    catches up by at most one frame, rather than in a burst."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = time.monotonic()

    def wait(self, timeout: float) -> bool:
        """Sleep until the next frame is due; False if that is more than ``timeout`` away."""
        delay = self._next - time.monotonic()
        if delay > timeout:
            time.sleep(timeout)
            return False
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self.interval, time.monotonic() - self.interval)
        return True


def redact(source: str) -> str:
    """The source as logs and status may show it: no credentials."""
    return re.sub(r"(rtsps?://)[^/@\s]+@", r"\1***@", source)
