"""The HTTP door, spoken to by clients nobody here wrote: the official ``openai`` package,
prometheus-client's own text parser, and plain HTTP (urllib, http.client)."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import httpx2 as httpx  # the HTTP client the openai package is built on
import jsonschema
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import NotifySocket, edged, free_port, wait_until, write_config

from edged.capture.sources.synthetic import synthetic_frame
from edged.client import Client

TOKEN = "test-token-0123456789"


def picture_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "door.png"), cv2.cvtColor(synthetic_frame(40, 160, 120), cv2.COLOR_RGB2BGR))
    return folder


def data_url(seed: int) -> str:
    ok, png = cv2.imencode(".png", cv2.cvtColor(synthetic_frame(seed, 96, 96), cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def http_config(tmp_path: Path, listen: str, camera: str, token: bool = True) -> Path:
    token_file = tmp_path / "http.token"
    token_file.write_text(TOKEN + "\n")
    return write_config(tmp_path / "edged.toml", f"""
[bus]
status_interval_s = 1.0
[http]
enabled = true
listen = "{listen}"
{f'token_file = "{token_file}"' if token else ''}
{camera}
""")


def get(url: str, token: str | None = TOKEN) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def images_encoded(base: str) -> int:
    return json.loads(get(f"{base}/api/status")[2])["images_encoded"]


def test_openai_client_asks_about_text_pictures_and_cameras_and_follow_ups_read_no_picture_again(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    port = free_port()
    pictures = picture_file(tmp_path / "pictures")
    config = http_config(tmp_path, f"127.0.0.1:{port}", f'[cameras.door]\nsource = "file:{pictures}"\nloop = false')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)

    models = [model.id for model in client.models.list()]
    assert models[0] == "edged-tiny-vl-fp32" and "edged" in models

    text = client.chat.completions.create(model="edged", messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=6)
    assert text.choices[0].message.role == "assistant" and text.choices[0].message.content
    assert text.choices[0].finish_reason in ("stop", "length") and text.usage.completion_tokens <= 6
    assert images_encoded(base) == 0  # a text question reads no picture
    said = text.choices[0].message.content
    stop = said[len(said) // 2:][:3]  # a piece from the middle of the answer ends it there
    stopped = client.chat.completions.create(model="edged", messages=[{"role": "user", "content": "Say hello."}],
                                             max_tokens=6, stop=[stop])
    assert stopped.choices[0].message.content == said[:said.index(stop)].strip()
    assert stopped.choices[0].finish_reason == "stop"

    # Streaming gives the same answer in pieces (greedy decoding), then the usage.
    chunks = list(client.chat.completions.create(
        model="edged", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text.choices[0].message.content and len([c for c in chunks if c.choices]) > 2
    assert chunks[-1].usage.completion_tokens == text.usage.completion_tokens

    # A picture in the message; then the follow-up, as OpenAI clients send it: the whole
    # conversation again. The picture and the first turn are not read again.
    first_turn = {"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                              {"type": "image_url", "image_url": {"url": data_url(7)}}]}
    answer = client.chat.completions.create(model="edged", messages=[first_turn], max_tokens=8)
    assert images_encoded(base) == 1
    follow_up = client.chat.completions.create(model="edged", max_tokens=8, messages=[
        first_turn, {"role": "assistant", "content": answer.choices[0].message.content},
        {"role": "user", "content": "And what colour is it?"}])
    assert follow_up.choices[0].message.content
    assert images_encoded(base) == 1  # the counter shows it: one picture read, for both questions
    assert follow_up.usage.prompt_tokens > answer.usage.prompt_tokens + answer.usage.completion_tokens

    # Without the remembered state (dropped here over the bus), the same messages are read
    # again, picture and all, and give the same answer: remembering is only a shortcut.
    with Client(daemon.control, timeout=30) as bus:
        assert bus.call("sessions.drop", session=answer.model_extra["edged"]["session"])["dropped"]
    again = client.chat.completions.create(model="edged", max_tokens=8, messages=[
        first_turn, {"role": "assistant", "content": answer.choices[0].message.content},
        {"role": "user", "content": "And what colour is it?"}])
    assert again.choices[0].message.content == follow_up.choices[0].message.content
    assert again.usage.prompt_tokens == follow_up.usage.prompt_tokens
    assert images_encoded(base) == 2

    # A camera's frame, named as docs/integrations.md says; a JSON schema holds the answer.
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"],
              "additionalProperties": False}
    counted = client.chat.completions.create(model="edged", max_tokens=24, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "edged://cameras/door/latest"}},
        {"type": "text", "text": "How many things are there?"}]}],
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}})
    jsonschema.validate(json.loads(counted.choices[0].message.content), schema)
    assert images_encoded(base) == 3

    with pytest.raises(openai.NotFoundError, match="no camera back; cameras: door"):
        client.chat.completions.create(model="edged", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "edged://cameras/back/latest"}}, {"type": "text", "text": "?"}]}])
    with pytest.raises(openai.NotFoundError, match="no model 'gpt-4o'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="one picture per conversation"):
        client.chat.completions.create(model="edged", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(1)}},
            {"type": "image_url", "image_url": {"url": data_url(2)}}, {"type": "text", "text": "?"}]}])
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_metrics_snapshots_and_events_over_plain_http(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    port = free_port()
    config = http_config(tmp_path, f"127.0.0.1:{port}", """
