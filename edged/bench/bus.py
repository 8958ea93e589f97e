"""The bus against raw pyzmq, side by side: publish throughput and request latency."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import zmq

from edged.bus.bus_settings import BusConfig
from edged.bus.schema import Answer, Description, Request, Status
from edged.bus.server import BusServer, Responder
from edged.client import Client

PAYLOAD = "x" * 200


@dataclass
class BusBench:
    messages: int
    publish_msg_s: float
    raw_msg_s: float
    publish_ratio: float
    ask_p50_ms: float
    ask_p99_ms: float


class _InstantAgent:
    def handle(self, request: Request, respond: Responder) -> None:
        respond.final(Answer(request_id=request.id, text="yes"))


# The subscriber runs in a process of its own, as another service would, so it does not
# compete with the publisher for this interpreter's lock. It prints the CLOCK_MONOTONIC time
# (shared by all processes) at which the last event arrived.
_READER = """
import sys, time, zmq
socket = zmq.Context.instance().socket(zmq.SUB)
socket.setsockopt(zmq.RCVHWM, 0)
socket.setsockopt(zmq.SUBSCRIBE, b"")
socket.connect(sys.argv[1])
print("ready", flush=True)
count, received = int(sys.argv[2]), 0
while received < count and socket.poll(10000):
    socket.recv_multipart()
    received += 1
print(time.monotonic() if received == count else "lost", flush=True)
"""


def _rate(endpoint: str, count: int, publish) -> float:
    reader = subprocess.Popen([sys.executable, "-c", _READER, endpoint, str(count)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    reader.stdout.readline()
    time.sleep(0.3)  # let the subscription reach the publisher
    started = time.monotonic()
    publish()
    finished = reader.stdout.readline().strip()
    reader.wait()
    if finished == "lost":
        raise RuntimeError("the subscriber lost events: raise the HWM")
    return count / (float(finished) - started)


def _best_rate(endpoint: str, count: int, publish, repeats: int = 3) -> float:
    return max(_rate(endpoint, count, publish) for _ in range(repeats))


def run_bus_bench(messages: int = 50_000, asks: int = 1000) -> BusBench:
    with tempfile.TemporaryDirectory() as scratch:
        raw_endpoint = f"ipc://{scratch}/raw.sock"
        raw = zmq.Context.instance().socket(zmq.PUB)
        raw.setsockopt(zmq.SNDHWM, 0)
        raw.bind(raw_endpoint)
        envelope = json.dumps({"v": 1, "kind": "description", "seq": 0, "ts": 0.0, "device": "d", "camera": "c",
                               "data": {"text": PAYLOAD}}).encode()

        def raw_publish() -> None:
            for _ in range(messages):
                raw.send_multipart([b"edged.description.c", envelope])

        raw_rate = _best_rate(raw_endpoint, messages, raw_publish)
        raw.close(linger=0)

        config = BusConfig(events=f"ipc://{scratch}/events.sock", control=f"ipc://{scratch}/control.sock",
                           device="bench", status_interval_s=3600, send_hwm=messages * 2, queue_limit=64)
        server = BusServer(config, _InstantAgent(), lambda: Status(uptime_s=0))
        server.start()
        event = Description(text=PAYLOAD)

        def edged_publish() -> None:
            for _ in range(messages):
                server.publish("description", "c", event)

        edged_rate = _best_rate(config.events, messages, edged_publish)
        latencies = []
        with Client(config.control, timeout=10) as client:
            for _ in range(50):
                client.call("ask", question="warm up")
            for _ in range(asks):
                started = time.perf_counter()
                client.call("ask", question="is the gate open?")
                latencies.append((time.perf_counter() - started) * 1000)
        server.stop()
    latencies.sort()
    return BusBench(
        messages=messages, publish_msg_s=round(edged_rate), raw_msg_s=round(raw_rate),
        publish_ratio=round(edged_rate / raw_rate, 2),
        ask_p50_ms=round(latencies[len(latencies) // 2], 3), ask_p99_ms=round(latencies[int(len(latencies) * 0.99)], 3),
    )


def format_table(bench: BusBench) -> str:
    return "\n".join([
        f"edged bench bus: {bench.messages} events of 200 bytes, ipc",
        f"{'':28} {'edged':>10} {'raw pyzmq':>10} {'ratio':>6}  goal",
        f"{'publish msg/s':28} {bench.publish_msg_s:>10} {bench.raw_msg_s:>10} {bench.publish_ratio:>6}  >= 0.7",
        f"{'ask round trip p50, ms':28} {bench.ask_p50_ms:>10}",
        f"{'ask round trip p99, ms':28} {bench.ask_p99_ms:>10} {'':>10} {'':>6}  <= 5",
    ])


def as_json(bench: BusBench) -> str:
    return json.dumps(asdict(bench))


