"""The doors beyond the bus against what a user would write instead, side by side: events
published to an MQTT broker through edged's MQTT door against raw paho on the same broker, and
the HTTP door's ask round trip (OpenAI chat completion) with an agent that answers at once."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edged.bus.bus_settings import BusConfig
from edged.bus.schema import Answer, DetectedObject, Detection, Request, Status
from edged.bus.server import BusServer, Respond
from edged.http.http_settings import HttpConfig
from edged.mqtt.mqtt_settings import MqttConfig
from edged.parts import ProgressMonitor

LABEL = "x" * 150  # a detection event of about 200 bytes of data, as the bus bench's


@dataclass
class IntegrationsBench:
    messages: int
    broker: str
    mqtt_msg_s: float
    raw_paho_msg_s: float
    mqtt_ratio: float
    http_asks: int
    http_ask_p50_ms: float
    http_ask_p99_ms: float


class _InstantAgent:
    def handle(self, request: Request, respond: Respond) -> None:
        respond.final(Answer(request_id=request.id, text="yes", finish_reason="stop", prompt_tokens=1,
                             completion_tokens=1))


# The subscriber runs in a process of its own, as Home Assistant would, so it does not compete
# with the publisher for this interpreter's lock. It prints the CLOCK_MONOTONIC time (shared by
# all processes) at which the last message arrived, and how many arrived.
_READER = """
import sys, time, threading
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
received, last, done = 0, 0.0, threading.Event()
def on_message(client, userdata, message):
    global received, last
    received += 1
    last = time.monotonic()
    if received == count:
        done.set()
client = paho.Client(CallbackAPIVersion.VERSION2)
client.on_message = on_message
client.on_subscribe = lambda *args: print("ready", flush=True)
client.on_connect = lambda client, *args: client.subscribe(topic, qos=0)
client.connect(host, port)
client.loop_start()
while not done.wait(3.0):
    if received and time.monotonic() - last > 3.0:
        break
