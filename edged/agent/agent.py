"""The agent: one inference thread owns the engine and every state, and serves, in order of
priority, questions from the bus, then the rules of each new frame, then descriptions.

Each frame is read once: the system prompt's state (a saved prefix) is forked and extended
with the image, and every rule and question about that frame forks the result. A rule
needs no generation: its probability is P(yes) from the logits after its question.
"""

from __future__ import annotations

import itertools
import json
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from pydantic import BaseModel

from edged.agent.rules import RuleTracker
from edged.bus.schema import Answer, Description, DetectedObject, Detection, Provenance, Request, RuleEvent
from edged.bus.server import Responder
from edged.capture.frame import Frame
from edged.capture.part import CapturePart
from edged.config import Settings
from edged.engine.engine import Engine, EngineError, GenerationOptions
from edged.engine.state import State
from edged.engine.store import PrefixStore, SessionStore
from edged.models.installed import choose_model
from edged.parts import ProgressMonitor

log = structlog.get_logger()

USER_IMAGE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
ANSWER = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
ASK, RULES, DESCRIBE = 0, 1, 3


@dataclass
class _FrameState:
    frame: Frame
    state: State
    provenance: Provenance


@dataclass(order=True)
class _Job:
    priority: int
    order: int
    run: Callable[[], None] = field(compare=False)


