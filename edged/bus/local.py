"""The bus as the doors beyond ZeroMQ (MQTT, HTTP) see it from inside the daemon: every event
as the bus publishes it, envelope and all, and every request op, handled by the same agent and
scheduler as a bus client's, with the same bound on requests in progress."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edged.bus.schema import ErrorInfo, Request, Status, StatusRequest
from edged.bus.server import BusServer, EventListener, RequestHandler, _plain


@dataclass(frozen=True)
class LocalReply:
    """One reply to a local request: partial data, the final data, or an error."""

    partial: bool
    data: Any = None
    error: ErrorInfo | None = None


class LocalResponder:
    """Hands each reply to ``deliver`` (from whichever thread answers); nothing after the first
    final reply or error, which also frees the request's place among those in progress."""

    def __init__(self, deliver: Callable[[LocalReply], None], done: Callable[[], None]) -> None:
        self._deliver, self._done = deliver, done
        self._finished = False
        self._lock = threading.Lock()

    def partial(self, data: Any) -> None:
        if not self._finished:
            self._deliver(LocalReply(True, _plain(data)))

    def final(self, data: Any = None) -> None:
        self._finish(LocalReply(False, _plain(data)))

    def error(self, code: str, message: str) -> None:
        self._finish(LocalReply(False, error=ErrorInfo(code=code, message=message)))

    def abandon(self) -> None:
        """The door stopped waiting (its client left, or the deadline passed): later replies are dropped."""
        self._finish(None)

    def _finish(self, reply: LocalReply | None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if reply is not None:
            self._deliver(reply)
        self._done()


class LocalBus:
    def __init__(self, server: BusServer, handler: RequestHandler, status: Callable[[], Status]) -> None:
        self._server, self._handler, self.status = server, handler, status
        self.device = server.config.device
        self.request_timeout_s = server.config.request_timeout_s
        self._in_progress = 0
        self._lock = threading.Lock()

    def subscribe(self, listener: EventListener) -> None:
        """``listener(kind, camera, envelope_json)`` for every event from now on, on the bus
        thread: it must only hand the event on (a queue), never block."""
        self._server.add_listener(listener)

    def request(self, request: Request, deliver: Callable[[LocalReply], None]) -> LocalResponder:
        """Start one request; its replies go to ``deliver``. The responder returned lets the
        door give up on it."""
        with self._lock:
            busy = self._in_progress >= self._server.config.queue_limit
            if not busy:
                self._in_progress += 1
        if busy:
            self._server.busy_refusals += 1
            respond = LocalResponder(deliver, lambda: None)
            respond.error("busy", f"{self._server.config.queue_limit} requests in progress; try again shortly")
            return respond
        respond = LocalResponder(deliver, self._release)
        if isinstance(request, StatusRequest):
            respond.final(self.status())
            return respond
        try:
            self._handler.handle(request, respond)
        except Exception as error:  # the handler's bug must not take the door down
            respond.error("internal", f"{type(error).__name__}: {error}")
        return respond

    def _release(self) -> None:
        with self._lock:
            self._in_progress -= 1
