"""Talking to a running edged from Python: subscribe to its events, send it requests.

    from edged.client import Client, Subscriber
    with Subscriber("ipc:///run/edged/events.sock", ["edged.rule."]) as events:
        for received in events:
            print(received.event.data)
    with Client("ipc:///run/edged/control.sock") as client:
        for piece in client.ask("Is anyone at the door?", camera="front"):
            print(piece, end="")
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from pydantic import ValidationError

from edged.bus.bus_settings import TRANSPORT_MAX_BYTES
from edged.bus.schema import EVENT, OPS, PROTOCOL_VERSION, REQUEST, Answer, Event, Reply, Snapshot, Status
from edged.bus.security import curve_client


class BusError(Exception):
    """The daemon answered with an error; ``code`` is one of the documented error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Received:
    topic: str
    event: Event
    missed: int
    """Events of this topic missed since the previous one received (0 normally)."""


def _socket(context: zmq.Context, kind: int, endpoint: str, server_key: Path | None, client_key: Path | None,
            connect_timeout: float | None = None) -> zmq.Socket:
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        if server_key is not None:
            if client_key is None:
                raise ValueError("CURVE needs both the server's public key and this client's secret key")
            curve_client(socket, server_key, client_key)
        if connect_timeout is None:
            _connect(socket, endpoint)
            return socket
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILURES))
        try:  # the monitor is there before the connection, so no event is missed
            _connect(socket, endpoint)
            _await_handshake(monitor, endpoint, connect_timeout)
        finally:
            socket.disable_monitor()
            monitor.close(linger=0)
    except BaseException:
        socket.close()
        raise
    return socket


def _connect(socket: zmq.Socket, endpoint: str) -> None:
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as error:
        raise ConnectionError(f"cannot connect to {endpoint!r}: {error} (endpoints look like "
                              "ipc:///run/edged/control.sock or tcp://HOST:PORT)") from None


_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the daemon refused this client's key (not in its [bus] curve_allow)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (a wrong server key, or CURVE on one side only?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (CURVE on one side only?)",
}


def _await_handshake(monitor: zmq.Socket, endpoint: str, timeout: float) -> None:
    """Return once the socket behind ``monitor`` has completed its handshake with the daemon;
    ConnectionError naming ``endpoint`` when none answers within ``timeout`` seconds or it
    refuses us. (ZeroMQ itself would wait, quietly, for a daemon that is not running.)"""
    from zmq.utils.monitor import recv_monitor_message

    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0 and monitor.poll(remaining * 1000):
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        raise ConnectionError(f"{endpoint}: {_HANDSHAKE_FAILURES[event]}")
    raise ConnectionError(f"no edged answers at {endpoint} within {timeout:g} s: is it running, and is this "
                          "its endpoint ([bus] in its config, or --endpoint)?")


