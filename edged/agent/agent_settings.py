"""The ``[agent]`` table, and the agent's half of each ``[cameras.<name>]`` table: its rules
and tasks (edged.settings joins it with capture's half). A rule itself is defined by the bus
contract (edged.bus.schema.RuleConfig), since clients set and read rules over the bus too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from edged.bus.bus_settings import BusConfig
from edged.bus.schema import RuleConfig
from edged.engine.state_settings import StateConfig
from edged.models.model_settings import ModelConfig


class CameraTasksConfig(BaseModel):
    """What the agent reads of a ``[cameras.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RuleConfig] = Field(default_factory=list, description="yes/no conditions watched on new frames")
    describe_every_s: float = Field(0.0, ge=0, description="a description at most this often, when the scene changed; 0: never")
    detect_every_s: float = Field(0.0, ge=0, description="an object detection at most this often, when the scene changed; 0: never")


class AgentConfig(BaseModel):
    """The ``[agent]`` table."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = Field(
        "You watch a camera. Answer briefly and only about what the picture shows.",
        min_length=1, description="what the model is told before every frame",
    )
    answer_max_tokens: int = Field(256, gt=0, description="longest answer to an ask")
    frames_kept: int = Field(
        8, ge=1, le=256, description="recent frames per camera an ask may name by frame_seq (kept as pixels, read again when asked)"
    )
    reuse_read_within_s: float = Field(
        10.0, ge=0, description="a question about a camera's newest frame is answered from the newest frame "
        "already read when it was captured at most this long before the newest one, instead of waiting for a "
        "new read (seconds at 0.8B on a small board); 0: always read the newest frame first")
    stale_after_s: float = Field(
        10.0, gt=0, description="rule, detect and describe work on a frame older than this is dropped (and counted)"
    )


class AgentSettings(Protocol):
    """What the agent reads of the daemon's settings: the model and where states live, its
    own table, each camera's rules and tasks, and how long the bus waits for an answer."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def state(self) -> StateConfig: ...
    @property
    def agent(self) -> AgentConfig: ...
    @property
    def bus(self) -> BusConfig: ...
    @property
    def cameras(self) -> Mapping[str, CameraTasksConfig]: ...
