"""The bus, over real ZeroMQ sockets (ipc and 127.0.0.1): events, requests, limits, CURVE."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import edged

from edged.bus.bus_settings import BusConfig
from edged.bus.schema import (
    Answer,
    CameraStatus,
    Description,
    DetectedObject,
    Detection,
    ErrorEvent,
    Provenance,
    Request,
    RuleEvent,
    Status,
)
from edged.bus.server import BusServer, Responder
from edged.client import BusError, Client, Subscriber


class StandInAgent:
    """Answers `ask` by streaming the question's words back; holds questions saying 'wait'."""

    def __init__(self) -> None:
        self.held: list[Responder] = []

    def handle(self, request: Request, respond: Responder) -> None:
        if request.op != "ask":
            respond.final({"op": request.op})
            return
        if "wait" in request.question:
            self.held.append(respond)
            return
        words = request.question.split()
        for word in words:
            respond.partial({"text": word + " "})
        respond.final(Answer(request_id=request.id, session=request.session, text=" ".join(words) + " "))


def status() -> Status:
    return Status(uptime_s=1.0, model="tiny", cameras={"front": CameraStatus(state="online", fps=2.0)})


@pytest.fixture
def endpoints(tmp_path: Path) -> BusConfig:
    return BusConfig(events=f"ipc://{tmp_path}/run/events.sock", control=f"ipc://{tmp_path}/run/control.sock",
                     device="test-device", status_interval_s=3600, queue_limit=3, request_timeout_s=1.0)


@pytest.fixture
def agent() -> StandInAgent:
    return StandInAgent()


@pytest.fixture
def server(endpoints: BusConfig, agent: StandInAgent) -> Iterator[BusServer]:
    bus = BusServer(endpoints, agent, status)
    bus.start()
    yield bus
    bus.stop()


@pytest.fixture
def client(endpoints: BusConfig, server: BusServer) -> Iterator[Client]:
    with Client(endpoints.control, timeout=5) as connected:
        yield connected


def subscribe(endpoints: BusConfig, topics=("edged.",)) -> Subscriber:
    subscriber = Subscriber(endpoints.events, topics)
    time.sleep(0.2)  # a SUB socket misses what is published before it has joined
    return subscriber


SAMPLES = {
    "detection": Detection(objects=[DetectedObject(label="person", count=1, box=[10, 20, 110, 220])],
                           provenance=Provenance(frame_seq=7, frame_ts=1.5, frame_hash="ab12", model="f00d")),
    "rule": RuleEvent(rule="person_at_door", version="1", phase="begin", probability=0.93,
                      provenance=Provenance(frame_seq=8, prompt_version="1")),
    "description": Description(text="A quiet street."),
    "answer": Answer(request_id="r1", text="Yes.", session="s"),
    "status": status(),
    "error": ErrorEvent(code="camera", message="front: lost"),
}


def test_every_event_kind_round_trips_and_matches_the_printed_schema(endpoints: BusConfig, server: BusServer) -> None:
    schema = json.loads(edged("schema").stdout)
    subscriber = subscribe(endpoints)
    for kind, data in SAMPLES.items():
        server.publish(kind, None if kind == "status" else "front", data)
    received = {}
    while len(received) < len(SAMPLES):
        item = subscriber.receive(timeout=5)
        assert item is not None, f"missing events; got {sorted(received)}"
        received[item.event.kind] = item
    for kind, item in received.items():
        assert item.event.data == SAMPLES[kind]
        assert item.topic == ("edged.status" if kind == "status" else f"edged.{kind}.front")
        assert item.event.device == "test-device"
        jsonschema.validate(json.loads(item.event.model_dump_json()), schema["event"])
    subscriber.close()


def test_subscribers_filter_by_topic_prefix(endpoints: BusConfig, server: BusServer) -> None:
    subscriber = subscribe(endpoints, ["edged.rule."])
    server.publish("description", "front", SAMPLES["description"])
    server.publish("rule", "front", SAMPLES["rule"])
    item = subscriber.receive(timeout=5)
    assert item.topic == "edged.rule.front"
    assert subscriber.receive(timeout=0.3) is None
    subscriber.close()


def test_a_subscriber_sees_a_gap_when_events_were_dropped(tmp_path: Path, agent: StandInAgent) -> None:
    config = BusConfig(events=f"ipc://{tmp_path}/e.sock", control=f"ipc://{tmp_path}/c.sock",
                       status_interval_s=3600, send_hwm=10)
    bus = BusServer(config, agent, status)
    bus.start()
    context = zmq.Context()
    subscriber = Subscriber(config.events, ["edged.description."], context=context)
    subscriber._socket.setsockopt(zmq.RCVHWM, 10)
    time.sleep(0.2)
    for n in range(3000):
        bus.publish("description", "front", Description(text=f"event {n}"))
    time.sleep(0.5)
    seen = []
    while (item := subscriber.receive(timeout=0.5)) is not None:
        seen.append(item)
    assert seen and len(seen) < 3000
    assert subscriber.missed == seen[-1].event.seq - seen[0].event.seq + 1 - len(seen) > 0
    assert any(item.missed > 0 for item in seen)
    subscriber.close()
    context.term()
    bus.stop()


