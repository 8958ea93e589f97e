"""The catalog of known model packages (catalog.toml beside this file)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from edged.models.manifest import Precision, Target

CATALOG_PATH = Path(__file__).with_name("catalog.toml")


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: str
    precision: Precision
    target: Target
    size_mb: int
    min_ram_mb: int
    url: str | None = None
    measured: str | None = None


@cache
def catalog() -> tuple[CatalogEntry, ...]:
    data = tomllib.loads(CATALOG_PATH.read_text())
    return tuple(CatalogEntry.model_validate(entry) for entry in data["package"])


def find(name: str) -> CatalogEntry | None:
    return next((entry for entry in catalog() if entry.name == name), None)
