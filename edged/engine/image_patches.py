"""A frame to the vision encoder's input directly, without a detour through an image file.

ORT GenAI's image processor takes only encoded pictures (PNG, JPEG: its Images opens files or
bytes), so a camera frame would be encoded to PNG only to be decoded again. For a frame whose
sides are multiples of the processor's grid (16-pixel patches merged 2 x 2: 32 for Qwen3.5)
and whose area lies within its pixel bounds, the processor resizes nothing; what it does then
(rescale, normalize, cut into patches, expand each image pad into one token per merged patch)
is done here, bit for bit the same (tested against it), in a fraction of the time. Any other
picture still goes through ORT GenAI's processor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PatchGrid:
    """The ``qwen3_vl_image_processor`` steps of a package's processor_config.json."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of_package(cls, package: Path) -> PatchGrid | None:
        """The package's grid, or None when its processor is not the one this module mirrors."""
        path = package / "processor_config.json"
        if not path.exists():
            return None
        processor = json.loads(path.read_text()).get("processor", {})
        steps = [step["operation"] for step in processor.get("transforms", [])]
        kinds = [step.get("type") for step in steps]
        if processor.get("name") != "qwen3_vl_image_processor" or kinds != [
                "DecodeImage", "ConvertRGB", "Resize", "Rescale", "Normalize", "PatchImage"]:
            return None
        resize, rescale, normalize, patch = (steps[i].get("attrs", {}) for i in (2, 3, 4, 5))
        if not resize.get("smart_resize"):
            return None
        return cls(
            patch_size=int(patch["patch_size"]), merge_size=int(patch["merge_size"]),
            temporal_patch_size=int(patch["temporal_patch_size"]), min_pixels=int(resize["min_pixels"]),
            max_pixels=int(resize["max_pixels"]), rescale_factor=float(rescale["rescale_factor"]),
            mean=tuple(normalize["mean"]), std=tuple(normalize["std"]),
        )

    @property
    def multiple(self) -> int:
        """What both sides of a picture the processor takes as it is are multiples of."""
        return self.patch_size * self.merge_size

    def takes_as_is(self, rgb: np.ndarray) -> bool:
        """Whether the processor would resize nothing in this H x W x 3 uint8 frame."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            return False
        height, width = rgb.shape[:2]
        return (height % self.multiple == 0 and width % self.multiple == 0
                and self.min_pixels <= height * width <= self.max_pixels)

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The height and width the processor resizes a picture of this size to (its smart
        resize: the nearest multiples of the grid, scaled into its pixel bounds)."""
        factor = self.multiple
        rows, columns = max(factor, math.floor(height / factor + 0.5) * factor), max(factor, math.floor(width / factor + 0.5) * factor)
        if rows * columns > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            rows = max(factor, math.floor(height / beta / factor) * factor)
            columns = max(factor, math.floor(width / beta / factor) * factor)
        elif rows * columns < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            rows, columns = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
        return rows, columns

    def fit(self, rgb: np.ndarray) -> np.ndarray:
        """The frame at the size the processor would resize it to, resized here (OpenCV's
        area resampling, not the processor's own), so that it is read directly."""
        if self.takes_as_is(rgb):
            return rgb
        import cv2

        rows, columns = self.size_for(*rgb.shape[:2])
        shrinking = rows * columns < rgb.shape[0] * rgb.shape[1]
        return cv2.resize(rgb, (columns, rows), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)

    def patches(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``pixel_values`` (one row per patch) and ``image_grid_thw`` for one frame."""
        height, width = rgb.shape[:2]
        # the processor's float32 arithmetic, in its order: rescale, then normalize
        x = rgb.astype(np.float32) * np.float32(self.rescale_factor)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        x = np.broadcast_to(x.transpose(2, 0, 1), (self.temporal_patch_size, 3, height, width))  # a still: repeated in time
        p, m = self.patch_size, self.merge_size
        rows, columns = height // p, width // p
        x = x.reshape(1, self.temporal_patch_size, 3, rows // m, m, p, columns // m, m, p)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # merged 2 x 2 blocks together, row by row
        pixels = np.ascontiguousarray(x.reshape(rows * columns, 3 * self.temporal_patch_size * p * p))
        return pixels, np.array([[1, rows, columns]], dtype=np.int64)

    def expand(self, ids: Sequence[int], image_token_id: int, grids: np.ndarray) -> list[int]:
        """``ids`` with each image pad repeated once per merged patch of its picture."""
        counts = iter(int(t * h * w) // (self.merge_size ** 2) for t, h, w in grids)
        expanded: list[int] = []
        for token in ids:
            expanded += [token] * next(counts) if token == image_token_id else [token]
        return expanded
