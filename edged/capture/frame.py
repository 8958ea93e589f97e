"""A frame: RGB pixels with where and when they were captured."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray
    """H x W x 3 uint8, RGB order."""
    camera: str
    seq: int
    """Counts up per camera from 0, over every frame the source delivered."""
    monotonic: float
    wall: float
    """Capture time, Unix seconds."""

    @property
    def hash(self) -> str:
        return content_hash(self.rgb)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.rgb.shape[1], self.rgb.shape[0]


def content_hash(rgb: np.ndarray) -> str:
    """A cheap content hash of pixels (BLAKE2b, 8 bytes) for provenance and de-duplication."""
    return hashlib.blake2b(rgb.tobytes(), digest_size=8).hexdigest()
