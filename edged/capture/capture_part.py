"""Capture as a part of the daemon: one capture thread per enabled camera."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from edged.capture.camera import CameraCapture
from edged.capture.camera_settings import CaptureConfig
from edged.capture.camera_status import CameraStatus
from edged.parts import ProgressMonitor


class CaptureSettings(Protocol):
    """What capture reads of the daemon's settings: each camera's capture half."""

    @property
    def cameras(self) -> Mapping[str, CaptureConfig]: ...


class CapturePart:
    name = "capture"

    def __init__(self, settings: CaptureSettings, monitor: ProgressMonitor) -> None:
        self.cameras: dict[str, CameraCapture] = {}
        for name, config in settings.cameras.items():
            if config.enabled:
                pulse = monitor.register(f"camera {name}")
                self.cameras[name] = CameraCapture(name, config, pulse, beat_every=monitor.beat_every)

    def start(self) -> None:
        for camera in self.cameras.values():
            camera.start()

    def stop(self, deadline: float) -> None:
        for camera in self.cameras.values():
            camera.signal_stop()
        for camera in self.cameras.values():
            camera.stop(max(0.0, deadline - time.monotonic()))

    def apply(self, settings: CaptureSettings) -> None:
        """Nothing: every capture setting needs a restart (RestartField); the cameras stay as
        started."""

    def describe(self) -> str:
        if not self.cameras:
            return "no cameras"
        states = ", ".join(f"{name} {camera.state}" for name, camera in self.cameras.items())
        return f"{len(self.cameras)} camera{'s' if len(self.cameras) > 1 else ''}: {states}"

    def statuses(self) -> dict[str, CameraStatus]:
        return {name: camera.status() for name, camera in self.cameras.items()}

