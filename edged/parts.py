"""What the lifecycle runs: parts that start, stop, take new settings and show progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger()


EX_DATAERR = 65
"""sysexits.h: the input data is bad (a damaged model package); restarting cannot fix it."""


class StartRefused(Exception):
    """A part cannot start, for a reason a restart would not change; the daemon exits with
    ``exit_status`` (one the unit's RestartPreventExitStatus= lists) and the message alone."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Part(Protocol):
    """One subsystem of the daemon (capture, engine, bus, agent), owning its threads."""

    name: str

    def start(self) -> None:
        """Acquire resources and start threads; raise to abort the daemon's start."""

    def stop(self, deadline: float) -> None:
        """Finish the current step and release resources by ``deadline`` (time.monotonic())."""

    def apply(self, settings: Any) -> None:
        """Take new settings on reload: the daemon's whole settings (edged.settings.Settings),
        of which a part reads only its own tables (each part module names them in a Protocol).
        Settings marked RestartField are the lifecycle's to report, not the part's to apply."""

    def describe(self) -> str:
        """A few words for systemd's STATUS= line, e.g. '2 cameras online'."""


class Pulse:
    """A worker thread's handle for saying it made progress (cheap enough for a hot loop),
    and for reporting that it died."""

    __slots__ = ("name", "last", "active", "death")

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = time.monotonic()
        self.active = True
        self.death: str | None = None
        """Why the worker's thread ended with an exception; None while it lives."""

    def beat(self) -> None:
        self.last = time.monotonic()

    def retire(self) -> None:
        """This worker has finished for good (a file that ended): stop watching it."""
        self.active = False

    def guard(self, target: Callable[[], None]) -> Callable[[], None]:
        """``target`` as a thread's body whose death is logged and recorded for the
        lifecycle, instead of ending silently while the process lives on."""

        def run() -> None:
            try:
                target()
            except BaseException as error:  # noqa: BLE001 - reported, and the daemon stops on it
                log.exception("thread died", part=self.name)
                self.death = f"{type(error).__name__}: {error}"

        return run


class ProgressMonitor:
    """Knows when each part last made progress, so the watchdog pings only while all do.

    A part beats whenever it makes progress, and at least every ``beat_every`` seconds while
    it waits for work, so an idle part is not taken for a stuck one.
    """

    def __init__(self, beat_every: float = 1.0) -> None:
        self._pulses: list[Pulse] = []
        self.beat_every = beat_every
        self.detail = ""
        """The daemon's status line as the lifecycle last sent it to systemd (status shows it)."""

    def register(self, name: str) -> Pulse:
        pulse = Pulse(name)
        self._pulses.append(pulse)
        return pulse

    def stalled(self, longer_than: float) -> list[str]:
        """Parts that have not beaten for more than ``longer_than`` seconds."""
        now = time.monotonic()
        return [p.name for p in self._pulses if p.active and now - p.last > longer_than]

    def deaths(self) -> dict[str, str]:
        """Workers whose thread died, and why."""
        return {p.name: p.death for p in self._pulses if p.death is not None}


PartsFactory = Callable[..., list[Part]]
"""Makes the daemon's parts: ``factory(settings, monitor, model=the chosen model package)``
(edged.service.build_parts)."""