[agent]
frames_kept = 64
[cameras.front]
source = "synthetic"
fps = 4.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "anything"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 3
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    base = f"http://127.0.0.1:{port}"

    # Events as server-sent events: the bus's envelope, valid against `edged schema`.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/api/events?kinds=rule", headers={"Authorization": f"Bearer {TOKEN}"})
    stream = connection.getresponse()
    assert stream.status == 200 and stream.getheader("Content-Type") == "text/event-stream"
    lines = []
    while not lines or lines[-1].strip():
        line = stream.readline().decode()
        if line.startswith(("event:", "data:")) or (lines and not line.strip()):
            lines.append(line)
    connection.close()
    assert lines[0] == "event: rule\n"
    envelope = json.loads(lines[1][len("data: "):])
    jsonschema.validate(envelope, json.loads(edged("schema").stdout)["event"])
    seq = envelope["data"]["provenance"]["frame_seq"]

    # The frame that event was about, by its seq, and the newest, drawn.
    status, headers, body = get(f"{base}/api/cameras/front/frames/{seq}.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["X-Edged-Frame-Seq"] == str(seq)
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
    status, headers, _ = get(f"{base}/api/cameras/front/latest.jpg")
    assert status == 200 and int(headers["X-Edged-Frame-Seq"]) >= seq
    assert get(f"{base}/api/cameras/front/frames/99999999.jpg")[0] == 404

    # /metrics, read by prometheus-client's own parser.
    wait_until(lambda: b'edged_capture_to_event_seconds_count{kind="rule"}' in get(f"{base}/metrics")[2],
               what="an event's latency observed")
    status, headers, body = get(f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert families["edged_capture_to_event_seconds"].type == "histogram"
    assert samples[("edged_capture_to_event_seconds_count", (("kind", "rule"),))] >= 1
    assert samples[("edged_frames_total", (("camera", "front"),))] >= 3  # at least the three the rule began on
    assert ("edged_frames_dropped_total", (("camera", "front"),)) in samples
    assert samples[("edged_camera_state", (("camera", "front"), ("edged_camera_state", "online")))] == 1
    assert 0 <= samples[("edged_rule_probability", (("camera", "front"), ("rule", "anything")))] <= 1
    assert samples[("edged_rule_active", (("camera", "front"), ("rule", "anything")))] == 1
    assert samples[("edged_model_info", (("execution_provider", "CPUExecutionProvider"), ("model", "edged-tiny-vl-fp32")))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 50 << 20
    assert "edged_jobs_dropped" in families and "edged_tokens_per_second" in families
    assert samples[("edged_inference_seconds_total", (("kind", "rules"),))] > 0  # the rule's evaluations took time
    assert "edged_time_to_first_token_seconds" in families
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_bad_requests_get_a_clear_4xx_and_the_daemon_keeps_serving_on_a_unix_socket(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    sock = tmp_path / "run" / "http.sock"
    pictures = picture_file(tmp_path / "pictures")
    config = http_config(tmp_path, f"unix:{sock}", f'[cameras.door]\nsource = "file:{pictures}"\nloop = false')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")

    def over_socket(token: str | None = TOKEN) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://edged",
                            headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)

    with over_socket() as web:
        assert web.get("/api/status").status_code == 200
        client = openai.OpenAI(base_url="http://edged/v1", api_key="wrong", http_client=over_socket(None), max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="bearer token"):
            client.chat.completions.create(model="edged", messages=[{"role": "user", "content": "Hi"}])
        nobody = over_socket(None).get("/api/status")
        assert nobody.status_code == 401 and nobody.headers["WWW-Authenticate"].startswith("Bearer")
        assert over_socket(None).get("/metrics").status_code == 401

        malformed = web.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
        wrong_shape = web.post("/v1/chat/completions", json={"model": "edged", "messages": "hello"})
        assert wrong_shape.status_code == 400 and "messages" in wrong_shape.json()["error"]["message"]
        huge = web.post("/v1/chat/completions", content=b"x" * (50 << 20), headers={"Content-Type": "application/json"})
        assert huge.status_code == 413 and "max_body_mb" in huge.json()["error"]["message"]
        unknown = web.get("/api/cameras/back/latest.jpg")
        assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "no camera back; cameras: door"
        assert web.get("/api/nothing/here").status_code == 404

        # Unharmed: it still answers, over HTTP and over the bus.
        good = openai.OpenAI(base_url="http://edged/v1", api_key=TOKEN, http_client=over_socket(), max_retries=0)
        assert good.chat.completions.create(model="edged", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert web.get("/api/status").json()["doors"]["http"]["state"] == "listening"
    assert edged("status", env={"EDGED_BUS__CONTROL": daemon.control}).returncode == 0
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_an_address_in_use_stops_the_start_with_what_to_change(start_daemon, notify_socket: NotifySocket,
                                                               tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = http_config(tmp_path, f"127.0.0.1:{port}", "", token=False)
        daemon = start_daemon("--config", str(config))
        assert daemon.wait(60) == 78
    assert f"cannot listen on 127.0.0.1:{port}" in daemon.log() and "[http] listen" in daemon.log()
