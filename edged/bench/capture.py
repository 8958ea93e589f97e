"""Capture cost: frames/s and CPU per camera, and the idle cost of watching a still scene."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from edged.capture.camera import CameraCapture
from edged.capture.camera_settings import CaptureConfig


OPEN_TIMEOUT_S = 60.0


@dataclass
class CaptureRun:
    source: str
    size: str
    frames_per_s: float
    cpu_percent_of_one_core: float
    passed_gate: int


def measure(name: str, source: str, width: int, height: int, seconds: float, **config) -> CaptureRun:
    camera = CameraCapture("bench", CaptureConfig(**{"source": source, "width": width, "height": height, "fps": 1000, **config}))
    camera.start()
    # Past opening the device and the first frames: waited for, since the first GStreamer
    # pipeline after installing plugins also rebuilds GStreamer's registry (seconds).
    opened = time.monotonic() + OPEN_TIMEOUT_S
    while camera.frames_read < 2 and time.monotonic() < opened:
        camera.mailbox.take(timeout=0.05)
    read0, cpu0, wall0 = camera.frames_read, time.process_time(), time.monotonic()
    deadline = wall0 + seconds
    while time.monotonic() < deadline:
        camera.mailbox.take(timeout=0.05)  # a consumer as fast as the model could ever be
    frames, cpu, wall = camera.frames_read - read0, time.process_time() - cpu0, time.monotonic() - wall0
    passed = camera.pipeline.passed
    camera.stop()
    return CaptureRun(name, f"{width}x{height}", round(frames / wall, 1), round(100 * cpu / wall, 1), passed)


def run_capture_bench(seconds: float = 3.0) -> list[CaptureRun]:
    runs = []
    for width, height in ((640, 480), (1280, 720)):
        runs.append(measure("synthetic", "synthetic", width, height, seconds, realtime=False))
        runs.append(measure("gstreamer videotestsrc", f"gst:videotestsrc ! video/x-raw,width={width},height={height}",
                            width, height, seconds))
    runs.append(measure("idle: still scene, live 30 fps", "gst:videotestsrc is-live=true pattern=solid-color ! "
                        "video/x-raw,width=640,height=480,framerate=30/1", 640, 480, seconds, fps=1.0))
    return runs


def format_table(runs: list[CaptureRun]) -> str:
    lines = ["edged bench capture (CPU is this process's, all threads, as % of one core)",
             f"{'source':34} {'size':>10} {'frames/s':>9} {'CPU %':>7} {'to model':>9}"]
    lines += [f"{r.source:34} {r.size:>10} {r.frames_per_s:>9} {r.cpu_percent_of_one_core:>7} {r.passed_gate:>9}"
              for r in runs]
    lines.append("goal: the idle camera at most 5% of one core")
    return "\n".join(lines)


def as_json(runs: list[CaptureRun]) -> str:
    return json.dumps([asdict(r) for r in runs])
