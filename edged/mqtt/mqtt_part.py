"""The MQTT door. Its thread owns the door's state: it connects (and so knows why a connection
failed), reconnects with backoff, and publishes; paho's own network thread moves the bytes
while a connection lasts, and its callbacks only hand what they saw to the door's thread.

What it publishes (topics.py): availability, with a last will so a dead daemon reads
``offline``; every bus event, its envelope as the bus has it; retained states for Home
Assistant (each rule's ON/OFF and attributes, each camera's description and snapshot, the
status); and Home Assistant's discovery configs (discovery.py). It answers requests published
to ``<base>/request`` through the same agent and scheduler as the bus's (edged.bus.local).
A lost broker, a refused password or a bad certificate is a state in ``status``, never a crash.
"""

from __future__ import annotations

import base64
import json
import queue
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edged.bus.bus_settings import BusConfig
from edged.bus.local import LocalBus, LocalReply, LocalResponder
from edged.bus.requests import Refusal, parse_request
from edged.bus.schema import DoorState, ErrorInfo, Reply, SnapshotRequest, Status
from edged.mqtt.discovery import Payloads, discovery_payloads, own_configs
from edged.mqtt.mqtt_settings import MqttConfig, read_password
from edged.mqtt.topics import Topics
from edged.parts import ProgressMonitor

log = structlog.get_logger()

STATEFUL_KINDS = frozenset({"rule", "description", "status"})
"""Events that also change a retained state the door keeps (and sends again on reconnect)."""
HA_STATE_MAX = 255
"""Home Assistant refuses a sensor state longer than this."""
INBOX_LIMIT = 10_000
"""Events waiting for the MQTT thread; past this (a broker far slower than the daemon) the
newest are dropped and counted rather than memory growing without bound."""
QUEUED_LIMIT = 1000
"""QoS 1 and 2 messages paho keeps for a broker that is away."""


class MqttSettings(Protocol):
    @property
    def mqtt(self) -> MqttConfig: ...
    @property
    def bus(self) -> BusConfig: ...


@dataclass
class _Pending:
    respond: LocalResponder | None
    request_id: str | None
    reply_topic: str
    correlation: bytes | None
    deadline: float


