"""Frames as image files, without an imaging library: PNG from an RGB array."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def encode_png(rgb: np.ndarray) -> bytes:
    """An H x W x 3 uint8 RGB array as PNG bytes (lossless; what the image processor decodes)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b"")


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.write_bytes(encode_png(rgb))
    return path
