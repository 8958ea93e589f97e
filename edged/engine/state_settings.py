"""The ``[state]`` table: where states live and how much memory live sessions may hold."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from edged.config import RestartField


class StateConfig(BaseModel):
    """The ``[state]`` table."""

    model_config = ConfigDict(extra="forbid")

    dir: Path = RestartField(
        Path("/var/lib/edged"),
        description="where prefix and session states are saved across restarts"
    )
    budget_mb: int = RestartField(256, gt=0, description="memory for live session states, in MiB")
