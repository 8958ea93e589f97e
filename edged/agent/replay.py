"""``edged replay CLIP``: a camera's rules, detections and descriptions over a recorded clip,
as the daemon would run them, so a user can regression-test rules before deploying them.

The clip's own timeline is the clock: the camera's FPS cap, change gate, rule cooldowns and
``*_every_s`` periods count clip seconds, and every frame is read (none is dropped for being
late), so replaying a clip twice gives the same events however fast the machine is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from edged.agent.rules import RuleTracker
from edged.bus.schema import RuleEvent
from edged.capture.config import CameraConfig
from edged.capture.frame import Frame
from edged.capture.sampler import FramePipeline

if TYPE_CHECKING:  # the engine (onnxruntime) is imported only when a replay runs: `edged --help` stays light
    from edged.agent.tasks import FrameTasks, ReadFrame

PROGRESS_EVERY_S = 5.0


@dataclass
class ReplayEvent:
    clip_s: float
    kind: str
    camera: str
    data: BaseModel
    inference_ms: float
    """From the start of the frame's inference to this event."""

    def as_json(self) -> str:
        return json.dumps({"clip_s": self.clip_s, "kind": self.kind, "camera": self.camera,
                           "data": self.data.model_dump(mode="json"), "inference_ms": self.inference_ms})

    def as_line(self) -> str:
        data = self.data
        if isinstance(data, RuleEvent):
            what = f"rule {data.rule} {data.phase} p={data.probability:.3f}"
        elif self.kind == "detection":
            what = "detection " + (", ".join(f"{o.label} x{o.count} {o.box}" for o in data.objects) or "nothing")  # type: ignore[attr-defined]
        else:
            what = f"description {json.dumps(data.text)}"  # type: ignore[attr-defined]
        seq = data.provenance.frame_seq  # type: ignore[attr-defined]
        return f"{self.clip_s:9.2f} s  {what}  (frame {seq}, {self.inference_ms:.0f} ms)"


@dataclass
class ReplaySummary:
    model_frames: int = 0
    events: int = 0
    inference_s: float = 0.0


def clip_frames(clip: Path, camera: str, config: CameraConfig) -> Iterator[Frame]:
    """The clip's frames that pass the camera's masks, FPS cap and change gate, stamped with
    clip time."""
    from edged.capture.sources import SourceEnded
    from edged.capture.sources.file import FileSource

    source = FileSource(str(clip), realtime=False, loop=False)
    source.open()
    pipeline = FramePipeline(config)
    index = 0
    try:
        while True:
            try:
                rgb = source.read(timeout=1.0)
            except SourceEnded:
                return
            if rgb is None:
                continue
            clip_s = round(index * source.interval, 3)
            model_frame = pipeline.process(rgb, clip_s)
            if model_frame is not None:
                yield Frame(rgb=model_frame, camera=camera, seq=index, monotonic=clip_s, wall=clip_s)
            index += 1
    finally:
        source.close()


def replay(frames: Iterator[Frame], tasks: FrameTasks, config: CameraConfig,
           emit: Callable[[ReplayEvent], None], summary: ReplaySummary) -> None:
    trackers = [RuleTracker(rule) for rule in config.rules]
    last = {"detect": float("-inf"), "describe": float("-inf")}
    for frame in frames:
        summary.model_frames += 1
        clip_s = frame.monotonic
        started = time.perf_counter()
        read: ReadFrame | None = None

        def event(kind: str, data: BaseModel) -> None:
            summary.events += 1
            emit(ReplayEvent(clip_s, kind, frame.camera, data, round((time.perf_counter() - started) * 1000, 1)))

        for tracker in trackers:
            read = read or tasks.read(frame)
            rule_event = tasks.evaluate_rule(read, tracker)
            if rule_event is not None:
                event("rule", rule_event)
        if config.detect_every_s and clip_s - last["detect"] >= config.detect_every_s:
            last["detect"] = clip_s
            read = read or tasks.read(frame)
            event("detection", tasks.detect(read))
        if config.describe_every_s and clip_s - last["describe"] >= config.describe_every_s:
            last["describe"] = clip_s
            read = read or tasks.read(frame)
            event("description", tasks.describe(read))
        summary.inference_s += time.perf_counter() - started


# -- the command ---------------------------------------------------------------------------


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "replay", parents=[config_options], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run a camera's rules and tasks over a recorded clip and print the events",
        description="Run one camera's rules, detections and descriptions (from the config) over a recorded\n"
        "clip, with the daemon's model, prompt, masks, FPS cap and change gate, and print each event\n"
        "with its clip time and inference time. Clip time is the clock, so the same clip and config\n"
        "give the same events every time: use it to regression-test rules before deploying them.",
        epilog="examples:\n  edged replay door.mp4 --config /etc/edged/edged.toml --camera front\n"
        "  edged replay frames/ --config rules.toml --json > events.jsonl   # a folder of images, 5 per second\n\n"
        "exit status: 0 done, 1 the clip cannot be read, 2 no such camera, 78 invalid configuration",
    )
    command.add_argument("clip", type=Path, metavar="CLIP", help="a video file or a folder of images")
    command.add_argument("--camera", help="whose rules and tasks (default: the config's only camera)")
    command.add_argument("--json", action="store_true", dest="as_json",
                         help="one JSON object per event: clip_s, kind, camera, data, inference_ms")
    command.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from edged.agent.tasks import FrameTasks
    from edged.capture.sources import SourceError
    from edged.cli import settings_and_model
    from edged.engine.engine import Engine

    loaded = settings_and_model(args)
    if isinstance(loaded, int):
        return loaded
    settings, package = loaded
    cameras = settings.cameras
    name = args.camera or (next(iter(cameras)) if len(cameras) == 1 else None)
    if name not in cameras:
        known = ", ".join(cameras) or "none configured"
        print(f"edged replay: {'choose one with --camera' if name is None else f'no camera {name!r}'} (cameras: {known})",
              file=sys.stderr)
        return 2
    config = cameras[name]
    if not (config.rules or config.detect_every_s or config.describe_every_s):
        print(f"edged replay: camera {name!r} has no rules, detect_every_s or describe_every_s: nothing to run",
              file=sys.stderr)
        return 2
    engine = Engine(package, threads=settings.model.threads, max_length=settings.model.max_length)
    tasks = FrameTasks(engine, settings.agent.system_prompt)
    summary = ReplaySummary()
    next_progress = time.monotonic() + PROGRESS_EVERY_S

    def emit(event: ReplayEvent) -> None:
        print(event.as_json() if args.as_json else event.as_line(), flush=True)

    def counted(frames: Iterator[Frame]) -> Iterator[Frame]:
        nonlocal next_progress
        for frame in frames:
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY_S
                print(f"edged replay: {frame.monotonic:.1f} s of clip, {summary.model_frames} frames read, "
                      f"{summary.events} events", file=sys.stderr)
            yield frame

    started = time.monotonic()
    try:
        replay(counted(clip_frames(args.clip, name, config)), tasks, config, emit, summary)
    except SourceError as error:
        print(f"edged replay: {error}", file=sys.stderr)
        return 1
    per_frame = summary.inference_s / summary.model_frames * 1000 if summary.model_frames else 0.0
    print(f"edged replay: {args.clip}: {summary.model_frames} frames to the model, {summary.events} events, "
          f"{per_frame:.0f} ms per frame, {time.monotonic() - started:.1f} s in all (model {engine.manifest.name})",
          file=sys.stderr)
    return 0
