"""The ``[model]`` table: which package runs, and how."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edged.config import RestartField


class ModelConfig(BaseModel):
    """The ``[model]`` table."""

    model_config = ConfigDict(extra="forbid")

    path: str = RestartField(
        "bundled",
        min_length=1,
        description="a model package directory; 'auto' (the largest installed package that "
        "fits in memory) or 'bundled' (the tiny model shipped with edged, for trying it out)"
    )
    threads: int = RestartField(0, ge=0, description="inference threads; 0 means one per CPU core")
    spin: Literal["auto", "on", "off"] = RestartField(
        "auto", description="whether inference threads spin or sleep while they wait for work: spinning is "
        "faster on cores edged has to itself and much slower on cores another process keeps busy; 'auto' "
        "measures at start and spins only when every core is free",
    )
    max_length: int = RestartField(
        2048, gt=0, description="most tokens one state may hold (prompt, image and answer)",
    )
    rules_per_batch: int = RestartField(
        1, ge=1, le=64, description="how many of a frame's rules go through the decoder in one call, as the rows "
        "of a batch. 1 runs them one after another, which is faster on every CPU measured (2 to 8 rules at 0.8B: "
        "a batch took 1.1 to 1.2 times as long) and holds no more than one rule's activations; on a GPU, where "
        "each call costs its launches, check `edged bench engine`'s rules_batched_ratio and set it to your rule "
        "count when that is below 1",
    )
    models_dir: Path = RestartField(
        Path("/var/lib/edged/models"),
        description="where `edged models pull` installs packages and 'auto' looks for them"
    )
    headroom_mb: int = RestartField(
        512, ge=0, description="memory 'auto' leaves free for the system and other services, in MiB",
    )

    @property
    def spin_choice(self) -> bool | None:
        """``spin`` as the engine takes it: None to measure."""
        return {"auto": None, "on": True, "off": False}[self.spin]
