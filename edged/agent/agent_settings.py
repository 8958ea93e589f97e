"""The ``[agent]`` table, and the agent's half of each ``[cameras.<name>]`` table: its rules
and tasks (edged.settings joins it with capture's half)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edged.bus.schema import Name


class RuleConfig(BaseModel):
    """One ``[[cameras.<name>.rules]]`` entry: a yes/no condition watched on every new frame."""

    model_config = ConfigDict(extra="forbid")

    id: Name
    when: str = Field(min_length=1, max_length=500, description="the condition, in plain words")
    on_threshold: float = Field(0.7, ge=0, le=1, description="P(yes) at or above which it counts as true")
    off_threshold: float = Field(0.3, ge=0, le=1, description="P(yes) at or below which it counts as false")
    consecutive: int = Field(2, ge=1, description="evaluations in a row above on_threshold before 'begin'")
    cooldown_s: float = Field(30.0, ge=0, description="after 'end', seconds before it may begin again")

    @model_validator(mode="after")
    def _thresholds(self) -> RuleConfig:
        if self.off_threshold > self.on_threshold:
            raise ValueError("off_threshold must not be above on_threshold")
        return self

    @property
    def version(self) -> str:
        """Changes whenever the rule's text or thresholds change."""
        import hashlib

        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]


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
    stale_after_s: float = Field(
        10.0, gt=0, description="rule, detect and describe work on a frame older than this is dropped (and counted)"
    )
