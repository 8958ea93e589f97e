"""A deterministic test camera: a moving pattern, a visible frame counter, and an object
(a red square) that appears and disappears on a schedule, so rules have something to find."""

from __future__ import annotations

import numpy as np

from edged.capture.sources.base import Pacer, SourceError

# The object is in view for frames 30-69 of every 100.
OBJECT_PERIOD, OBJECT_FROM, OBJECT_UNTIL = 100, 30, 70

_DIGITS = {  # 3 x 5 pixel digits, drawn scaled up
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111",
}


def object_visible(index: int) -> bool:
    return OBJECT_FROM <= index % OBJECT_PERIOD < OBJECT_UNTIL


def synthetic_frame(index: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Frame ``index`` of the pattern: the same index always gives the same pixels."""
    x = np.arange(width, dtype=np.uint16)
    y = np.arange(height, dtype=np.uint16)[:, None]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (x // 4 + index) % 256
    frame[..., 1] = (y // 4) % 256
    frame[..., 2] = 96
    bar = (index * 8) % width
    frame[:, bar:bar + 16] = 255
    if object_visible(index):
        side = max(8, min(width, height) // 5)
        top, left = height // 2 - side // 2, width // 3
        frame[top:top + side, left:left + side] = (220, 20, 20)
    _draw_number(frame, index, scale=max(2, height // 120))
    return frame


def _draw_number(frame: np.ndarray, number: int, scale: int) -> None:
    left = 4
    for digit in str(number):
        pattern = np.array([int(bit) for bit in _DIGITS[digit]], dtype=bool).reshape(5, 3)
        block = np.kron(pattern, np.ones((scale, scale), dtype=bool))
        region = frame[4:4 + block.shape[0], left:left + block.shape[1]]
        region[block[: region.shape[0], : region.shape[1]]] = 255
        left += 4 * scale


class SyntheticSource:
    def __init__(self, width: int, height: int, fps: float = 10.0, realtime: bool = True) -> None:
        self.width, self.height, self.fps, self.realtime = width, height, fps, realtime
        self._index = 0
        self._pacer: Pacer | None = None
        self.fail_at: int | None = None  # tests: raise at this frame index once

    def open(self) -> None:
        self._pacer = Pacer(1 / self.fps) if self.realtime else None

    def read(self, timeout: float) -> np.ndarray | None:
        if self.fail_at is not None and self._index == self.fail_at:
            self.fail_at = None
            raise SourceError("synthetic fault")
        if self._pacer is not None and not self._pacer.wait(timeout):
            return None
        frame = synthetic_frame(self._index, self.width, self.height)
        self._index += 1
        return frame

    def close(self) -> None:
        pass
