"""systemd's notify and watchdog protocol (sd_notify), spoken through systemd-python.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same in a
terminal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping


class SystemdNotifier:
    """Sends state changes to the service manager named by ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._notify = None
        if environ.get("NOTIFY_SOCKET"):
            from systemd import daemon

            self._notify = daemon.notify

    @property
    def enabled(self) -> bool:
        return self._notify is not None

    def send(self, *assignments: str) -> None:
        if self._notify is not None:
            self._notify("\n".join(assignments))

    def ready(self, status: str) -> None:
        self.send("READY=1", _status(status))

    def status(self, status: str) -> None:
        self.send(_status(status))

    def reloading(self) -> None:
        # systemd >= 253 wants the time the reload began, on CLOCK_MONOTONIC.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would end the assignment


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds systemd waits for WATCHDOG=1 before it restarts us; None when it is off."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were exec'd by a wrapper)
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds if seconds > 0 else None