class AgentPart:
    name = "agent"

    def __init__(self, settings: Settings, monitor: ProgressMonitor, capture: CapturePart) -> None:
        self._settings = settings
        self._capture = capture
        self._pulse = monitor.register(self.name)
        self._beat_every = monitor.beat_every
        self.publish: Callable[[str, str | None, BaseModel], None] = lambda kind, camera, data: None
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._order = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._frames: dict[str, _FrameState] = {}
        self._trackers = {name: [RuleTracker(rule) for rule in camera.rules]
                          for name, camera in settings.cameras.items()}
        self._last_description: dict[str, float] = {}
        self._last_detection: dict[str, float] = {}
        self.engine: Engine | None = None
        self.figures: dict[str, Any] = {"tokens_per_s": None, "ttft_ms": None, "frame_to_event_ms": None}

    # -- the lifecycle (main thread) -------------------------------------------------------

    def start(self) -> None:
        model = self._settings.model
        choice = choose_model(model)
        self.engine = Engine(choice.path, threads=model.threads, max_length=model.max_length)
        state_dir = self._settings.state.dir
        self._prefixes = PrefixStore(state_dir, self.engine.fingerprint)
        self._sessions = SessionStore(state_dir, self.engine.fingerprint, self._settings.state.budget_mb << 20)
        system = f"<|im_start|>system\n{self._settings.agent.system_prompt}<|im_end|>\n"
        tokens = self.engine.encode(system)
        self._prefix = self._prefixes.get(tokens)
        if self._prefix is None:
            self._prefix = self.engine.new_state()
            self.engine.extend(self._prefix, tokens)
            self._save_prefix(tokens)
        yes = [self.engine.encode(w)[0] for w in ("Yes", "yes", " Yes", " yes")]
        no = [self.engine.encode(w)[0] for w in ("No", "no", " No", " no")]
        self._yes, self._no = sorted(set(yes)), sorted(set(no) - set(yes))
        log.info("agent ready", model=choice.path.name, cameras=len(self._trackers))
        self._thread.start()

    def _save_prefix(self, tokens: list[int]) -> None:
        try:
            self._prefixes.put(tokens, self._prefix)
        except OSError as error:  # a read-only or missing state dir costs a warm start, nothing else
            log.warning("prefix state not saved", reason=str(error))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        try:
            saved = self._sessions.save_all()
            if saved:
                log.info("sessions saved", count=saved)
        except OSError as error:
            log.warning("sessions not saved", reason=str(error))

    def apply(self, settings: Settings) -> None:
        if settings.cameras != self._settings.cameras or settings.agent != self._settings.agent:
            log.warning("camera, rule and agent settings take effect at the next restart")

    def describe(self) -> str:
        return f"model {self.engine.manifest.name if self.engine else '-'}, {self._jobs.qsize()} jobs queued"

    # -- requests (bus thread) -------------------------------------------------------------

    def handle(self, request: Request, respond: Responder) -> None:
        op = request.op
        if op == "rules.list":
            rules = {name: [t.rule.model_dump() | {"version": t.rule.version, "active": t.active,
                                                   "probability": t.probability} for t in trackers]
                     for name, trackers in self._trackers.items()
                     if request.camera in (None, name)}  # type: ignore[union-attr]
            respond.final(rules)
        elif op == "ask":
            self._jobs.put(_Job(ASK, next(self._order), lambda: self._ask(request, respond)))
        elif op == "describe":
            self._jobs.put(_Job(ASK, next(self._order), lambda: self._describe_now(request, respond)))
        elif op == "detect":
            self._jobs.put(_Job(ASK, next(self._order), lambda: self._detect_now(request, respond)))
        elif op == "sessions.drop":
            self._jobs.put(_Job(ASK, next(self._order), lambda: respond.final({"dropped": self._sessions.drop(request.session)})))  # type: ignore[union-attr]
        else:
            respond.error("unavailable", f"'{op}' is not served by this version of the agent")

    def status_figures(self) -> dict[str, Any]:
        encoded = self.engine.counters.images_encoded if self.engine else None
        sessions = len(self._sessions) if self.engine else None
        model = self.engine.manifest.name if self.engine else None
        return {"queue_depth": self._jobs.qsize(), "model": model, "images_encoded": encoded, "sessions": sessions,
                **self.figures}

    # -- the inference thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pulse.beat()
            try:
                job = self._jobs.get(timeout=0.02)
            except queue.Empty:
                job = None
            if job is not None:
                self._safely(job.run)
                continue
            for camera in self._capture.cameras.values():
                frame = camera.mailbox.take(timeout=0)
                if frame is not None:
                    self._safely(self._on_frame, frame)

    def _safely(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception:  # one bad job must not stop inference
            log.exception("inference job failed")

    def _read_frame(self, frame: Frame) -> _FrameState:
        engine = self.engine
        state = self._prefix.fork()
        engine.extend_prompt(state, USER_IMAGE, [frame.rgb])  # type: ignore[union-attr]
        provenance = Provenance(frame_seq=frame.seq, frame_ts=round(frame.wall, 3), frame_hash=frame.hash,
                                model=engine.fingerprint[:16])  # type: ignore[union-attr]
        read = _FrameState(frame, state, provenance)
        self._frames[frame.camera] = read
        return read

    def _on_frame(self, frame: Frame) -> None:
        read = self._read_frame(frame)
        for tracker in self._trackers.get(frame.camera, []):
            branch = read.state.fork()
            logits = self.engine.extend_prompt(branch, f"{tracker.rule.when}? Answer yes or no.{ANSWER}")  # type: ignore[union-attr]
            probability = self._p_yes(logits)
            phase = tracker.update(probability, time.monotonic())
            if phase is not None:
                self.figures["frame_to_event_ms"] = round((time.monotonic() - frame.monotonic) * 1000, 1)
                event = RuleEvent(rule=tracker.rule.id, version=tracker.rule.version, phase=phase,
                                  probability=round(probability, 4),
                                  provenance=read.provenance.model_copy(update={"prompt_version": tracker.rule.version}))
                self.publish("rule", frame.camera, event)
                log.info("rule event", camera=frame.camera, rule=tracker.rule.id, phase=phase,
                         probability=round(probability, 3))
        every_detect = self._settings.cameras[frame.camera].detect_every_s
        if every_detect and time.monotonic() - self._last_detection.get(frame.camera, -math.inf) >= every_detect:
            self._last_detection[frame.camera] = time.monotonic()
            detection = self._detect(read, None)
            self.publish("detection", frame.camera, detection)
            log.info("detection", camera=frame.camera, objects=[o.label for o in detection.objects])
        every = self._settings.cameras[frame.camera].describe_every_s
        if every and time.monotonic() - self._last_description.get(frame.camera, -math.inf) >= every:
            self._last_description[frame.camera] = time.monotonic()
            text = self._generate(read.state.fork(), "Describe the scene in one sentence.", 48)
            self.publish("description", frame.camera, Description(text=text, provenance=read.provenance))
            log.info("description", camera=frame.camera, text=text)

    def _p_yes(self, logits: np.ndarray) -> float:
        top = max(logits[self._yes].max(), logits[self._no].max())
        yes = np.exp(logits[self._yes] - top).sum()
        no = np.exp(logits[self._no] - top).sum()
        return float(yes / (yes + no))

    def _generate(self, state: State, prompt: str, max_tokens: int, respond: Responder | None = None,
                  schema: dict[str, Any] | None = None) -> str:
        engine = self.engine
        started = time.perf_counter()
        engine.extend_prompt(state, f"{prompt}{ANSWER}")  # type: ignore[union-attr]
        generation = engine.generate(state, GenerationOptions(max_tokens=max_tokens, json_schema=schema))  # type: ignore[union-attr]
        first = None
        for _, piece in generation:
            first = first or time.perf_counter()
            if respond is not None and piece:
                respond.partial({"text": piece})
        finished = time.perf_counter()
        if first is not None:
            self.figures["ttft_ms"] = round((first - started) * 1000, 1)
            if len(generation.tokens) > 1 and finished > first:
                self.figures["tokens_per_s"] = round((len(generation.tokens) - 1) / (finished - first), 1)
        return generation.text.strip()

    def _latest(self, camera: str | None) -> _FrameState | None:
        if camera is None:
            camera = next(iter(self._frames), None)
        return self._frames.get(camera) if camera else None

    def _ask(self, request: Request, respond: Responder) -> None:
        session = request.session  # type: ignore[union-attr]
        state = self._sessions.get(session) if session else None
        read = self._latest(request.camera)  # type: ignore[union-attr]
        if state is not None:
            # A follow-up: the conversation so far, image included, is already in the state.
            closing = "" if state.pending and state.pending[-1] in self.engine.eos_token_ids else "<|im_end|>"  # type: ignore[union-attr]
            prompt = f"{closing}\n<|im_start|>user\n{request.question}"  # type: ignore[union-attr]
        elif read is not None:
            state = read.state.fork()
            prompt = request.question  # type: ignore[union-attr]
        else:
            respond.error("not_found", f"no frame yet from camera {request.camera or '(any)'}")  # type: ignore[union-attr]
            return
        try:
            text = self._generate(state, prompt, request.max_tokens, respond)  # type: ignore[union-attr]
        except EngineError as error:
            respond.error("bad_request", str(error))
            return
        if session:
            self._sessions.put(session, state)
        provenance = read.provenance if read is not None else Provenance(model=self.engine.fingerprint[:16])  # type: ignore[union-attr]
        respond.final(Answer(request_id=request.id, session=session, text=text, provenance=provenance))

    def _describe_now(self, request: Request, respond: Responder) -> None:
        read = self._latest(request.camera)  # type: ignore[union-attr]
        if read is None:
            respond.error("not_found", f"no frame yet from camera {request.camera}")  # type: ignore[union-attr]
            return
        text = self._generate(read.state.fork(), "Describe the scene in one sentence.", 48)
        respond.final(Description(text=text, provenance=read.provenance))

    def _detect(self, read: _FrameState, labels: list[str] | None) -> Detection:
        """Objects as JSON constrained to a schema; boxes come in Qwen's 0-1000 coordinates
        and go out in pixels of the frame the model saw."""
        only = f" Only these kinds: {', '.join(labels)}." if labels else ""
        text = self._generate(read.state.fork(), "List the objects you see as JSON: label, count, box [x1, y1, x2, y2] "
                              f"in 0-1000 coordinates.{only}", 200, schema=DETECTION_SCHEMA)
        height, width = read.frame.rgb.shape[:2]
        return Detection(objects=objects_in_pixels(text, width, height), provenance=read.provenance)

    def _detect_now(self, request: Request, respond: Responder) -> None:
        read = self._latest(request.camera)  # type: ignore[union-attr]
        if read is None:
            respond.error("not_found", f"no frame yet from camera {request.camera}")  # type: ignore[union-attr]
            return
        respond.final(self._detect(read, request.labels))  # type: ignore[union-attr]


def objects_in_pixels(document: str, width: int, height: int) -> list[DetectedObject]:
    """The model's JSON objects with their 0-1000 boxes scaled to a width x height frame."""
    objects = []
    for found in json.loads(document)["objects"]:
        x1, y1, x2, y2 = found["box"]
        box = [round(x1 * width / 1000), round(y1 * height / 1000), round(x2 * width / 1000), round(y2 * height / 1000)]
        objects.append(DetectedObject(label=found["label"], count=found["count"], box=box))
    return objects


_COORDINATE = {"type": "integer", "minimum": 0, "maximum": 1000}
DETECTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"objects": {"type": "array", "maxItems": 8, "items": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "minLength": 1, "maxLength": 24},
            "count": {"type": "integer", "minimum": 1, "maximum": 99},
            "box": {"type": "array", "items": _COORDINATE, "minItems": 4, "maxItems": 4},
        },
        "required": ["label", "count", "box"], "additionalProperties": False,
    }}},
    "required": ["objects"], "additionalProperties": False,
}
