"""The ``[cameras.<name>]`` tables: one per camera."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_SOURCE_FORMS = (
    "picamera2",
    "synthetic",
    "csi:N",
    "v4l2:/dev/videoN",
    "gst:<pipeline>",
    "rtsp://...",
    "file:<path>",
)


def _check_camera_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            "camera names are 1 to 32 lower-case letters, digits, '-' or '_' "
            "(they appear in bus topics)"
        )
    return name


CameraName = Annotated[str, AfterValidator(_check_camera_name)]


def _is_known_source(source: str) -> bool:
    if source in ("picamera2", "synthetic"):
        return True
    if source.startswith(("rtsp://", "rtsps://")):
        return len(source.split("://", 1)[1]) > 0
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        return False
    if kind == "csi":
        return rest.isdigit()
    if kind == "v4l2":
        return rest.startswith("/dev/")
    return kind in ("gst", "file")


class CameraConfig(BaseModel):
    """One ``[cameras.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="where frames come from: " + ", ".join(_SOURCE_FORMS))
    enabled: bool = Field(True, description="false keeps the table but opens no camera")
    fps: float = Field(1.0, gt=0, description="most frames per second sent on to the model")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not _is_known_source(value):
            raise ValueError("must be one of " + ", ".join(_SOURCE_FORMS))
        return value
