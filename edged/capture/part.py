"""Capture as a part of the daemon: one capture thread per enabled camera."""

from __future__ import annotations

import structlog

from edged.bus.schema import CameraStatus
from edged.capture.camera import CameraCapture
from edged.config import Settings
from edged.parts import ProgressMonitor

log = structlog.get_logger()


class CapturePart:
    name = "capture"

    def __init__(self, settings: Settings, monitor: ProgressMonitor) -> None:
        self._settings = settings
        self.cameras: dict[str, CameraCapture] = {}
        for name, config in settings.cameras.items():
            if config.enabled:
                pulse = monitor.register(f"camera {name}")
                self.cameras[name] = CameraCapture(name, config, beat=pulse.beat, beat_every=monitor.beat_every,
                                                   retire=pulse.retire)

    def start(self) -> None:
        for camera in self.cameras.values():
            camera.start()

    def stop(self) -> None:
        for camera in self.cameras.values():
            camera.stop()

    def apply(self, settings: Settings) -> None:
        if settings.cameras != self._settings.cameras:
            log.warning("camera settings take effect at the next restart")

    def describe(self) -> str:
        if not self.cameras:
            return "no cameras"
        states = ", ".join(f"{name} {camera.state}" for name, camera in self.cameras.items())
        return f"{len(self.cameras)} camera{'s' if len(self.cameras) > 1 else ''}: {states}"

    def statuses(self) -> dict[str, CameraStatus]:
        return {name: camera.status() for name, camera in self.cameras.items()}
