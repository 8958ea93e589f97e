"""The ``source`` string of a camera, once: its kinds, how each is written, and what follows
the kind. Settings validate with it, sources open with it, help texts list it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edged.capture.sources.base import SourceError


def _exactly(word: str) -> Callable[[str], str | None]:
    return lambda source: "" if source == word else None


def _after(prefix: str, valid: Callable[[str], bool] = bool) -> Callable[[str], str | None]:
    return lambda source: source[len(prefix):] if source.startswith(prefix) and valid(source[len(prefix):]) else None


def _rtsp(source: str) -> str | None:
    return source if source.startswith(("rtsp://", "rtsps://")) and source.split("://", 1)[1] else None


@dataclass(frozen=True)
class SourceKind:
    name: str
    form: str
    """As a user writes it, for help and errors."""
    argument: Callable[[str], str | None]
    """What follows the kind in a source string of this kind (a device, a URL, a path), or None
    when the string is not one."""


KINDS = (
    SourceKind("picamera2", "picamera2", _exactly("picamera2")),
    SourceKind("synthetic", "synthetic", _exactly("synthetic")),
    SourceKind("csi", "csi:N", _after("csi:", str.isdigit)),
    SourceKind("v4l2", "v4l2:/dev/videoN", _after("v4l2:", lambda device: device.startswith("/dev/"))),
    SourceKind("gst", "gst:<pipeline>", _after("gst:")),
    SourceKind("rtsp", "rtsp://...", _rtsp),
    SourceKind("file", "file:<path>", _after("file:")),
)
SOURCE_FORMS = tuple(kind.form for kind in KINDS)


def parse_source(source: str) -> tuple[str, str]:
    """The kind of source a ``source`` string names, and its argument."""
    for kind in KINDS:
        argument = kind.argument(source)
        if argument is not None:
            return kind.name, argument
    raise SourceError(f"unknown source {source!r}: must be one of " + ", ".join(SOURCE_FORMS))
