"""What a camera reports of itself; the bus carries it in status replies and events as it is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CameraStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["online", "reconnecting", "offline", "ended"] = Field(
        description="online once a frame has arrived since the source was (re)opened")
    last_error: str | None = None
    fps: float = 0.0
    frames: int = Field(0, description="frames sent on to the model since start")
    drops: int = Field(0, description="of those, frames replaced by a newer one before the model took them "
                                      "(counted from the model's first frame, not while it loads)")
    last_frame_age_s: float | None = Field(None, description="seconds since the source's last frame; null before the first")
