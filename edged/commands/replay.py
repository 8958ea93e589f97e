"""``edged replay CLIP``: run a camera's rules and tasks over a recorded clip and print the events."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edged.agent.replay import ReplayEvent, ReplaySummary, clip_frames, replay
from edged.capture.frame import Frame

PROGRESS_EVERY_S = 5.0


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
    from edged.agent.tasks import FrameTasks, load_engine
    from edged.capture.sources import SourceError
    from edged.commands.options import settings_and_model

    settings, package = settings_and_model(args)
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
    engine = load_engine(package, settings.model)
    tasks = FrameTasks(engine, settings.agent.system_prompt, rules_per_batch=settings.model.rules_per_batch)
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