class MqttPart:
    name = "mqtt"

    def __init__(self, settings: MqttSettings, monitor: ProgressMonitor, bus: LocalBus) -> None:
        self._config = config = settings.mqtt
        self._max_request_bytes = settings.bus.max_request_bytes
        self._bus = bus
        self._device = bus.device
        self.topics = Topics.of(config, bus.device)
        self._pulse = monitor.register(self.name)
        self._beat_every = monitor.beat_every
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.events_dropped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name="mqtt", daemon=True)
        self.state = DoorState(state="starting", detail=f"{config.host}:{config.broker_port}")
        self._client: paho.Client | None = None
        self._link = False
        """A connection is open (paho's network thread runs), whether or not the broker accepted it."""
        self._connected = False
        self._backoff = config.reconnect_min_s
        self._next_attempt = 0.0
        self._logged_reason: str | None = None
        self._pending: dict[str, _Pending] = {}
        # What a broker that comes back (or a Home Assistant that starts later) is sent again.
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._discovery: Payloads = {}
        self._snapshot_seq: dict[str, int] = {}
        self._routes: dict[tuple[str, str | None], tuple[str, int]] = {}
        self._next_snapshot = 0.0
        bus.subscribe(self._on_event)

    # -- the lifecycle (main thread) -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        log.info("mqtt door started", broker=f"{self._config.host}:{self._config.broker_port}", base_topic=self.topics.base)

    def stop(self, deadline: float) -> None:
        self._stopping.set()
        self._inbox.put(("stop",))
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def apply(self, settings: MqttSettings) -> None:
        """Every [mqtt] key needs a restart (the lifecycle says so); rules and cameras that
        change reach Home Assistant with the next status."""

    def describe(self) -> str:
        dropped = f", {self.events_dropped} events dropped (the broker is slower than the daemon)" if self.events_dropped else ""
        return f"mqtt: {self.state.state}{dropped}"

    def door_state(self) -> DoorState:
        return self.state

    # -- the bus thread ----------------------------------------------------------------------

    def _on_event(self, kind: str, camera: str | None, envelope: str) -> None:
        if kind in STATEFUL_KINDS or not self._connected:
            self._hand_over(("event", kind, camera, envelope))
            return
        # An event that changes no retained state goes straight to paho (whose publish is made
        # for calling from any thread, and never waits on the network): no hop through the door's
        # thread, which matters at hundreds of events a second on a two-core board.
        key = (kind, camera)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = (self.topics.event(kind, camera), getattr(self._config.qos, kind, 0))
        self._client.publish(route[0], envelope, qos=route[1])

    # -- any thread (the bus's, paho's, the inference thread's) ---------------------------------

    def _hand_over(self, item: tuple[Any, ...]) -> None:
        """Queue an item for the door's thread. Only events are dropped when it is far behind:
        a connection's news and replies to requests always get through."""
        if item[0] == "event" and self._inbox.qsize() >= INBOX_LIMIT:
            self.events_dropped += 1
            return
        self._inbox.put(item)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._hand_over(("connack", reason))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._hand_over(("disconnected", reason))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._hand_over(("message", message))

    # -- the door's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._client = self._make_client()
        except (OSError, ValueError, ssl.SSLError) as error:
            self._set_state("refused", f"{error}; fix [mqtt] and restart edged")
            self._idle_until_stopped()
            return
        try:
            while not self._stopping.is_set():
                self._pulse.beat()
                self._step()
        finally:
            self._disconnect()

    def _idle_until_stopped(self) -> None:
        while not self._stopping.wait(self._beat_every):
            self._pulse.beat()

    def _make_client(self) -> paho.Client:
        config = self._config
        protocol = MQTTProtocolVersion.MQTTv5 if config.protocol == "5" else MQTTProtocolVersion.MQTTv311
        # reconnect_on_failure=False: paho's thread ends with its connection, and this door
        # connects again itself, so that it can say why each attempt failed.
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id or f"edged-{self._device}",
                             protocol=protocol, reconnect_on_failure=False)
        if config.username is not None:
            password = read_password(config.password_file) if config.password_file is not None else None
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(ca_certs=str(config.tls_ca_file),
                           certfile=str(config.tls_cert_file) if config.tls_cert_file else None,
                           keyfile=str(config.tls_key_file) if config.tls_key_file else None)
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        client.max_queued_messages_set(QUEUED_LIMIT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _step(self) -> None:
        now = time.monotonic()
        if not self._link and now >= self._next_attempt:
            self._connect()
        wait = self._beat_every
        if not self._link:
            wait = min(wait, max(0.0, self._next_attempt - now))
        if self._pending:
            wait = min(wait, max(0.0, min(p.deadline for p in self._pending.values()) - now))
        try:
            item: tuple[Any, ...] | None = self._inbox.get(timeout=wait)
        except queue.Empty:
            item = None
        while item is not None:
            self._take(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                item = None
        self._expire(time.monotonic())
        if self._connected and self._config.snapshot_every_s and time.monotonic() >= self._next_snapshot:
            self._next_snapshot = time.monotonic() + self._config.snapshot_every_s
            self._publish_snapshots()

    def _take(self, item: tuple[Any, ...]) -> None:
        what = item[0]
        if what == "event":
            self._forward_event(*item[1:])
        elif what == "reply":
            self._send_reply(*item[1:])
        elif what == "message":
            self._receive(item[1])
        elif what == "connack":
            self._accepted(item[1])
        elif what == "disconnected":
            self._lost(str(item[1]))

    def _connect(self) -> None:
        config = self._config
        try:
            if self.state.state == "starting":  # later attempts keep saying why the last one failed
                self._set_state("connecting", f"{config.host}:{config.broker_port}")
            self._client.connect(config.host, config.broker_port, config.keepalive_s)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError: a bad certificate lands here
            self._retry_later(_reason(error))
            return
        self._link = True
        self._client.loop_start()

    def _retry_later(self, reason: str, state: str = "reconnecting") -> None:
        wait = self._backoff
        self._next_attempt = time.monotonic() + wait
        self._backoff = min(self._backoff * 2, self._config.reconnect_max_s)
        self._set_state(state, f"{reason}; next attempt in {wait:g} s")

    def _lost(self, reason: str) -> None:
        """paho's thread has ended with its connection: connect again after the backoff."""
        self._client.loop_stop()
        self._link = self._connected = False
        if self._stopping.is_set():
            return
        if self.state.state == "refused":
            return  # the refusal said why, and scheduled the next attempt
        self._retry_later(f"connection lost ({reason})")

    def _accepted(self, reason: Any) -> None:
        client = self._client
        if reason.is_failure:
            self._connected = False
            self._retry_later(f"the broker refused the connection: {reason}", state="refused")
            return
        self._connected = True
        self._backoff = self._config.reconnect_min_s
        self._set_state("connected", f"{self._config.host}:{self._config.broker_port}")
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        if self._config.requests:
            client.subscribe(self.topics.request, qos=1)
        status = self._bus.status()
        self._announce(status, again=True)
        self._states_from_status(status)
        for topic, (payload, qos) in self._retained.items():
            client.publish(topic, payload, qos=qos, retain=True)
        if self._config.discovery:
            client.subscribe(own_configs(self._config.discovery_prefix, self._device), qos=1)
        self._next_snapshot = 0.0

    def _receive(self, message: paho.MQTTMessage) -> None:
        if message.topic == self.topics.request:
            self._take_request(message)
        elif message.retain and message.payload and message.topic not in self._discovery:
            self._client.publish(message.topic, b"", qos=1, retain=True)  # an entity of an earlier run that is gone
            log.info("home assistant entity removed", topic=message.topic)

    def _set_state(self, state: str, detail: str) -> None:
        self.state = DoorState(state=state, detail=detail)
        if state in ("reconnecting", "refused") and detail.split(";")[0] != self._logged_reason:
            self._logged_reason = detail.split(";")[0]  # once per reason, not once per attempt
            (log.error if state == "refused" else log.warning)(
                f"mqtt {state}", broker=f"{self._config.host}:{self._config.broker_port}", reason=detail)
        elif state == "connected":
            if self._logged_reason is not None:
                log.info("mqtt connected again", broker=detail)
            self._logged_reason = None

    # -- events and states -----------------------------------------------------------------

    def _publish(self, topic: str, payload: str | bytes, qos: int, retain: bool = False) -> None:
        if retain:
            self._retained[topic] = (payload if isinstance(payload, bytes) else payload.encode(), qos)
        if self._connected or qos > 0:  # paho keeps QoS 1 and 2 messages for a broker that is away
            self._client.publish(topic, payload, qos=qos, retain=retain)

    def _forward_event(self, kind: str, camera: str | None, envelope: str) -> None:
        qos = getattr(self._config.qos, kind, 0)
        if kind == "status":
            self._publish(self.topics.status, envelope, qos, retain=True)
            status = Status.model_validate(json.loads(envelope)["data"])
            if self._connected:
                self._announce(status)
            self._states_from_status(status)
            return
        self._publish(self.topics.event(kind, camera), envelope, qos)
        if kind not in ("rule", "description") or camera is None:
            return
        data = json.loads(envelope)["data"]
        if kind == "rule":
            provenance = data["provenance"]
            self._publish(self.topics.rule(camera, data["rule"]), "ON" if data["phase"] == "begin" else "OFF", qos, retain=True)
            self._publish(self.topics.rule_attributes(camera, data["rule"]), json.dumps(
                {"probability": data["probability"], "version": data["version"], "phase": data["phase"], **provenance}),
                qos, retain=True)
        else:
            qos = self._config.qos.description
            self._publish(self.topics.description(camera), data["text"][:HA_STATE_MAX] or "-", qos, retain=True)
            self._publish(self.topics.description_attributes(camera),
                          json.dumps({"text": data["text"], **data["provenance"]}), qos, retain=True)

    def _states_from_status(self, status: Status) -> None:
        """Each rule's state as the status has it: a broker that missed an event (or a rule
        that has had none yet) still shows the truth."""
        qos = self._config.qos.rule
        for camera, rules in status.rules.items():
            for rule in rules:
                state = "ON" if rule.active else "OFF"
                topic = self.topics.rule(camera, rule.id)
                if self._retained.get(topic, (b"",))[0] != state.encode():
                    self._publish(topic, state, qos, retain=True)
                attributes_topic = self.topics.rule_attributes(camera, rule.id)
                known = json.loads(self._retained[attributes_topic][0]) if attributes_topic in self._retained else {}
                if known.get("probability") != rule.probability or known.get("version") != rule.version:
                    known.update(probability=rule.probability, version=rule.version, when=rule.when)
                    self._publish(attributes_topic, json.dumps(known), qos, retain=True)

    def _announce(self, status: Status, again: bool = False) -> None:
        """Send Home Assistant what changed in the entity set: new configs, and an empty
        retained config where an entity (a removed rule) is gone; ``again``: every config,
        for a broker just connected to, which may have lost them."""
        if not self._config.discovery:
            return
        current = discovery_payloads(self._config.discovery_prefix, self._device, self.topics, status,
                                     list(status.cameras) or list(status.rules))
        if current == self._discovery and not again:
            return
        for topic in self._discovery.keys() - current.keys():
            self._client.publish(topic, b"", qos=1, retain=True)
            self._forget_states_of(topic)
        for topic, payload in current.items():
            self._client.publish(topic, json.dumps(payload), qos=1, retain=True)
        self._discovery = current

    def _forget_states_of(self, config_topic: str) -> None:
        """A removed rule's retained state goes too, so nothing stale stays on the broker."""
        payload = self._discovery.get(config_topic, {})
        for topic in (payload.get("state_topic"), payload.get("json_attributes_topic")):
            if topic and topic != self.topics.status and topic in self._retained:
                del self._retained[topic]
                self._client.publish(topic, b"", qos=1, retain=True)

    def _publish_snapshots(self) -> None:
        for camera in self._bus.status().cameras:
            replies: list[LocalReply] = []
            self._bus.request(SnapshotRequest(id=f"mqtt-snapshot-{camera}", camera=camera), replies.append)
            # snapshot is answered on the calling thread, from the agent's memory
            if not replies or replies[-1].error is not None:
                continue
            data = replies[-1].data
            if self._snapshot_seq.get(camera) != data["frame_seq"]:
                self._snapshot_seq[camera] = data["frame_seq"]
                self._publish(self.topics.snapshot(camera), base64.b64decode(data["image"]), self._config.qos.status,
                              retain=True)

    # -- requests ----------------------------------------------------------------------------

    def _take_request(self, message: paho.MQTTMessage) -> None:
        properties = getattr(message, "properties", None)
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        request = parse_request(message.payload, self._max_request_bytes)
        request_id = request.request_id if isinstance(request, Refusal) else request.id
        reply_topic = response_topic or self.topics.reply(request_id or "unknown")
        if isinstance(request, Refusal):
            self._publish_reply(reply_topic, correlation, Reply(
                id=request.request_id, ok=False, error=ErrorInfo(code=request.code, message=request.message)))
            return
        key = uuid.uuid4().hex

        def deliver(reply: LocalReply) -> None:  # from whichever thread answers
            if not reply.partial:  # an MQTT client gets the whole answer in one message
                self._hand_over(("reply", key, reply))

        deadline = time.monotonic() + self._bus.request_timeout_s
        self._pending[key] = pending = _Pending(None, request.id, reply_topic, correlation, deadline)
        pending.respond = self._bus.request(request, deliver)

    def _send_reply(self, key: str, reply: LocalReply) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return  # past its deadline: the client was told
        self._publish_reply(pending.reply_topic, pending.correlation, Reply(
            id=pending.request_id, ok=reply.error is None, data=reply.data, error=reply.error))

    def _expire(self, now: float) -> None:
        for key, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[key]
                if pending.respond is not None:
                    pending.respond.abandon()
                self._publish_reply(pending.reply_topic, pending.correlation, Reply(
                    id=pending.request_id, ok=False,
                    error=ErrorInfo(code="deadline", message=f"not answered within {self._bus.request_timeout_s:g} s")))

    def _publish_reply(self, topic: str, correlation: bytes | None, reply: Reply) -> None:
        properties = None
        if correlation is not None and self._config.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self._client.publish(topic, reply.model_dump_json(), qos=self._config.qos.answer, properties=properties)

    def _disconnect(self) -> None:
        """Say ``offline`` ourselves (the will is only for a death) and leave cleanly."""
        client = self._client
        if client is None or not self._connected:
            return
        info = client.publish(self.topics.availability, "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(timeout=2.0)  # paho's thread sends it, and the broker acknowledges it
        except RuntimeError:
            pass  # the connection went meanwhile: the will says offline instead
        client.disconnect()
        client.loop_stop()


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the broker's certificate was not accepted: {error.verify_message} (check [mqtt] tls_ca_file)"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the broker running, on this port?)"
    return f"{type(error).__name__}: {error}"
