"""The bus as a part of the daemon: started and stopped by the lifecycle, status for real."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog

from edged.bus.bus_settings import BusConfig
from edged.bus.local import LocalBus
from edged.bus.schema import CameraStatus, DoorState, InferenceFigures, Status
from edged.bus.server import BusServer, RequestHandler, Unavailable
from edged.parts import ProgressMonitor

log = structlog.get_logger()


class BusSettings(Protocol):
    """What the bus reads of the daemon's settings."""

    @property
    def bus(self) -> BusConfig: ...


class BusPart:
    name = "bus"

    def __init__(self, settings: BusSettings, monitor: ProgressMonitor, handler: RequestHandler | None = None,
                 cameras: Callable[[], dict[str, CameraStatus]] = dict,
                 figures: Callable[[], InferenceFigures] = InferenceFigures) -> None:
        self._settings = settings
        self._cameras = cameras
        self._figures = figures
        self._started = time.monotonic()
        self._monitor = monitor
        pulse = monitor.register(self.name)
        self.server = BusServer(settings.bus, handler or Unavailable(), self.status, pulse=pulse,
                                beat_every=monitor.beat_every)
        self.doors: dict[str, Callable[[], DoorState]] = {}
        """Each door's state, for status (the doors add themselves)."""
        self.local = LocalBus(self.server, handler or Unavailable(), self.status)
        """The bus for the doors inside the daemon (MQTT, HTTP): the same events and operations."""

    def start(self) -> None:
        self.server.start()
        log.info("bus ready", events=self.server.events_endpoint, control=self.server.control_endpoint)

    def stop(self, deadline: float) -> None:
        self.server.stop(max(0.0, deadline - time.monotonic()))

    def apply(self, settings: BusSettings) -> None:
        """The CURVE allow-list folder is read again; the bus settings need a restart."""
        if self._settings.bus.curve_allow is not None:
            self.server.reload_allow_list()

    def describe(self) -> str:
        return f"bus: {self.server.in_progress} requests in progress"

    def status(self) -> Status:
        """Each part's own figures, as its last snapshot has them (this runs on the bus thread)."""
        return Status(
            uptime_s=round(time.monotonic() - self._started, 1), cameras=self._cameras(),
            requests_busy=self.server.busy_refusals, detail=self._monitor.detail,
            doors={name: state() for name, state in self.doors.items()}, **dict(self._figures()),
        )
