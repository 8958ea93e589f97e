"""Camera sources, chosen by the camera's ``source`` string (one module per kind).

A source opens a device, stream or file and yields RGB frames; it raises ``SourceError``
when the device fails (the capture thread reconnects) and ``SourceEnded`` when a file ends.
"""

from __future__ import annotations

import re
import time
from typing import Protocol

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


def open_source(source: str, width: int | None = None, height: int | None = None, realtime: bool = True,
                loop: bool = True, fps: float = 10.0) -> FrameSource:
    """The source a camera's ``source`` string names (not yet opened)."""
    if source == "synthetic":
        from edged.capture.sources.synthetic import SyntheticSource

        return SyntheticSource(width or 640, height or 480, fps=fps, realtime=realtime)
    if source == "picamera2":
        from edged.capture.sources.picamera import Picamera2Source

        return Picamera2Source(width or 1280, height or 720)
    if source.startswith("file:"):
        from edged.capture.sources.file import FileSource

        return FileSource(source[len("file:"):], realtime=realtime, loop=loop)
    from edged.capture.sources.gstreamer import GStreamerSource, pipeline_for

    return GStreamerSource(pipeline_for(source, width, height), redact(source), live=not source.startswith("gst:"))
