"""Raspberry Pi cameras through picamera2 (imported only when a camera uses it).

A low-resolution stream for change gating, and a main stream at the requested size for the
model, RGB whatever the sensor delivers:
picamera2's "RGB888" is B, G, R in memory, "XRGB8888" has a fourth byte, and YUV formats
(NV12, YUV420) are converted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edged.capture.sources.base import SourceError

LORES_SIZE = (320, 240)
INSTALL_HINT = (
    "picamera2 is not installed: on Raspberry Pi OS, apt install python3-picamera2 (it brings "
    "libcamera), and run edged from a venv made with --system-site-packages"
)


def _abi_hint(error: Exception) -> str:
    """What to do when Debian's picamera2 stack, built against Debian's numpy, meets another."""
    text = str(error)
    if "NumPy" not in text and "numpy" not in text and "dtype size changed" not in text:
        return ""
    import numpy

    return (f" (Raspberry Pi OS builds picamera2's C extensions against its own numpy; this "
            f"environment runs numpy {numpy.__version__} from {Path(numpy.__file__).parent}: install edged "
            f"with deploy/install.sh, whose venv keeps Debian's numpy; docs/deploy.md, Raspberry Pi)")


def to_rgb(array: np.ndarray, pixel_format: str, size: tuple[int, int]) -> np.ndarray:
    """An RGB H x W x 3 array from what capture_array returned in ``pixel_format``."""
    import cv2

    width, height = size
    if pixel_format in ("RGB888", "XRGB8888"):
        return np.ascontiguousarray(array[:, :, 2::-1][:, :width])
    if pixel_format in ("BGR888", "XBGR8888"):
        return np.ascontiguousarray(array[:, :width, :3])
    if pixel_format == "NV12":
        return cv2.cvtColor(array[: height * 3 // 2, :width], cv2.COLOR_YUV2RGB_NV12)
    if pixel_format in ("YUV420", "I420"):
        return cv2.cvtColor(array[: height * 3 // 2, :width], cv2.COLOR_YUV2RGB_I420)
    raise SourceError(f"picamera2 format {pixel_format!r} is not supported")


class Picamera2Source:
    def __init__(self, width: int, height: int, pixel_format: str = "RGB888", camera: int = 0) -> None:
        self.size = (width, height)
        self.pixel_format, self.camera = pixel_format, camera
        self._picam = None
        self.gate_luma: np.ndarray | None = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ModuleNotFoundError:
            raise SourceError(INSTALL_HINT) from None
        except Exception as error:  # noqa: BLE001 - whatever the camera stack raises at import, the camera reports it
            raise SourceError(f"picamera2 cannot be imported: {type(error).__name__}: {error}{_abi_hint(error)}") from None
        try:
            self._picam = Picamera2(self.camera)
            config = self._picam.create_video_configuration(
                main={"size": self.size, "format": self.pixel_format},
                lores={"size": LORES_SIZE, "format": "YUV420"},
            )
            self._picam.configure(config)
            self._picam.start()
        except Exception as error:  # libcamera raises RuntimeError, IndexError, ...
            self.close()
            raise SourceError(f"picamera2: {error}") from None

    def read(self, timeout: float) -> np.ndarray | None:
        try:
            (main, lores), _metadata = self._picam.capture_arrays(["main", "lores"])  # type: ignore[union-attr]
        except Exception as error:
            raise SourceError(f"picamera2: {error}") from None
        # The low-resolution stream's Y plane is a ready-made grey image for change gating:
        # the ISP has already scaled it, so the Pi's CPU does not have to.
        self.gate_luma = lores[: LORES_SIZE[1], : LORES_SIZE[0]]
        return to_rgb(main, self.pixel_format, self.size)

    def close(self) -> None:
        if self._picam is not None:
            try:
                self._picam.stop()
                self._picam.close()
            except Exception:
                pass
            self._picam = None
