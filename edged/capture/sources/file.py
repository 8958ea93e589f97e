"""Recorded video: a video file (decoded by OpenCV's FFmpeg) or a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edged.capture.sources.base import Pacer, SourceEnded, SourceError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class FileSource:
    """At the file's own rate (``realtime``) or as fast as frames are taken; looping or not."""

    def __init__(self, path: str, realtime: bool = True, loop: bool = True, folder_fps: float = 5.0) -> None:
        self.path = Path(path)
        self.realtime, self.loop, self._folder_fps = realtime, loop, folder_fps
        self._capture = None
        self._images: list[Path] = []
        self._position = 0
        self.interval = 0.0
        """Seconds between frames in the recording (a folder of images: 1 / folder_fps)."""
        self._pacer: Pacer | None = None

    def open(self) -> None:
        import cv2

        if self.path.is_dir():
            self._images = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise SourceError(f"{self.path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            self.interval = 1 / self._folder_fps
        elif self.path.is_file():
            self._capture = cv2.VideoCapture(str(self.path))
            if not self._capture.isOpened():
                raise SourceError(f"{self.path}: not a video OpenCV can decode")
            fps = self._capture.get(cv2.CAP_PROP_FPS) or 25.0
            self.interval = 1 / fps
        else:
            raise SourceError(f"{self.path}: no such file or folder")
        self._position = 0
        self._pacer = Pacer(self.interval) if self.realtime else None

    def read(self, timeout: float) -> np.ndarray | None:
        import cv2

        if self._pacer is not None and not self._pacer.wait(timeout):
            return None
        if self._images:
            if self._position >= len(self._images):
                if not self.loop:
                    raise SourceEnded(str(self.path))
                self._position = 0
            image = cv2.imread(str(self._images[self._position]), cv2.IMREAD_COLOR)
            self._position += 1
            if image is None:
                raise SourceError(f"{self._images[self._position - 1]}: unreadable image")
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        ok, image = self._capture.read()  # type: ignore[union-attr]
        if not ok:
            if not self.loop:
                raise SourceEnded(str(self.path))
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # type: ignore[union-attr]
            ok, image = self._capture.read()  # type: ignore[union-attr]
            if not ok:
                raise SourceError(f"{self.path}: cannot read a frame")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
