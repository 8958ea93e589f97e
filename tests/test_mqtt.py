"""The MQTT door against a real Mosquitto broker the tests start (tests/mosquitto.py), watched
and asked by paho as a Home Assistant or a Node-RED would."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import NotifySocket, wait_until, write_config
from mosquitto import USER, Broker, Watcher

from edged.client import Client

DEVICE = "porch"
BASE = f"edged/{DEVICE}"
NODE = f"edged_{DEVICE}"

# What Home Assistant's MQTT platforms require of a discovery payload (homeassistant/components/
# mqtt: binary_sensor and sensor need state_topic, camera needs topic), and what edged promises
# beside them so that HA files each entity under one device and knows when it is unavailable.
HA_REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"}, "camera": {"topic"}}
EDGED_PROMISES = {"name", "unique_id", "device", "availability_topic", "payload_available", "payload_not_available"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()


def mqtt_config(tmp_path: Path, broker: Broker, extra: str = "", tls: bool = True, password_file: Path | None = None,
                rules: str = "") -> Path:
    certs = broker.certificates
    tls_keys = f"""port = {broker.tls_port}
tls_ca_file = "{certs['ca.crt']}"
tls_cert_file = "{certs['client.crt']}"
tls_key_file = "{certs['client.key']}"
""" if tls else f"port = {broker.port}\n"
    return write_config(tmp_path / "edged.toml", f"""