print(last, received, flush=True)
"""


def _rate(host: str, port: int, topic: str, count: int, publish) -> float:
    reader = subprocess.Popen([sys.executable, "-c", _READER, host, str(port), topic, str(count)],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    reader.stdout.readline()
    started = time.monotonic()
    publish()
    last, received = reader.stdout.readline().split()
    reader.wait()
    if int(received) < count:
        raise RuntimeError(f"the subscriber got {received} of {count} messages: the broker dropped some")
    return count / (float(last) - started)


class _PrivateBroker:
    """Debian's mosquitto on a free port, for the run."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise RuntimeError("no mosquitto here: install it (apt install mosquitto) or give --broker HOST:PORT")
        self.port = _free_port()
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                          "max_queued_messages 0\nlog_dest none\n")
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def run_integrations_bench(messages: int = 50_000, asks: int = 1000, broker: str | None = None,
                           repeats: int = 5) -> IntegrationsBench:
    from edged.bus.local import LocalBus
    from edged.http.http_part import HttpPart
    from edged.mqtt.mqtt_part import MqttPart

    with tempfile.TemporaryDirectory() as scratch:
        private = _PrivateBroker(Path(scratch)) if broker is None else None
        host, port = ("127.0.0.1", private.port) if private else (broker.rpartition(":")[0], int(broker.rpartition(":")[2]))
        try:
            raw_topic = "bench/raw/detection"
            raw = paho.Client(CallbackAPIVersion.VERSION2)
            raw.connect(host, port)
            raw.loop_start()
            payload = json.dumps({"v": 1, "kind": "detection", "seq": 0, "ts": 0.0, "device": "bench", "camera": "c",
                                  "data": Detection(objects=[DetectedObject(label=LABEL)]).model_dump()})

            def raw_publish() -> None:
                for _ in range(messages):
                    raw.publish(raw_topic, payload, qos=0)

            bus = BusConfig(events=f"ipc://{scratch}/events.sock", control=f"ipc://{scratch}/control.sock",
                            device="bench", status_interval_s=3600, send_hwm=messages * 2, queue_limit=64)
            settings = SimpleNamespace(bus=bus, mqtt=MqttConfig(enabled=True, host=host, port=port, discovery=False,
                                                                 snapshot_every_s=0),
                                       http=HttpConfig(enabled=True, listen=f"127.0.0.1:{_free_port()}"))
            server = BusServer(bus, _InstantAgent(), lambda: Status(uptime_s=0, model="bench"))
            local = LocalBus(server, _InstantAgent(), lambda: Status(uptime_s=0, model="bench"))
            monitor = ProgressMonitor()
            mqtt = MqttPart(settings, monitor, local)
            server.start()
            mqtt.start()
            deadline = time.monotonic() + 10
            while mqtt.state.state != "connected":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"edged's MQTT door did not connect: {mqtt.state.detail}")
                time.sleep(0.05)
            event = Detection(objects=[DetectedObject(label=LABEL)])

            def edged_publish() -> None:
                for _ in range(messages):
                    server.publish("detection", "c", event)

            # Turn about, so that both sides meet the same moments of a noisy machine; the best of each counts.
            raw_rates, edged_rates = [], []
            for _ in range(repeats):
                raw_rates.append(_rate(host, port, raw_topic, messages, raw_publish))
                edged_rates.append(_rate(host, port, mqtt.topics.event("detection", "c"), messages, edged_publish))
            raw_rate, edged_rate = max(raw_rates), max(edged_rates)
            raw.loop_stop()
            raw.disconnect()
            mqtt.stop(time.monotonic() + 5)
            web = HttpPart(settings, monitor, local)  # alone: each door is measured on its own
            web.start()
            latencies = _http_asks(*settings.http.host_port, asks)
            web.stop(time.monotonic() + 5)
            server.stop()
        finally:
            if private:
                private.stop()
    latencies.sort()
    return IntegrationsBench(
        messages=messages, broker=f"{host}:{port}" + (" (mosquitto, started for the run)" if private else ""),
        mqtt_msg_s=round(edged_rate), raw_paho_msg_s=round(raw_rate), mqtt_ratio=round(edged_rate / raw_rate, 2),
        http_asks=asks, http_ask_p50_ms=round(latencies[len(latencies) // 2], 3),
        http_ask_p99_ms=round(latencies[int(len(latencies) * 0.99)], 3))


def _http_asks(host: str, port: int, asks: int) -> list[float]:
    """Chat completions over one kept-alive connection, as an OpenAI client sends them."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    body = json.dumps({"model": "edged", "messages": [{"role": "user", "content": "Is the gate open?"}],
                       "max_tokens": 4})
    latencies = []
    for n in range(50 + asks):
        started = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the HTTP door answered {response.status}")
        if n >= 50:  # after warming up
            latencies.append((time.perf_counter() - started) * 1000)
    connection.close()
    return latencies


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def format_table(bench: IntegrationsBench) -> str:
    return "\n".join([
        f"edged bench integrations: {bench.messages} detection events of about 200 bytes, QoS 0, broker {bench.broker}",
        f"{'':30} {'edged':>10} {'raw paho':>10} {'ratio':>6}  goal",
        f"{'MQTT publish msg/s':30} {bench.mqtt_msg_s:>10} {bench.raw_paho_msg_s:>10} {bench.mqtt_ratio:>6}  >= 0.7",
        f"{'HTTP ask round trip p50, ms':30} {bench.http_ask_p50_ms:>10}",
        f"{'HTTP ask round trip p99, ms':30} {bench.http_ask_p99_ms:>10} {'':>10} {'':>6}  <= 10",
        f"({bench.http_asks} chat completions over one connection, with an agent that answers at once: the door's "
        "own cost, without the model)",
    ])


def as_json(bench: IntegrationsBench) -> str:
    return json.dumps(asdict(bench))
