"""The ``[cameras.<name>]`` tables: one per camera."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from edged.agent.config import RuleConfig

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
    width: int | None = Field(None, gt=0, description="capture width to ask a live camera for")
    height: int | None = Field(None, gt=0, description="capture height to ask a live camera for")
    gate_threshold: float = Field(
        0.02, ge=0, le=1, description="how much a frame must change (0-1) to go to the model; 0 sends all"
    )
    masks: list[list[tuple[float, float]]] = Field(
        default_factory=list, description="privacy polygons, vertices as 0-1 fractions of width and height"
    )
    max_pixels: int = Field(200704, gt=0, description="frames are scaled down to at most this many pixels")
    loop: bool = Field(True, description="file sources: start again at the end")
    realtime: bool = Field(True, description="file and synthetic sources: at their own rate, not as fast as read")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest wait between reconnection attempts")
    stall_s: float = Field(10.0, gt=0, description="a source that gives no frame for this long is closed and reopened")
    rules: list[RuleConfig] = Field(default_factory=list, description="yes/no conditions watched on new frames")
    describe_every_s: float = Field(0.0, ge=0, description="a description at most this often, when the scene changed; 0: never")
    detect_every_s: float = Field(0.0, ge=0, description="an object detection at most this often, when the scene changed; 0: never")

    @field_validator("masks")
    @classmethod
    def _polygons(cls, masks: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        for polygon in masks:
            if len(polygon) < 3:
                raise ValueError("each mask is a polygon of at least 3 [x, y] points")
            if not all(0 <= v <= 1 for point in polygon for v in point):
                raise ValueError("mask points are fractions of the frame: 0 to 1")
        return masks

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not _is_known_source(value):
            raise ValueError("must be one of " + ", ".join(_SOURCE_FORMS))
        return value
