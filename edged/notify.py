"""systemd's notify and watchdog protocol (sd_notify): datagrams to ``$NOTIFY_SOCKET``.

Spoken over a plain socket rather than through libsystemd, so that a send can never block
the daemon (libsystemd's blocks, holding the GIL, while the manager's queue is full) and a
socket that went away costs a logged warning, not the process. Outside systemd (no
NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger()

SEND_TIMEOUT_S = 0.1
"""How long a send may wait for room in the manager's queue before it is given up."""


class SystemdNotifier:
    """Sends state changes to the service manager named by ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] = os.environ, timeout: float = SEND_TIMEOUT_S) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace, spelled with a leading NUL on the wire.
        self._address = "\0" + address[1:] if address.startswith("@") else address or None
        self._timeout = timeout
        self._socket: socket.socket | None = None
        self._failing: str | None = None
        """The failure last logged, so a gone socket is reported once, not every ping."""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send one message; False (after logging why, once) if the manager did not get it."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.settimeout(self._timeout)
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as error:  # gone, refused, or its queue full past the timeout
            reason = f"{type(error).__name__}: {error.strerror or error}"
            if reason != self._failing:
                log.warning("systemd notification not delivered; the daemon carries on",
                            socket=_shown(self._address), reason=reason)
                self._failing = reason
            return False
        if self._failing is not None:
            log.info("systemd notifications delivered again", socket=_shown(self._address))
            self._failing = None
        return True

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

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _shown(address: str) -> str:
    """The socket's address as NOTIFY_SOCKET spells it."""
    return "@" + address[1:] if address.startswith("\0") else address


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