def test_a_subscriber_that_never_reads_cannot_block_the_publisher(endpoints: BusConfig, server: BusServer, client: Client) -> None:
    idle = Subscriber(endpoints.events)  # connected, never reads
    time.sleep(0.2)
    started = time.monotonic()
    for _ in range(50_000):
        server.publish("description", "front", Description(text="x" * 150))
    assert client.status().model == "tiny"  # the bus thread is still serving requests
    assert time.monotonic() - started < 30
    idle.close()


def test_ask_streams_partial_replies_then_the_final_answer(client: Client) -> None:
    replies = list(client.request("ask", question="is the door open"))
    assert [r.partial for r in replies] == [True, True, True, True, False]
    assert "".join(r.data["text"] for r in replies[:-1]) == "is the door open "
    assert replies[-1].data["text"] == "is the door open "
    answer = client.ask("two words")
    assert "".join(answer) == "two words "
    assert answer.final.text == "two words "


def test_status_is_answered_by_the_server_itself(client: Client) -> None:
    assert client.status().cameras["front"].state == "online"


def test_a_req_client_gets_only_the_final_reply(endpoints: BusConfig, server: BusServer) -> None:
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.connect(endpoints.control)
    socket.send(json.dumps({"v": 1, "id": "q1", "op": "ask", "question": "three little words"}).encode())
    assert socket.poll(5000)
    reply = json.loads(socket.recv())
    assert reply["id"] == "q1" and reply["ok"] and not reply["partial"]
    socket.close(linger=0)


def test_requests_past_the_limit_are_answered_busy(client: Client, agent: StandInAgent, server: BusServer) -> None:
    for n in range(3):  # sent, not waited for: the stand-in agent holds them
        client._socket.send(json.dumps({"v": 1, "id": f"w{n}", "op": "ask", "question": f"wait {n}"}).encode())
    deadline = time.monotonic() + 5
    while len(agent.held) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    with Client(server.config.control, timeout=5) as other:
        with pytest.raises(BusError, match="busy"):
            other.call("ask", question="one more")
        assert other.status().model == "tiny"  # status is never refused
    assert server.busy_refusals == 1


def test_a_request_not_answered_in_time_gets_deadline(client: Client, agent: StandInAgent) -> None:
    with pytest.raises(BusError, match="deadline: not answered within 1 s"):
        client.call("ask", question="please wait")
    agent.held[0].final({"text": "too late"})  # dropped, and the server carries on
    assert client.status().model == "tiny"


def raw_request(endpoint: str, frames: list[bytes]) -> dict | None:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    socket.send_multipart(frames)
    # An empty first frame makes the server answer REQ-style: an empty frame, then the reply.
    reply = json.loads(socket.recv_multipart()[-1]) if socket.poll(5000) else None
    socket.close()
    return reply


@pytest.mark.parametrize(("frames", "code"), [
    ([b"\xff\xfe not json"], "bad_request"),
    ([b"[1, 2, 3]"], "bad_request"),
    ([b'{"v": 1, "id": "x", "op": "launch"}'], "unknown_op"),
    ([b'{"v": 1, "id": "x", "op": "ask", "question": 42}'], "bad_request"),
    ([b'{"v": 1, "id": "x", "op": "ask"}'], "bad_request"),
    ([b'{"v": 2, "id": "x", "op": "status"}'], "bad_request"),
    ([b"{}", b"{}", b"{}"], "bad_request"),
    ([b"x" * (10 << 20)], "too_large"),
])
def test_malformed_requests_get_an_error_reply_with_a_code(endpoints: BusConfig, server: BusServer, frames, code) -> None:
    reply = raw_request(endpoints.control, frames)
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == code


def rss_mb() -> float:
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:"))) / 1024


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda v: json.dumps(v).encode(), st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=12)),
        st.builds(lambda op, extra: json.dumps({"v": 1, "id": "f", "op": op, **extra}).encode(),
                  st.sampled_from(["ask", "describe", "detect", "rules.set", "sessions.drop", "nope", ""]),
                  st.dictionaries(st.sampled_from(["question", "camera", "rules", "session", "labels"]),
                                  st.none() | st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=3))),
    ),
    min_size=1, max_size=4))
