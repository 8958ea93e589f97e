"""Capture as a part of the daemon: one capture thread per enabled camera."""

from __future__ import annotations

import time

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
                self.cameras[name] = CameraCapture(name, config, pulse, beat_every=monitor.beat_every)

    def start(self) -> None:
        for camera in self.cameras.values():
            camera.start()

    def stop(self, deadline: float) -> None:
        for camera in self.cameras.values():
            camera.signal_stop()
        for camera in self.cameras.values():
            camera.stop(max(0.0, deadline - time.monotonic()))

    def apply(self, settings: Settings) -> None:
        """Rules and periods are the agent's to apply; the cameras themselves stay as started."""
        if _capture_settings(settings) != _capture_settings(self._settings):
            log.warning("camera sources, rates and masks take effect at the next restart")
        self._settings = settings

    def describe(self) -> str:
        if not self.cameras:
            return "no cameras"
        states = ", ".join(f"{name} {camera.state}" for name, camera in self.cameras.items())
        return f"{len(self.cameras)} camera{'s' if len(self.cameras) > 1 else ''}: {states}"

    def statuses(self) -> dict[str, CameraStatus]:
        return {name: camera.status() for name, camera in self.cameras.items()}


AGENT_FIELDS = {"rules", "describe_every_s", "detect_every_s"}


def _capture_settings(settings: Settings) -> dict[str, dict]:
    return {name: camera.model_dump(exclude=AGENT_FIELDS) for name, camera in settings.cameras.items()}
