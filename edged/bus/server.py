"""The bus thread: it alone owns the ZeroMQ sockets (they are not thread-safe).

It publishes events on a PUB socket (topic ``edged.<kind>.<camera>``, JSON envelope) and
serves requests on a ROUTER socket. Other threads hand it events and replies through a
queue and a wake-up pipe. Every request gets a reply: malformed, oversized, unknown or
mistyped ones an error with a code, so no input can stop the server. Requests in progress
are bounded (past the limit: ``busy``) and each has a deadline (past it: ``deadline``).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
import zmq
from pydantic import BaseModel

from edged.bus.bus_settings import TRANSPORT_MAX_BYTES, BusConfig, server_endpoint
from edged.bus.requests import Refusal, parse_request
from edged.bus.schema import EVENT_DATA, ErrorInfo, Reply, Request, Status, StatusRequest, topic
from edged.bus.security import CurveGate
from edged.parts import Pulse

log = structlog.get_logger()


class Responder:
    """How a handler answers one request, from any thread; later calls after the final one,
    or after the deadline, are dropped."""

    def __init__(self, server: BusServer, key: tuple[bytes, str]) -> None:
        self._server, self._key = server, key

    def partial(self, data: Any) -> None:
        self._server._post(("reply", self._key, True, True, _plain(data), None))

    def final(self, data: Any = None) -> None:
        self._server._post(("reply", self._key, False, True, _plain(data), None))

    def error(self, code: str, message: str) -> None:
        self._server._post(("reply", self._key, False, False, None, ErrorInfo(code=code, message=message)))


class Respond(Protocol):
    """How a request is answered, whichever door it came through (the bus's Responder, or
    edged.bus.local's for MQTT and HTTP)."""

    def partial(self, data: Any) -> None: ...
    def final(self, data: Any = None) -> None: ...
    def error(self, code: str, message: str) -> None: ...


class RequestHandler(Protocol):
    """The agent's side of the bus: it must return quickly and answer through ``respond``."""

    def handle(self, request: Request, respond: Respond) -> None: ...


EventListener = Callable[[str, "str | None", str], None]
"""Told of each event the bus publishes: (kind, camera, the envelope's JSON)."""


class Unavailable:
    """Answers every model-backed op with ``unavailable`` (no agent is running)."""

    def handle(self, request: Request, respond: Respond) -> None:
        respond.error("unavailable", f"'{request.op}' needs the agent, which is not running in this daemon")


@dataclass
class _Pending:
    identity: bytes
    request_id: str
    req_style: bool  # a REQ client: one reply only, after an empty delimiter frame
    deadline: float


def _plain(data: Any) -> Any:
    return data.model_dump(mode="json") if isinstance(data, BaseModel) else data


class BusServer:
    """Publishes events and serves requests from its own thread."""

    def __init__(
        self,
        config: BusConfig,
        handler: RequestHandler,
        status: Callable[[], Status],
        pulse: Pulse | None = None,
        context: zmq.Context | None = None,
        beat_every: float = 1.0,
    ) -> None:
        self.config = config
        self._handler = handler
        self._status = status
        self._pulse = pulse or Pulse("bus")
        self._beat_every = beat_every
        self._framing: dict[tuple[str, str | None], tuple[bytes, str, str]] = {}
        self._context = context or zmq.Context.instance()
        self._outbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name="bus", daemon=True)
        self._seq: dict[tuple[str, str | None], int] = {}
        self._wake_pending = False
        self._pending: dict[tuple[bytes, str], _Pending] = {}
        self.busy_refusals = 0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._gate: CurveGate | None = None
        self._listeners: list[EventListener] = []

    # -- any thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the sockets (on the bus thread) and return once they are bound."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def publish(self, kind: str, camera: str | None, data: BaseModel) -> None:
        """Queue an event for the publisher; never blocks."""
        if kind not in EVENT_DATA:
            raise ValueError(f"unknown event kind {kind!r}")
        self._post(("event", kind, camera, data.model_dump_json()))

    def add_listener(self, listener: EventListener) -> None:
        """Tell ``listener`` of every event from now on (on the bus thread; it must not block)."""
        self._listeners = [*self._listeners, listener]

    def reload_allow_list(self) -> None:
        """Read the CURVE allow-list folder again (on the bus thread, soon)."""
        self._post(("reload_allow",))

    @property
    def in_progress(self) -> int:
        return len(self._pending)

    def _post(self, item: tuple) -> None:
        self._outbox.put(item)
        if not self._wake_pending:  # one wake-up per batch, not a system call per event
            self._wake()

    def _wake(self) -> None:
        self._wake_pending = True
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the thread is awake anyway) or closed (stopping)

    # -- the bus thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            events, control = self._bind()
        except BaseException as error:  # reported to start()
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        for socket in self._gate.pollables() if self._gate else ():
            poller.register(socket, zmq.POLLIN)
        next_status = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._pulse.beat()
                now = time.monotonic()
                if now >= next_status:
                    self._publish(events, "status", None, self._status().model_dump_json())
                    next_status = now + self.config.status_interval_s
                self._expire(control, now)
                timeout = min(next_status, *(p.deadline for p in self._pending.values()), now + self._beat_every) - now
                ready = dict(poller.poll(max(0.0, timeout) * 1000))
                if self._wake_read in ready:
                    self._drain_wakeups()
                    self._wake_pending = False  # after the pipe, before the queue: no post is missed
                while True:
                    try:
                        item = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if item[0] == "reload_allow":
                        self._reload_allow_list()
                    else:
                        self._deliver(events, control, item)
                for socket in self._gate.pollables() if self._gate else ():
                    if socket in ready:
                        self._gate.handle(socket)
                if control in ready:
                    for _ in range(100):  # stay responsive to the outbox under a flood
                        try:
                            frames = control.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        revoked = self._gate.revoked_key(frames[-1]) if self._gate is not None else None
                        self._receive(control, [frame.bytes for frame in frames], revoked)
        finally:
            self._answer_before_closing(events, control)
            if self._gate is not None:
                self._gate.forget(events)
                self._gate.forget(control)
            events.close(linger=200)
            control.close(linger=200)
            if self._gate is not None:
                self._gate.close()

    def _reload_allow_list(self) -> None:
        """Re-read the allow-list: an added key is admitted at its next connection; a removed
        one is refused from its next request on, and at its next connection. (An event
        subscription it already holds lasts until it disconnects: ZeroMQ cannot drop one
        peer of a PUB socket. Restart the daemon to cut those.)"""
        if self._gate is None:
            return
        try:
            added, removed = self._gate.allow.reload()
        except OSError as error:
            log.error("CURVE allow-list not reloaded; the previous one stays", reason=str(error))
            return
        log.info("CURVE allow-list reloaded", keys=len(self._gate.allow.keys), added=added, removed=removed)

    def _answer_before_closing(self, events: zmq.Socket, control: zmq.Socket) -> None:
        """At stop: send what handlers have already posted, and tell every client still
        waiting that no answer is coming, rather than leaving it to time out."""
        while True:
            try:
                self._deliver(events, control, self._outbox.get_nowait())
            except queue.Empty:
                break
        for pending in self._pending.values():
            self._send(control, pending.identity, pending.req_style, Reply(
                id=pending.request_id, ok=False,
                error=ErrorInfo(code="unavailable", message="the daemon is stopping; ask again when it is back")))
        self._pending.clear()

    def _bind(self) -> tuple[zmq.Socket, zmq.Socket]:
        if self.config.curve_secret_key is not None:
            self._gate = CurveGate(self._context, self.config.curve_secret_key, self.config.curve_allow)  # type: ignore[arg-type]
        events = self._context.socket(zmq.PUB)
        control = self._context.socket(zmq.ROUTER)
        events.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        # What one request may cost in memory: ZeroMQ drops a connection that announces a
        # larger message before edged sees a byte of it, so no reply is possible past this.
        control.setsockopt(zmq.MAXMSGSIZE, max(self.config.max_request_bytes, TRANSPORT_MAX_BYTES))
        if self._gate is not None:
            self._gate.secure(events)
            self._gate.secure(control)
        self.events_endpoint = server_endpoint(self.config.events)
        self.control_endpoint = server_endpoint(self.config.control)
        for socket, endpoint in ((events, self.events_endpoint), (control, self.control_endpoint)):
            try:
                _bind(socket, endpoint)
            except (zmq.ZMQError, OSError) as error:
                if self._gate is not None:
                    self._gate.close()
                events.close(linger=0)
                control.close(linger=0)
                raise OSError(
                    f"cannot bind {endpoint}: {error}; set [bus] {'events' if socket is events else 'control'} "
                    "to an endpoint this user can bind (e.g. ipc:///tmp/edged/control.sock)"
                ) from None
        return events, control

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _publish(self, events: zmq.Socket, kind: str, camera: str | None, data_json: str) -> None:
        """Send one event; the envelope is spliced around the data's JSON, not re-encoded."""
        key = (kind, camera)
        framing = self._framing.get(key)
        if framing is None:
            framing = self._framing[key] = (
                topic(kind, camera).encode(),
                f'{{"v":1,"kind":"{kind}","seq":',
                f',"device":{json.dumps(self.config.device)},"camera":{json.dumps(camera)},"data":',
            )
        name, head, middle = framing
        seq = self._seq.get(key, -1) + 1
        self._seq[key] = seq
        envelope = f'{head}{seq},"ts":{time.time()!r}{middle}{data_json}}}'
        events.send(name, zmq.SNDMORE)
        events.send(envelope.encode(), copy=False)
        for listener in self._listeners:
            try:
                listener(kind, camera, envelope)
            except Exception:  # a door's bug must not stop the bus
                log.exception("event listener failed", kind=kind)

    def _deliver(self, events: zmq.Socket, control: zmq.Socket, item: tuple) -> None:
        if item[0] == "event":
            _, kind, camera, data = item
            self._publish(events, kind, camera, data)
            return
        _, key, partial, ok, data, error = item
        pending = self._pending.get(key)
        if pending is None:
            return  # answered already, or past its deadline
        if partial and pending.req_style:
            return
        self._send(control, pending.identity, pending.req_style,
                   Reply(id=pending.request_id, ok=ok, partial=partial, data=data, error=error))
        if not partial:
            del self._pending[key]

    def _expire(self, control: zmq.Socket, now: float) -> None:
        for key, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[key]
                self._send(control, pending.identity, pending.req_style, Reply(
                    id=pending.request_id, ok=False,
                    error=ErrorInfo(code="deadline", message=f"not answered within {self.config.request_timeout_s:g} s")))

    def _send(self, control: zmq.Socket, identity: bytes, req_style: bool, reply: Reply) -> None:
        payload = reply.model_dump_json(exclude_none=False).encode()
        frames = [identity, b"", payload] if req_style else [identity, payload]
        try:
            control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client's queue is full or it left: its problem, not the server's

    def _receive(self, control: zmq.Socket, frames: list[bytes], revoked: str | None = None) -> None:
        """Answer or dispatch one request; ``revoked``: its client's key, when that was removed
        from the CURVE allow-list since it connected."""
        identity, body = frames[0], frames[1:]
        # A REQ client's message comes after an empty delimiter frame, and its reply must too.
        req_style = bool(body) and body[0] == b""
        if req_style:
            body = body[1:]
        if len(body) != 1:
            return self._refuse(control, identity, req_style, None, "bad_request",
                                "send one frame per request (DEALER), or an empty frame and one (REQ)")
        request = parse_request(body[0], self.config.max_request_bytes)
        if revoked is not None:
            self._gate.allow.refused("-", revoked, "key removed from the allow-list since it connected")
            return self._refuse(control, identity, req_style, request.request_id if isinstance(request, Refusal)
                                else request.id, "unavailable",
                                "this client's key is no longer in the daemon's allow-list ([bus] curve_allow)")
        if isinstance(request, Refusal):
            return self._refuse(control, identity, req_style, request.request_id, request.code, request.message)
        key = (identity, request.id)
        if key in self._pending:
            return self._refuse(control, identity, req_style, request.id, "bad_request",
                                f"id {request.id!r} is already in progress")
        if isinstance(request, StatusRequest):
            return self._send(control, identity, req_style, Reply(id=request.id, ok=True, data=self._status().model_dump(mode="json")))
        if len(self._pending) >= self.config.queue_limit:
            self.busy_refusals += 1
            return self._refuse(control, identity, req_style, request.id, "busy",
                                f"{len(self._pending)} requests in progress; try again shortly")
        self._pending[key] = _Pending(identity, request.id, req_style, time.monotonic() + self.config.request_timeout_s)
        try:
            self._handler.handle(request, Responder(self, key))
        except Exception as error:  # the handler's bug must not take the bus down
            log.exception("request handler failed", request_id=request.id, op=request.op)
            self._pending.pop(key, None)
            self._refuse(control, identity, req_style, request.id, "internal", f"{type(error).__name__}: {error}")

    def _refuse(self, control: zmq.Socket, identity: bytes, req_style: bool, request_id: str | None,
                code: str, message: str) -> None:
        self._send(control, identity, req_style, Reply(id=request_id, ok=False, error=ErrorInfo(code=code, message=message)))


def _bind(socket: zmq.Socket, endpoint: str) -> None:
    """Bind; an ipc:// socket file gets its directory created and mode 0660."""
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        socket.bind(endpoint)
        os.chmod(path, 0o660)
    else:
        socket.bind(endpoint)
