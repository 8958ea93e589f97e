"""``edged replay CLIP``: a camera's rules, detections and descriptions over a recorded clip,
as the daemon would run them, so a user can regression-test rules before deploying them.

The clip's own timeline is the clock: the camera's FPS cap, change gate, rule cooldowns and
``*_every_s`` periods count clip seconds, and every frame is read (none is dropped for being
late), so replaying a clip twice gives the same events however fast the machine is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from edged.agent.rules import RuleTracker
from edged.bus.schema import RuleEvent
from edged.agent.agent_settings import CameraTasksConfig
from edged.agent.frame_policy import TaskPeriods
from edged.capture.camera_settings import CaptureConfig
from edged.capture.frame import Frame
from edged.capture.sampler import FramePipeline

if TYPE_CHECKING:  # the engine (onnxruntime) is imported only when a replay runs: `edged --help` stays light
    from edged.agent.tasks import FrameTasks, ReadFrame

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


def clip_frames(clip: Path, camera: str, config: CaptureConfig) -> Iterator[Frame]:
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


def replay(frames: Iterator[Frame], tasks: FrameTasks, config: CameraTasksConfig,
           emit: Callable[[ReplayEvent], None], summary: ReplaySummary) -> None:
    trackers = [RuleTracker(rule) for rule in config.rules]
    periods = TaskPeriods()
    for frame in frames:
        summary.model_frames += 1
        clip_s = frame.monotonic
        started = time.perf_counter()
        read: ReadFrame | None = None

        def event(kind: str, data: BaseModel) -> None:
            summary.events += 1
            emit(ReplayEvent(clip_s, kind, frame.camera, data, round((time.perf_counter() - started) * 1000, 1)))

        if trackers:
            read = tasks.read(frame)
            for rule_event in tasks.evaluate_rules(read, trackers):
                event("rule", rule_event)
        for task in periods.due(frame.camera, config, clip_s):
            periods.ran(frame.camera, task, clip_s)
            read = read or tasks.read(frame)
            if task == "detect":
                event("detection", tasks.detect(read))
            else:
                event("description", tasks.describe(read))
        summary.inference_s += time.perf_counter() - started
