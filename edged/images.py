"""Frames as picture files, through OpenCV: PNG from an RGB array."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encode_png(rgb: np.ndarray) -> bytes:
    """An H x W x 3 uint8 RGB array as PNG bytes (lossless)."""
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode the frame as PNG")
    return encoded.tobytes()


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.write_bytes(encode_png(rgb))
    return path
