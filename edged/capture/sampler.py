"""What happens to a frame between the camera and the model: masks first, then an FPS cap,
change gating, a resize to the model's image budget, and a one-slot mailbox."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

from edged.capture.frame import Frame


class FrameMailbox:
    """Holds the newest frame only: a new one replaces an unread one, and the drop is counted
    once a consumer takes frames. Before its first take (the daemon's camera runs while the
    model loads) a replaced frame was never going to be read: not a sign that the model
    cannot keep up, which is what the count tells an operator."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ready = threading.Condition()
        self._taken = False
        self.drops = 0
        self.frames = 0
        """Frames put since start: those the sampler sent on to the model."""
        self.on_put: Callable[[], None] = lambda: None
        """Called after each frame is put: how a consumer that waits on more than one mailbox
        (the agent's inference thread) is woken, rather than polling them."""

    def put(self, frame: Frame) -> None:
        with self._ready:
            if self._frame is not None and self._taken:
                self.drops += 1
            self.frames += 1
            self._frame = frame
            self._ready.notify_all()
        self.on_put()

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest unread frame (waiting up to ``timeout``), or None."""
        with self._ready:
            self._taken = True
            if self._frame is None:
                self._ready.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def __len__(self) -> int:
        return 0 if self._frame is None else 1


def polygon_mask(shape: tuple[int, int], polygons: list[list[tuple[float, float]]]) -> np.ndarray:
    """A boolean H x W mask, True inside any polygon (vertices as 0-1 fractions of width, height)."""
    import cv2

    height, width = shape
    mask = np.zeros((height, width), dtype=np.uint8)
    for polygon in polygons:
        points = np.array([[x * width, y * height] for x, y in polygon], dtype=np.int32)
        cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


class ChangeGate:
    """Passes a frame only when it differs enough from the last frame that passed.

    The difference is the mean absolute difference of 32 x 24 grey thumbnails, 0 to 1: cheap
    enough for every frame, blind to sensor noise, and the same whatever the resolution.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._last: np.ndarray | None = None

    @staticmethod
    def thumbnail(grey: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.resize(grey, (32, 24), interpolation=cv2.INTER_AREA).astype(np.float32) / 255

    def passes(self, grey: np.ndarray) -> bool:
        """``grey``: the frame as a grey image, any size (a camera's low-resolution stream will do)."""
        thumbnail = self.thumbnail(grey)
        if self._last is not None and self.threshold > 0:
            if float(np.abs(thumbnail - self._last).mean()) < self.threshold:
                return False
        self._last = thumbnail
        return True


def fit_to_budget(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """Scale down (never up) so width x height <= ``max_pixels``, keeping the aspect ratio."""
    import cv2

    height, width = rgb.shape[:2]
    if width * height <= max_pixels:
        return rgb
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class FramePipeline:
    """FPS cap, masks, change gate and resize, in that order, for one camera's frames."""

    def __init__(self, config) -> None:  # a CameraConfig
        self.config = config
        self.gate = ChangeGate(config.gate_threshold)
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._last_passed: float | None = None
        self.skipped_fps = 0
        self.skipped_gate = 0
        self.passed = 0

    def masked(self, image: np.ndarray) -> np.ndarray:
        """The image (RGB or grey, any size) with every privacy polygon blacked out."""
        if not self.config.masks:
            return image
        shape = image.shape[:2]
        mask = self._masks.get(shape)
        if mask is None:
            mask = self._masks[shape] = polygon_mask(shape, self.config.masks)
        image = image.copy()
        image[mask] = 0
        return image

    def process(self, rgb: np.ndarray, now: float, grey: np.ndarray | None = None) -> np.ndarray | None:
        """The frame to send on to the model, or None when the cap or the gate holds it back.
        ``grey``: the camera's own low-resolution grey image of the frame, when it has one."""
        import cv2

        if self._last_passed is not None and now - self._last_passed < 1 / self.config.fps:
            self.skipped_fps += 1
            return None  # dropped before any copy: the cap looks at no pixel
        rgb = self.masked(rgb)  # before anything that looks at pixels, the gate included
        grey = self.masked(grey) if grey is not None else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if not self.gate.passes(grey):
            self.skipped_gate += 1
            return None
        self._last_passed = now
        self.passed += 1
        return fit_to_budget(rgb, self.config.max_pixels)
