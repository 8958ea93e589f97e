"""The capture half of a ``[cameras.<name>]`` table: where frames come from and which go on.
The agent's half (rules and tasks) is edged.agent.agent_settings'; edged.settings joins them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from edged.capture.sources.base import SourceError
from edged.capture.sources.grammar import SOURCE_FORMS, parse_source
from edged.config import RestartField

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _check_camera_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            "camera names are 1 to 32 lower-case letters, digits, '-' or '_' "
            "(they appear in bus topics)"
        )
    return name


CameraName = Annotated[str, AfterValidator(_check_camera_name)]


class CaptureConfig(BaseModel):
    """What capture reads of a ``[cameras.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    source: str = RestartField(description="where frames come from: " + ", ".join(SOURCE_FORMS))
    enabled: bool = RestartField(True, description="false keeps the table but opens no camera")
    fps: float = RestartField(1.0, gt=0, description="most frames per second sent on to the model")
    width: int | None = RestartField(None, gt=0, description="capture width to ask a live camera for")
    height: int | None = RestartField(None, gt=0, description="capture height to ask a live camera for")
    gate_threshold: float = RestartField(
        0.02, ge=0, le=1, description="how much a frame must change (0-1) to go to the model; 0 sends all",
    )
    masks: list[list[tuple[float, float]]] = RestartField(
        default_factory=list, description="privacy polygons, vertices as 0-1 fractions of width and height",
    )
    max_pixels: int = RestartField(200704, gt=0, description="frames are scaled down to at most this many pixels")
    loop: bool = RestartField(True, description="file sources: start again at the end")
    realtime: bool = RestartField(True, description="file and synthetic sources: at their own rate, not as fast as read")
    reconnect_max_s: float = RestartField(30.0, gt=0, description="longest wait between reconnection attempts")
    stall_s: float = RestartField(10.0, gt=0, description="a source that gives no frame for this long is closed and reopened")

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
        try:
            parse_source(value)
        except SourceError:
            raise ValueError("must be one of " + ", ".join(SOURCE_FORMS)) from None
        return value
