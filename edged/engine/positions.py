"""Rotary position ids for Qwen3.5's multimodal RoPE: three rows (time, height, width).

Text tokens get the same running position on all three rows. An image of grid (T, H, W)
patches becomes T x H/m x W/m tokens after the spatial merge m; its tokens get row t =
start + frame, row h = start + token row, row w = start + token column, in row-major order,
and the running position then advances by the image's largest extent, max(T, H/m, W/m),
not by its number of tokens (as transformers' get_rope_index computes them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def text_positions(start: int, count: int) -> np.ndarray:
    """[3, 1, count] positions for ``count`` text tokens from ``start``."""
    row = np.arange(start, start + count, dtype=np.int64)
    return np.broadcast_to(row, (3, 1, count)).copy()


def prompt_positions(
    input_ids: Sequence[int], image_token_id: int, grids: np.ndarray | None, start: int, merge: int
) -> tuple[np.ndarray, int]:
    """Positions [3, 1, len] for a prompt whose image tokens follow ``grids`` in order,
    and the position of the token after it."""
    ids = np.asarray(input_ids, dtype=np.int64)
    positions = np.empty((3, ids.size), dtype=np.int64)
    position, index, image = start, 0, 0
    while index < ids.size:
        if ids[index] != image_token_id:
            positions[:, index] = position
            position += 1
            index += 1
            continue
        if grids is None or image >= len(grids):
            raise ValueError("the prompt has more image tokens than images")
        frames, rows, columns = int(grids[image][0]), int(grids[image][1]) // merge, int(grids[image][2]) // merge
        count = frames * rows * columns
        if index + count > ids.size or not (ids[index:index + count] == image_token_id).all():
            raise ValueError(f"image {image} needs {count} image tokens in the prompt")
        t, h, w = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(columns), indexing="ij")
        positions[0, index:index + count] = position + t.ravel()
        positions[1, index:index + count] = position + h.ravel()
        positions[2, index:index + count] = position + w.ravel()
        position += max(frames, rows, columns)
        index += count
        image += 1
    if grids is not None and image != len(grids):
        raise ValueError(f"{len(grids)} images but image tokens for {image}")
    return positions[:, None, :], position