[bus]
device = "{DEVICE}"
status_interval_s = 1.0
[mqtt]
enabled = true
host = "127.0.0.1"
username = "{USER}"
password_file = "{password_file or broker.password_file}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
snapshot_every_s = 0.5
{tls_keys}{extra}
[cameras.front]
source = "synthetic"
fps = 4.0
gate_threshold = 0.0
describe_every_s = 1.0
{rules or '''[[cameras.front.rules]]
id = "anything"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 2'''}
""")


def ask_over_mqtt(watcher: Watcher, request: dict, reply_topic: str | None = None, timeout: float = 60) -> dict:
    """Publish a bus request to <base>/request; with MQTT 5, a response topic and correlation data."""
    if watcher.protocol == MQTTProtocolVersion.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = request["id"].encode()
        watcher.client.publish(f"{BASE}/request", json.dumps(request), qos=1, properties=properties)
    else:
        watcher.client.publish(f"{BASE}/request", json.dumps(request), qos=1)
        reply_topic = f"{BASE}/reply/{request['id']}"
    message = watcher.wait_for(lambda m: m.topic == reply_topic, timeout, f"a reply on {reply_topic}")
    if watcher.protocol == MQTTProtocolVersion.MQTTv5:
        assert message.properties.CorrelationData == request["id"].encode()
    return json.loads(message.payload)


def test_home_assistant_discovers_each_rule_camera_and_figure_and_their_states_follow(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path, broker: Broker
) -> None:
    watcher = Watcher(broker, ["homeassistant/#", f"{BASE}/#", "replies/#"])
    daemon = start_daemon("--config", str(mqtt_config(tmp_path, broker)))
    notify_socket.wait_for("READY", "1")

    rule_config = f"homeassistant/binary_sensor/{NODE}/front_anything/config"
    configs = {
        rule_config: "binary_sensor",
        f"homeassistant/sensor/{NODE}/front_description/config": "sensor",
        f"homeassistant/camera/{NODE}/front/config": "camera",
        f"homeassistant/sensor/{NODE}/tokens_per_s/config": "sensor",
        f"homeassistant/sensor/{NODE}/frame_to_event_ms/config": "sensor",
    }
    for topic, component in configs.items():
        message = watcher.wait_for(lambda m: m.topic == topic and m.payload, what=topic)
        payload = json.loads(message.payload)
        missing = (HA_REQUIRED[component] | EDGED_PROMISES) - payload.keys()
        assert not missing, (topic, missing)
        assert payload["device"]["identifiers"] == [NODE] and payload["availability_topic"] == f"{BASE}/availability"
    assert len({json.loads(watcher.latest(t).payload)["unique_id"] for t in configs}) == len(configs)
    watcher.wait_for(lambda m: m.topic == f"{BASE}/availability" and m.payload == b"online", what="online")

    # The rule's state follows the daemon's: ON once it begins, its attributes from the event.
    rule = json.loads(watcher.latest(rule_config).payload)
    watcher.wait_for(lambda m: m.topic == rule["state_topic"] and m.payload == b"ON", what="the rule ON")
    event = watcher.wait_for(lambda m: m.topic == f"{BASE}/events/rule/front", what="the rule event")
    envelope = json.loads(event.payload)  # the bus envelope, as a ZeroMQ subscriber gets it
    assert envelope["v"] == 1 and envelope["device"] == DEVICE and envelope["data"]["phase"] == "begin"
    wait_until(lambda: watcher.json(rule["json_attributes_topic"]).get("frame_seq") is not None, what="attributes")
    attributes = watcher.json(rule["json_attributes_topic"])
    assert attributes["frame_seq"] == envelope["data"]["provenance"]["frame_seq"] and attributes["model"]
    with Client(daemon.control, timeout=30) as client:
        assert client.call("rules.list", camera="front")["front"][0]["active"] is True

    # The description sensor, the camera entity (JPEG bytes) and the figures read from status.
    description = json.loads(watcher.latest(f"homeassistant/sensor/{NODE}/front_description/config").payload)
    text = watcher.wait_for(lambda m: m.topic == description["state_topic"], what="a description")
    assert 0 < len(text.payload) <= 255
    camera = json.loads(watcher.latest(f"homeassistant/camera/{NODE}/front/config").payload)
    snapshot = watcher.wait_for(lambda m: m.topic == camera["topic"], what="a snapshot")
    assert snapshot.payload[:2] == b"\xff\xd8"  # JPEG
    watcher.wait_for(lambda m: m.topic == f"{BASE}/status"
                     and json.loads(m.payload)["data"]["doors"]["mqtt"]["state"] == "connected", what="status")

    # An ask over MQTT 5 (response topic, correlation data), answered by the same agent as the bus's.
    reply = ask_over_mqtt(watcher, {"v": 1, "id": "q1", "op": "ask", "question": "What is there?", "camera": "front",
                                    "max_tokens": 4}, reply_topic="replies/q1")
    assert reply["ok"] and reply["id"] == "q1" and reply["data"]["provenance"]["frame_seq"] is not None
    malformed = ask_over_mqtt(watcher, {"v": 1, "id": "q2", "op": "ask"}, reply_topic="replies/q2")
    assert not malformed["ok"] and malformed["error"]["code"] == "bad_request"
    # A 3.1.1 client gets its reply on the documented reply topic.
    old = Watcher(broker, [f"{BASE}/reply/#"], protocol=MQTTProtocolVersion.MQTTv311)
    status_reply = ask_over_mqtt(old, {"v": 1, "id": "q3", "op": "status"})
    assert status_reply["ok"] and status_reply["data"]["doors"]["mqtt"]["state"] == "connected"
    old.close()

    # Removing the rule removes its entity: an empty retained config, and its state goes.
    removed = ask_over_mqtt(watcher, {"v": 1, "id": "q4", "op": "rules.set", "camera": "front", "rules": []},
                            reply_topic="replies/q4")
    assert removed["ok"] and removed["data"] == {"front": []}
    watcher.wait_for(lambda m: m.topic == rule_config and m.payload == b"", what="the rule's entity removed")
    watcher.wait_for(lambda m: m.topic == rule["state_topic"] and m.payload == b"", what="the rule's state removed")

    watcher.clear()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    watcher.wait_for(lambda m: m.topic == f"{BASE}/availability" and m.payload == b"offline", what="offline")
    watcher.close()


def test_a_lost_broker_shows_in_status_and_everything_is_sent_again_when_it_is_back(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path, broker: Broker
) -> None:
    daemon = start_daemon("--config", str(mqtt_config(tmp_path, broker, tls=False)))
    notify_socket.wait_for("READY", "1")
    rule_state = f"{BASE}/cameras/front/rules/anything"
    with Client(daemon.control, timeout=30) as client:
        wait_until(lambda: client.status().doors["mqtt"].state == "connected", what="connected")
        broker.stop()
        wait_until(lambda: client.status().doors["mqtt"].state in ("reconnecting", "connecting"), what="reconnecting")
        wait_until(lambda: "refused" in client.status().doors["mqtt"].detail
                   or "lost" in client.status().doors["mqtt"].detail, what="a reason")
        assert client.status().doors["mqtt"].state != "connected"
        broker.start()  # a new broker: no retained messages at all (persistence is off)
        watcher = Watcher(broker, ["homeassistant/#", f"{BASE}/#"])
        wait_until(lambda: client.status().doors["mqtt"].state == "connected", timeout=10, what="connected again")
    # Within the backoff (at most 1 s here): discovery, availability and retained states are back.
    watcher.wait_for(lambda m: m.topic == f"homeassistant/binary_sensor/{NODE}/front_anything/config", 10, "discovery")
    watcher.wait_for(lambda m: m.topic == f"{BASE}/availability" and m.payload == b"online", 10, "online")
    watcher.wait_for(lambda m: m.topic == rule_state and m.payload == b"ON", 10, "the rule's state")

    # A daemon that dies without a word reads offline: the broker sends its last will.
    watcher.clear()
    daemon.send(signal.SIGKILL)
    daemon.wait()
    watcher.wait_for(lambda m: m.topic == f"{BASE}/availability" and m.payload == b"offline", 90, "the last will")
    watcher.close()


def test_a_wrong_password_or_certificate_is_a_clear_state_not_a_crash(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path, broker: Broker
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    daemon = start_daemon("--config", str(mqtt_config(tmp_path, broker, tls=False, password_file=wrong)))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_until(lambda: client.status().doors["mqtt"].state == "refused", what="refused")
        time.sleep(2)  # several attempts later: still serving, still saying why
        door = client.status().doors["mqtt"]
        assert door.state == "refused" and daemon.process.poll() is None
        assert "not authorized" in door.detail.lower() or "bad user name or password" in door.detail.lower()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    assert daemon.log().count("mqtt refused") == 1, daemon.log()[-3000:]  # said once, not once per attempt

    other_ca = Broker(tmp_path / "other").certificates["ca.crt"]  # a CA that did not sign the broker's
    config = mqtt_config(tmp_path, broker, extra="")
    config.write_text(config.read_text().replace(str(broker.certificates["ca.crt"]), str(other_ca)))
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_until(lambda: "certificate" in client.status().doors["mqtt"].detail, what="the certificate named")
        time.sleep(2)  # several attempts later, it still says why
        door = client.status().doors["mqtt"]
        assert door.state == "reconnecting" and "certificate" in door.detail and "tls_ca_file" in door.detail
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_mqtt_keys_are_checked_before_the_daemon_starts(tmp_path: Path, broker: Broker) -> None:
    from conftest import edged

    config = mqtt_config(tmp_path, broker, password_file=tmp_path / "missing.password")
    result = edged("config", "check", "--config", str(config))
    assert result.returncode == 78
    assert "mqtt.password_file" in result.stderr and "does not point to a file" in result.stderr
    bad_topic = write_config(tmp_path / "topic.toml", '[mqtt]\nbase_topic = "edged/#"\n')
    result = edged("config", "check", "--config", str(bad_topic))
    assert result.returncode == 78 and "base_topic" in result.stderr, result.stderr