def test_fuzzed_requests_always_get_a_reply_and_never_stop_the_server(endpoints: BusConfig, server: BusServer, frames) -> None:
    reply = raw_request(endpoints.control, frames)
    assert reply is not None, f"no reply to {frames!r}"
    assert set(reply) >= {"v", "id", "ok", "error"}


def test_the_server_stays_alive_and_flat_after_a_flood_of_garbage(endpoints: BusConfig, server: BusServer, client: Client) -> None:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(endpoints.control)
    for round_ in range(3):
        for n in range(2000):
            socket.send(os.urandom(n % 500 + 1))
        for _ in range(2000):
            assert socket.poll(5000)
            socket.recv()
        if round_ == 0:
            baseline = rss_mb()
    socket.close(linger=0)
    assert client.status().model == "tiny"
    assert rss_mb() - baseline < 20


def test_ipc_sockets_are_group_read_writable_only(endpoints: BusConfig, server: BusServer) -> None:
    for endpoint in (endpoints.events, endpoints.control):
        mode = stat.S_IMODE(os.stat(endpoint[len("ipc://"):]).st_mode)
        assert mode == 0o660


# -- CURVE ----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports free on loopback, all different (each probe is held until all are chosen)."""
    import socket

    probes = [socket.socket() for _ in range(count)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


@pytest.fixture
def curve(tmp_path: Path) -> dict[str, Path]:
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    result = edged("keys", "generate", str(keys), "--name", "server")
    assert result.returncode == 0, result.stderr
    edged("keys", "generate", str(keys), "--name", "camera-app")
    edged("keys", "generate", str(keys), "--name", "stranger")
    (allowed / "camera-app.key").write_bytes((keys / "camera-app.key").read_bytes())
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    return {"server_secret": keys / "server.key_secret", "server_public": keys / "server.key", "allow": allowed,
            "client": keys / "camera-app.key_secret", "stranger": keys / "stranger.key_secret"}


def test_curve_serves_an_allowed_key_and_refuses_any_other(curve: dict[str, Path], agent: StandInAgent) -> None:
    events, control = free_ports(2)
    config = BusConfig(events=f"tcp://127.0.0.1:{events}", control=f"tcp://127.0.0.1:{control}",
                       status_interval_s=3600, curve_secret_key=curve["server_secret"], curve_allow=curve["allow"])
    bus = BusServer(config, agent, status)
    bus.start()
    try:
        with Client(config.control, timeout=3, server_key=curve["server_public"], client_key=curve["client"]) as allowed:
            assert allowed.status().model == "tiny"
        with Client(config.control, timeout=1.5, server_key=curve["server_public"], client_key=curve["stranger"]) as stranger:
            with pytest.raises(TimeoutError):
                stranger.status()
        plain = zmq.Context.instance().socket(zmq.DEALER)
        plain.connect(config.control)
        plain.send(json.dumps({"v": 1, "id": "p", "op": "status"}).encode())
        assert not plain.poll(1000)  # no CURVE, no conversation
        plain.close(linger=0)
    finally:
        bus.stop()


def test_a_daemon_run_by_hand_binds_the_users_runtime_dir_and_clients_find_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: StandInAgent) -> None:
    import edged.bus.bus_settings as bus_config

    locked = tmp_path / "run"  # stands for /run: not writable by this user
    locked.mkdir()
    monkeypatch.setattr(bus_config, "SYSTEM_RUNTIME_DIR", locked / "edged")
    monkeypatch.setattr(bus_config, "_can_create", lambda directory: False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
    config = BusConfig(events=f"ipc://{locked}/edged/events.sock", control=f"ipc://{locked}/edged/control.sock",
                       status_interval_s=3600)
    bus = BusServer(config, agent, status)
    bus.start()
    try:
        assert bus.control_endpoint == f"ipc://{tmp_path}/user/edged/control.sock"
        found = bus_config.client_endpoint(config.control)
        assert found == bus.control_endpoint
        with Client(found, timeout=5) as client:
            assert client.status().model == "tiny"
    finally:
        bus.stop()


def test_the_client_refuses_what_the_schema_refuses_before_sending_it(tmp_path: Path) -> None:
    # nobody listens: a request that went out would time out instead
    with Client(f"ipc://{tmp_path}/nobody.sock", timeout=0.5) as client:
        with pytest.raises(BusError, match="bad_request: ask: question: String should have at least 1 character"):
            client.call("ask", question="")
        with pytest.raises(BusError, match="bad_request: rules.set: camera"):
            client.call("rules.set", camera="Front Door", rules=[])
        with pytest.raises(BusError, match="unknown_op"):
            client.call("reboot")
        with pytest.raises(TimeoutError):
            client.call("ask", question="is anyone there")
