"""Camera sources, chosen by the camera's ``source`` string (one module per kind).

A source opens a device, stream or file and yields RGB frames; it raises ``SourceError``
when the device fails (the capture thread reconnects) and ``SourceEnded`` when a file ends.
"""

from __future__ import annotations

import re
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

    return GStreamerSource(pipeline_for(source, width, height), redact(source))
