"""The ``[model]`` and ``[state]`` tables: which model runs, and where its states live."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """The ``[model]`` table."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        "bundled",
        min_length=1,
        description="a model package directory; 'auto' (the largest installed package that "
        "fits in memory) or 'bundled' (the tiny model shipped with edged, for trying it out)",
    )
    threads: int = Field(0, ge=0, description="inference threads; 0 means one per CPU core")
    max_length: int = Field(
        2048, gt=0, description="most tokens one state may hold (prompt, image and answer)"
    )
    models_dir: Path = Field(
        Path("/var/lib/edged/models"),
        description="where `edged models pull` installs packages and 'auto' looks for them",
    )
    headroom_mb: int = Field(
        512, ge=0, description="memory 'auto' leaves free for the system and other services, in MiB"
    )


class StateConfig(BaseModel):
    """The ``[state]`` table."""

    model_config = ConfigDict(extra="forbid")

    dir: Path = Field(
        Path("/var/lib/edged"),
        description="where prefix and session states are saved across restarts",
    )
    budget_mb: int = Field(256, gt=0, description="memory for live session states, in MiB")
