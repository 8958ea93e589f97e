"""The daemon end to end: a camera, the bundled tiny model, a real bus subscriber and client."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import cv2
import jsonschema
import pytest

from conftest import NotifySocket, edged

from edged.capture.sources.synthetic import synthetic_frame
from edged.agent.tasks import DETECTION_SCHEMA, objects_in_pixels
from edged.bus.schema import Detection, Snapshot
from edged.client import BusError, Client, Subscriber


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def one_picture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "door.png"), cv2.cvtColor(synthetic_frame(40, 160, 120), cv2.COLOR_RGB2BGR))
    return folder


def wait_for_frame(client: Client, camera: str, timeout: float = 20) -> Snapshot:
    """The camera's first frame as the agent has it (snapshot says not_found until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.snapshot(camera)
        except BusError as error:
            assert error.code == "not_found" and time.monotonic() < deadline, error
            time.sleep(0.05)


def test_rule_events_arrive_valid_with_provenance(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    config = write_config(tmp_path / "edged.toml", """
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "anything"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 8
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Subscriber(daemon.events, ["edged.rule.front"]) as events:  # before the 8th frame's evaluation
        received = events.receive(timeout=30)
    schema = json.loads(edged("schema").stdout)
    assert received is not None, daemon.log()[-2000:]
    event = received.event
    jsonschema.validate(json.loads(event.model_dump_json()), schema["event"])
    assert event.data.rule == "anything" and event.data.phase == "begin"
    assert event.data.provenance.frame_seq is not None and event.data.provenance.frame_hash
    assert event.data.provenance.model and event.data.provenance.prompt_version == event.data.version
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_follow_up_continues_the_session_without_reading_the_picture_again(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    pictures = one_picture(tmp_path / "pictures")
    config = write_config(tmp_path / "edged.toml", f"""
[cameras.door]
source = "file:{pictures}"
loop = false
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_for_frame(client, "door")
        assert client.status().images_encoded == 0  # no rule needs the frame: not read until asked
        first = client.ask("What is in the picture?", camera="door", session="s1", max_tokens=8)
        assert "".join(first) and first.final.session == "s1"
        follow_up = client.ask("And what colour is it?", session="s1", max_tokens=8)
        assert "".join(follow_up)
        status = client.status()
        assert status.images_encoded == 1  # one picture read once, for both questions
        assert status.sessions == 1
        with pytest.raises(BusError, match="not_found"):
            "".join(client.ask("Hello?", camera="nowhere"))
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    assert list((tmp_path / "run0/state/sessions").glob("*.safetensors"))  # saved at stop


def test_a_flood_of_asks_gets_busy_replies_while_rules_keep_running(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "edged.toml", """
[bus]
queue_limit = 2
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "flip"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 8
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    import zmq

    events = Subscriber(daemon.events, ["edged.rule.front"])
    time.sleep(0.2)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(daemon.control)
    for n in range(10):
        socket.send(json.dumps({"v": 1, "id": f"q{n}", "op": "ask", "question": "Describe everything.",
                                "max_tokens": 64}).encode())
    codes = []
    deadline = time.monotonic() + 60
    while len(codes) < 10 and time.monotonic() < deadline:
        if socket.poll(1000):
            reply = json.loads(socket.recv())
            if not reply["partial"]:
                codes.append("ok" if reply["ok"] else reply["error"]["code"])
    socket.close(linger=0)
    assert codes.count("busy") >= 5 and "ok" in codes
    assert events.receive(timeout=30) is not None  # the rule was still evaluated, frame after frame
    events.close()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_detect_returns_objects_with_boxes_in_frame_pixels(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    pictures = one_picture(tmp_path / "pictures")
    config = write_config(tmp_path / "edged.toml", f"""
[cameras.door]
source = "file:{pictures}"
loop = false
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=60) as client:
        wait_for_frame(client, "door")
        detection = Detection.model_validate(client.call("detect", camera="door"))
    for found in detection.objects:  # the random tiny model may well see nothing
        assert all(0 <= v <= 160 for v in found.box[::2]) and all(0 <= v <= 120 for v in found.box[1::2])
    assert detection.provenance.frame_hash
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_boxes_in_qwen_coordinates_become_frame_pixels() -> None:
    document = '{"objects":[{"label":"person","count":1,"box":[100,250,500,1000]}]}'
    jsonschema.validate(json.loads(document), DETECTION_SCHEMA)
    [person] = objects_in_pixels(document, 640, 480)
    assert (person.label, person.count, person.box) == ("person", 1, [64, 120, 320, 480])