class Subscriber:
    """Events whose topic starts with one of ``topics``, validated against the schema."""

    def __init__(self, endpoint: str, topics: Sequence[str] = ("edged.",), server_key: Path | None = None,
                 client_key: Path | None = None, context: zmq.Context | None = None,
                 connect_timeout: float | None = None) -> None:
        """``connect_timeout`` as for Client."""
        self._socket = _socket(context or zmq.Context.instance(), zmq.SUB, endpoint, server_key, client_key,
                               connect_timeout)
        for prefix in topics or ("",):
            self._socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._last_seq: dict[str, int] = {}
        self.missed = 0

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next event, or None after ``timeout`` seconds."""
        if timeout is not None and not self._socket.poll(timeout * 1000):
            return None
        name, payload = self._socket.recv_multipart()
        event = EVENT.validate_json(payload)
        topic = name.decode()
        last = self._last_seq.get(topic)
        missed = event.seq - last - 1 if last is not None and event.seq > last else 0
        self._last_seq[topic] = event.seq
        self.missed += missed
        return Received(topic, event, missed)

    def __iter__(self) -> Iterator[Received]:
        while True:
            received = self.receive()
            if received is not None:
                yield received

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Requests to the daemon's control socket (DEALER: answers stream as partial replies)."""

    def __init__(self, endpoint: str, timeout: float = 30.0, server_key: Path | None = None,
                 client_key: Path | None = None, context: zmq.Context | None = None,
                 connect_timeout: float | None = None) -> None:
        """``connect_timeout``: wait that long for the daemon to answer the connection, and
        raise ConnectionError (naming the endpoint) if it does not, or refuses this client;
        None connects in the background, as ZeroMQ does, and a daemon started later is found."""
        self.timeout = timeout
        self._socket = _socket(context or zmq.Context.instance(), zmq.DEALER, endpoint, server_key, client_key,
                               connect_timeout)

    def request(self, op: str, **fields: Any) -> Iterator[Reply]:
        """Send one request; yield its replies until the final one. TimeoutError if the
        daemon says nothing for ``timeout`` seconds."""
        request_id = uuid.uuid4().hex
        try:  # built through the schema's request models, so what the daemon would refuse is refused here
            if op not in OPS:
                raise BusError("unknown_op", f"{op!r} is not one of {', '.join(OPS)}")
            message = REQUEST.validate_python({"v": PROTOCOL_VERSION, "id": request_id, "op": op, **fields})
        except (BusError, ValidationError) as error:
            _refuse_if_too_large(len(json.dumps(fields, default=str)))  # the transport's limit is said first
            if isinstance(error, BusError):
                raise
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"][1:])
            raise BusError("bad_request", f"{op}: {where + ': ' if where else ''}{first['msg']}") from None
        payload = message.model_dump_json(exclude_none=True).encode()
        _refuse_if_too_large(len(payload))
        self._socket.send(payload)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(remaining * 1000):
                raise TimeoutError(f"no reply to {op!r} within {self.timeout:g} s: is edged running?")
            reply = Reply.model_validate_json(self._socket.recv())
            if reply.id != request_id:
                continue  # a late reply to an earlier request that timed out
            yield reply
            if not reply.partial:
                return
            deadline = time.monotonic() + self.timeout

    def call(self, op: str, **fields: Any) -> Any:
        """The final reply's data; raises BusError when the daemon answers with an error."""
        for reply in self.request(op, **fields):
            if not reply.ok:
                raise BusError(reply.error.code, reply.error.message)  # type: ignore[union-attr]
            if not reply.partial:
                return reply.data
        return None

    def ask(self, question: str, camera: str | None = None, session: str | None = None,
            max_tokens: int = 256, frame_seq: int | None = None) -> AnswerStream:
        """The answer: iterate it for the text as it streams, then read ``.final``.
        ``frame_seq`` asks about that recent frame of ``camera`` instead of its newest."""
        return AnswerStream(self.request("ask", question=question, camera=camera, session=session,
                                         max_tokens=max_tokens, frame_seq=frame_seq))

    def status(self) -> Status:
        return Status.model_validate(self.call("status"))

    def snapshot(self, camera: str, image_format: str = "jpeg") -> Snapshot:
        """The newest frame the model saw from ``camera``, boxes and rule states drawn on it."""
        return Snapshot.model_validate(self.call("snapshot", camera=camera, format=image_format))

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_if_too_large(size: int) -> None:
    if size > TRANSPORT_MAX_BYTES:  # ZeroMQ would drop the connection, and no reply could come
        raise BusError("too_large", f"request of {size} bytes; the bus carries at most {TRANSPORT_MAX_BYTES}")


class AnswerStream:
    """An answer as it streams: each partial reply carries the next piece of text; the final
    reply, kept in ``final``, the whole answer (yielded only when nothing was streamed)."""

    def __init__(self, replies: Iterator[Reply]) -> None:
        self._replies = replies
        self.final: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        streamed = False
        for reply in self._replies:
            if not reply.ok:
                raise BusError(reply.error.code, reply.error.message)  # type: ignore[union-attr]
            if reply.partial:
                streamed = True
                yield reply.data.get("text", "") if isinstance(reply.data, dict) else ""
            else:
                self.final = Answer.model_validate(reply.data)
                if not streamed and self.final.text:
                    yield self.final.text
