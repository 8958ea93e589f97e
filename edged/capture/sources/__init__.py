"""Camera sources, chosen by the camera's ``source`` string (grammar.py), each kind of source
a module of its own.

A source opens a device, stream or file and yields RGB frames; it raises ``SourceError``
when the device fails (the capture thread reconnects) and ``SourceEnded`` when a file ends.
"""

from __future__ import annotations

from edged.capture.sources.base import FrameSource, Pacer, SourceEnded, SourceError, redact
from edged.capture.sources.grammar import SOURCE_FORMS, parse_source

__all__ = ["SOURCE_FORMS", "FrameSource", "Pacer", "SourceEnded", "SourceError", "open_source", "parse_source", "redact"]


def open_source(source: str, width: int | None = None, height: int | None = None, realtime: bool = True,
                loop: bool = True, fps: float = 10.0) -> FrameSource:
    """The source a camera's ``source`` string names (not yet opened)."""
    kind, argument = parse_source(source)
    if kind == "synthetic":
        from edged.capture.sources.synthetic import SyntheticSource

        return SyntheticSource(width or 640, height or 480, fps=fps, realtime=realtime)
    if kind == "picamera2":
        from edged.capture.sources.picamera import Picamera2Source

        return Picamera2Source(width or 1280, height or 720)
    if kind == "file":
        from edged.capture.sources.file import FileSource

        return FileSource(argument, realtime=realtime, loop=loop)
    from edged.capture.sources.gstreamer import GStreamerSource, pipeline_for

    return GStreamerSource(pipeline_for(source, width, height), redact(source), live=kind != "gst")
