"""What the lifecycle runs: parts that start, stop, take new settings and show progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from edged.config import Settings


class Part(Protocol):
    """One subsystem of the daemon (capture, engine, bus, agent), owning its threads."""

    name: str

    def start(self) -> None:
        """Acquire resources and start threads; raise to abort the daemon's start."""

    def stop(self) -> None:
        """Finish the current step, release resources; must return within a few seconds."""

    def apply(self, settings: Settings) -> None:
        """Take new settings on reload, keeping what need not restart (the model)."""

    def describe(self) -> str:
        """A few words for systemd's STATUS= line, e.g. '2 cameras online'."""


class Pulse:
    """A part's handle for saying it made progress; cheap enough to call in a hot loop."""

    __slots__ = ("name", "last", "active")

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = time.monotonic()
        self.active = True

    def beat(self) -> None:
        self.last = time.monotonic()

    def retire(self) -> None:
        """This worker has finished for good (a file that ended): stop watching it."""
        self.active = False


class ProgressMonitor:
    """Knows when each part last made progress, so the watchdog pings only while all do.

    A part beats whenever it makes progress, and at least every ``beat_every`` seconds while
    it waits for work, so an idle part is not taken for a stuck one.
    """

    def __init__(self, beat_every: float = 1.0) -> None:
        self._pulses: list[Pulse] = []
        self.beat_every = beat_every

    def register(self, name: str) -> Pulse:
        pulse = Pulse(name)
        self._pulses.append(pulse)
        return pulse

    def stalled(self, longer_than: float) -> list[str]:
        """Parts that have not beaten for more than ``longer_than`` seconds."""
        now = time.monotonic()
        return [p.name for p in self._pulses if p.active and now - p.last > longer_than]


PartsFactory = Callable[[Settings, ProgressMonitor], list[Part]]
