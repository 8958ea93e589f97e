"""The agent: one inference thread owns the engine and every state, and works through a
queue in order of priority: config changes, requests from the bus, the rules of each new
frame, then detections and descriptions (scheduler.py).

Each frame is read at most once, and only when some task needs it: the system prompt's
state is forked and extended with the image, and every rule, question and description
about that frame forks the result (tasks.py). A rule needs no generation: its probability
is P(yes) from the logits after its question. SIGHUP and ``rules.set`` change rules and the
system prompt between two jobs, without loading the model again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ValidationError

from edged.agent.agent_settings import AgentConfig, CameraTasksConfig
from edged.agent.rules import RuleTracker, trackers_for
from edged.agent.scheduler import ASK, CONTROL, DESCRIBE, DETECT, RULES, JobQueue, RoundRobin
from edged.agent.snapshot import snapshot
from edged.agent.tasks import Cancelled, FrameTasks, ReadFrame
from edged.bus.bus_settings import BusConfig
from edged.bus.schema import Answer, Detection, ErrorEvent, Provenance, Request, RuleConfig
from edged.bus.server import Responder
from edged.capture.capture_part import CapturePart
from edged.capture.frame import Frame
from edged.engine.engine import Engine, EngineError
from edged.engine.prompt_format import follow_up
from edged.engine.state_settings import StateConfig
from edged.engine.store import PrefixStore, SessionStore
from edged.models.installed import ModelChoice
from edged.models.integrity import PackageDamaged, check_package
from edged.models.model_settings import ModelConfig
from edged.parts import EX_DATAERR, ProgressMonitor, StartRefused

log = structlog.get_logger()


class AgentSettings(Protocol):
    """What the agent reads of the daemon's settings: the model and where states live, its
    own table, each camera's rules and tasks, and how long the bus waits for an answer."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def state(self) -> StateConfig: ...
    @property
    def agent(self) -> AgentConfig: ...
    @property
    def bus(self) -> BusConfig: ...
    @property
    def cameras(self) -> Mapping[str, CameraTasksConfig]: ...


class AgentPart:
    name = "agent"

    def __init__(self, settings: AgentSettings, monitor: ProgressMonitor, capture: CapturePart,
                 model: ModelChoice) -> None:
        self._settings = settings
        self._model = model
        """The package ``[model] path`` chose, once, before the daemon started (edged.preflight)."""
        self._capture = capture
        self._pulse = monitor.register(self.name)
        self.publish: Callable[[str, str | None, BaseModel], None] = lambda kind, camera, data: None
        self._queue = JobQueue()
        self._turns: RoundRobin[Frame] = RoundRobin()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name="inference", daemon=True)
        # Written by the inference thread only, and always replaced rather than changed in
        # place, so the bus thread may read them (rules.list, snapshot, status) at any time.
        self._trackers: dict[str, list[RuleTracker]] = {
            name: trackers_for(camera.rules, []) for name, camera in settings.cameras.items()}
        self._recent: dict[str, tuple[Frame, ...]] = {}
        """Each camera's last [agent] frames_kept accepted frames, newest last."""
        self._detections: dict[str, Detection] = {}
        self._reads: dict[str, ReadFrame] = {}
        self._last_run: dict[tuple[str, int], float] = {}
        self._scheduled: set[tuple[str, int]] = set()
        self.engine: Engine | None = None
        self._tasks: FrameTasks | None = None  # with the engine, at start
        self._sessions: SessionStore | None = None  # with the engine, at start
        self._stop_deadline = math.inf
        self.engine_loads = 0
        self._frame_to_event_ms: float | None = None
        self._frame_to_rules_ms: float | None = None

    # -- the lifecycle (main thread) -------------------------------------------------------

    def start(self) -> None:
        model, choice = self._settings.model, self._model
        state_dir = self._settings.state.dir
        try:
            hashed = check_package(choice.path, state_dir)
        except PackageDamaged as error:
            raise StartRefused(
                f"the model package is damaged: {error}. Install it again (`edged models pull NAME`, or "
                "copy the package anew), then start edged", EX_DATAERR) from None
        if hashed:
            log.info("model package verified", package=str(choice.path), files_hashed=hashed)
        self.engine = Engine(choice.path, threads=model.threads, max_length=model.max_length)
        self.engine_loads += 1
        self._tasks = FrameTasks(
            self.engine, self._settings.agent.system_prompt, PrefixStore(state_dir, self.engine.fingerprint),
            on_prefix_error=lambda error: log.warning("prefix state not saved", reason=str(error)))
        self._sessions = SessionStore(state_dir, self.engine.fingerprint, self._settings.state.budget_mb << 20)
        log.info("agent ready", model=choice.path.name, cameras=len(self._trackers),
                 rules=sum(map(len, self._trackers.values())))
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Stops within one decode step: an answer in progress is cut off and told why, and
        the inference thread, which owns the sessions, saves them before ``deadline``."""
        self._stop_deadline = deadline
        self._stop.set()
        self._queue.wake()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("the inference thread did not stop in time; sessions it had not saved are lost")

    def apply(self, settings: AgentSettings) -> None:
        """New rules, periods and system prompt, applied between two inference jobs."""
        self._queue.put(CONTROL, partial(self._apply, settings))

    def describe(self) -> str:
        queued = len(self._queue)
        return f"model {self.engine.manifest.name if self.engine else '-'}, {queued} job{'' if queued == 1 else 's'} queued"

    # -- requests (bus thread) -------------------------------------------------------------

    def handle(self, request: Request, respond: Responder) -> None:
        op = request.op
        if self._stop.is_set() and op not in ("rules.list", "snapshot"):
            respond.error("unavailable", "the daemon is stopping; ask again when it is back")
        elif op == "rules.list":
            respond.final({name: [t.state().model_dump() for t in trackers]
                           for name, trackers in self._trackers.items()
                           if request.camera in (None, name)})  # type: ignore[union-attr]
        elif op == "snapshot":
            self._snapshot(request, respond)
        else:
            work = {"ask": self._ask, "describe": self._describe_now, "detect": self._detect_now,
                    "rules.set": self._set_rules, "sessions.drop": self._drop_session}[op]
            deadline = time.monotonic() + self._settings.bus.request_timeout_s  # then the bus says 'deadline'
            self._queue.put(ASK, partial(self._answer, work, request, respond), deadline)

    def status_figures(self) -> dict[str, Any]:
        engine, tasks = self.engine, self._tasks
        return {
            "queue_depth": len(self._queue), "model": engine.manifest.name if engine else None,
            "execution_provider": engine.execution_provider if engine else None,
            "images_encoded": engine.counters.images_encoded if engine else None,
            "sessions": len(self._sessions) if self._sessions is not None else None,
            "tokens_per_s": tasks.figures.tokens_per_s if tasks else None,
            "ttft_ms": tasks.figures.ttft_ms if tasks else None,
            "frame_to_event_ms": self._frame_to_event_ms, "frame_to_rules_ms": self._frame_to_rules_ms,
            "drops": sum(self._queue.dropped.values()), "jobs_dropped": dict(self._queue.dropped),
            "rules": {name: [t.state() for t in trackers] for name, trackers in self._trackers.items()},
            "engine_loads": self.engine_loads, "prompt_version": tasks.prompt_version if tasks else None,
        }

    def _snapshot(self, request: Request, respond: Responder) -> None:
        camera = request.camera  # type: ignore[union-attr]
        if camera not in self._capture.cameras:
            respond.error("not_found", f"no camera {camera}; cameras: {', '.join(self._capture.cameras) or 'none'}")
            return
        frame = self._newest(camera)
        if frame is None:
            respond.error("not_found", f"no frame yet from camera {camera}")
            return
        detection = self._detections.get(camera)
        objects = detection.objects if detection and detection.provenance.frame_seq == frame.seq else []
        rules = [t.state() for t in self._trackers.get(camera, [])]
        respond.final(snapshot(frame, objects, rules, request.format))  # type: ignore[union-attr]

    # -- the inference thread ----------------------------------------------------------------

    def _run(self) -> None:
        self._serve()
        self._save_sessions()

    def _save_sessions(self) -> None:
        try:
            saved = self._sessions.save_all(self._stop_deadline)
        except OSError as error:
            log.warning("sessions not saved", reason=str(error))
            return
        if saved:
            log.info("sessions saved", count=saved)
        if saved < len(self._sessions):
            log.error("sessions not saved: the stop's deadline came first", count=len(self._sessions) - saved)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._pulse.beat()
            if not self._queue.waiting(RULES):  # a frame's rules all run before the next frame is taken
                self._accept_next_frame()
            job = self._queue.take()
            if job is None:
                self._queue.wait(0.02)  # frames arrive in mailboxes, not here: poll them often
                continue
            started = time.monotonic()
            try:
                job.run()
            except Cancelled:
                pass
            except Exception as error:  # noqa: BLE001 - one bad job must not stop inference; logged with its traceback
                log.exception("inference job failed")
                # no client waits on a rule, detection or description: subscribers hear of it instead
                self.publish("error", None, ErrorEvent(code="internal", message=f"{type(error).__name__}: {error}"))
            self._queue.charge(job, time.monotonic() - started)

    def _accept_next_frame(self) -> bool:
        """Take the next camera's newest frame, in turn, and queue the work it calls for."""
        cameras = self._capture.cameras
        found = self._turns.first(list(cameras), lambda name: cameras[name].mailbox.take(timeout=0))
        if found is None:
            return False
        name, frame = found
        recent = (*self._recent.get(name, ()), frame)
        self._recent = {**self._recent, name: recent[-self._settings.agent.frames_kept:]}
        deadline = frame.monotonic + self._settings.agent.stale_after_s
        for tracker in self._trackers.get(name, []):
            self._queue.put(RULES, partial(self._evaluate, frame, tracker), deadline)
        camera = self._settings.cameras.get(name)
        if camera is not None:
            self._schedule(name, DETECT, camera.detect_every_s, self._detect_periodically, deadline)
            self._schedule(name, DESCRIBE, camera.describe_every_s, self._describe_periodically, deadline)
        return True

    def _schedule(self, camera: str, kind: int, every_s: float, work: Callable[[str], None], deadline: float) -> None:
        """Queue a periodic task unless it is off, not yet due, or queued already."""
        key = (camera, kind)
        if not every_s or key in self._scheduled or time.monotonic() - self._last_run.get(key, -math.inf) < every_s:
            return
        self._scheduled.add(key)

        def run() -> None:
            self._scheduled.discard(key)
            self._last_run[key] = time.monotonic()
            work(camera)

        self._queue.put(kind, run, deadline, expire=lambda: self._scheduled.discard(key))

    def _read(self, frame: Frame) -> ReadFrame:
        """The model's read of ``frame``, made once however many tasks ask for it."""
        read = self._reads.get(frame.camera)
        if read is None or read.frame is not frame:
            read = self._tasks.read(frame)
            self._reads = {**self._reads, frame.camera: read}
        return read

    def _newest(self, camera: str | None) -> Frame | None:
        """The newest accepted frame of ``camera`` (of any camera when None)."""
        name = camera if camera is not None else next(iter(self._recent), None)
        recent = self._recent.get(name, ()) if name is not None else ()
        return recent[-1] if recent else None

    def _newest_read(self, camera: str | None) -> ReadFrame | None:
        """The newest frame of ``camera`` (of any camera when None), read."""
        frame = self._newest(camera)
        return self._read(frame) if frame is not None else None

    def _evaluate(self, frame: Frame, tracker: RuleTracker) -> None:
        if tracker not in self._trackers.get(frame.camera, []):
            return  # the rule was replaced or removed after this job was queued
        event = self._tasks.evaluate_rule(self._read(frame), tracker)
        if tracker is self._trackers[frame.camera][-1]:
            self._frame_to_rules_ms = round((time.monotonic() - frame.monotonic) * 1000, 1)
        if event is not None:
            self._publish("rule", frame, event)
            log.info("rule event", camera=frame.camera, rule=event.rule, phase=event.phase,
                     probability=round(event.probability, 3))

    def _detect_periodically(self, camera: str) -> None:
        read = self._newest_read(camera)
        if read is not None:
            detection = self._tasks.detect(read, cancel=self._stop)
            self._detections = {**self._detections, camera: detection}
            self._publish("detection", read.frame, detection)
            log.info("detection", camera=camera, objects=[o.label for o in detection.objects])

    def _describe_periodically(self, camera: str) -> None:
        read = self._newest_read(camera)
        if read is not None:
            description = self._tasks.describe(read, cancel=self._stop)
            self._publish("description", read.frame, description)
            log.info("description", camera=camera, text=description.text)

    def _publish(self, kind: str, frame: Frame, data: BaseModel) -> None:
        self._frame_to_event_ms = round((time.monotonic() - frame.monotonic) * 1000, 1)
        self.publish(kind, frame.camera, data)

    def _apply(self, settings: AgentSettings) -> None:
        self._trackers = {name: trackers_for(camera.rules, self._trackers.get(name, []))
                          for name, camera in settings.cameras.items()}
        if settings.agent.system_prompt != self._tasks.system_prompt:
            self._tasks.set_system_prompt(settings.agent.system_prompt)
            self._reads = {}  # read under the old prompt
        self._settings = settings
        log.info("agent settings applied", rules=sum(map(len, self._trackers.values())),
                 prompt_version=self._tasks.prompt_version)

    # -- requests, on the inference thread ------------------------------------------------------

    def _answer(self, work: Callable[[Any, Responder], None], request: Request, respond: Responder) -> None:
        """Run a request's work; whatever goes wrong, the client hears about it."""
        try:
            work(request, respond)
        except Cancelled:
            respond.error("unavailable", "the daemon is stopping; ask again when it is back")
        except EngineError as error:
            respond.error("bad_request", str(error))
        except Exception as error:
            log.exception("request failed", op=request.op, request_id=request.id)
            respond.error("internal", f"{type(error).__name__}: {error}")

    def _ask(self, request: Any, respond: Responder) -> None:
        session = request.session
        state = self._sessions.get(session) if session else None
        read = None
        if state is not None:
            # A follow-up: the conversation so far, image included, is already in the state.
            closed = bool(state.pending) and state.pending[-1] in self.engine.eos_token_ids  # type: ignore[union-attr]
            prompt = follow_up(request.question, closed)
        else:
            if request.frame_seq is not None:
                named = [f for f in self._recent.get(request.camera, ()) if f.seq == request.frame_seq]
                read = self._read(named[0]) if named else None
                missing = f"frame {request.frame_seq} of camera {request.camera} is not among the frames kept"
            else:
                read = self._newest_read(request.camera)
                missing = f"no frame yet from camera {request.camera or '(any)'}"
            if read is None:
                respond.error("not_found", missing)
                return
            state, prompt = read.state.fork(), request.question
        max_tokens = min(request.max_tokens, self._settings.agent.answer_max_tokens)
        text = self._tasks.generate(state, prompt, max_tokens, on_text=lambda piece: respond.partial({"text": piece}),
                                    cancel=self._stop)
        if session:
            self._sessions.put(session, state)
        provenance = read.provenance if read is not None else Provenance(
            model=self.engine.fingerprint[:16], prompt_version=self._tasks.prompt_version)  # type: ignore[union-attr]
        answer = Answer(request_id=request.id, session=session, text=text, provenance=provenance)
        respond.final(answer)
        self.publish("answer", request.camera, answer)

    def _newest_read_or_report(self, camera: str | None, respond: Responder) -> ReadFrame | None:
        """The newest frame of ``camera``, read; None once the client has been told there is none."""
        read = self._newest_read(camera)
        if read is None:
            respond.error("not_found", f"no frame yet from camera {camera}")
        return read

    def _describe_now(self, request: Any, respond: Responder) -> None:
        read = self._newest_read_or_report(request.camera, respond)
        if read is not None:
            respond.final(self._tasks.describe(read, cancel=self._stop))

    def _detect_now(self, request: Any, respond: Responder) -> None:
        read = self._newest_read_or_report(request.camera, respond)
        if read is None:
            return
        detection = self._tasks.detect(read, request.labels, cancel=self._stop)
        if not request.labels:
            self._detections = {**self._detections, request.camera: detection}
        respond.final(detection)

    def _set_rules(self, request: Any, respond: Responder) -> None:
        """Replace one camera's rules until the next reload or restart."""
        if request.camera not in self._settings.cameras:
            respond.error("not_found", f"no camera {request.camera}; cameras: {', '.join(self._settings.cameras) or 'none'}")
            return
        try:
            rules = [RuleConfig(**spec.model_dump(exclude_none=True)) for spec in request.rules]
        except ValidationError as error:
            first = error.errors()[0]
            respond.error("bad_request", f"rules: {first['msg']}")
            return
        if len({rule.id for rule in rules}) != len(rules):
            respond.error("bad_request", "rules: two rules share an id")
            return
        self._trackers = {**self._trackers, request.camera: trackers_for(rules, self._trackers.get(request.camera, []))}
        log.info("rules set", camera=request.camera, rules=[rule.id for rule in rules])
        respond.final({request.camera: [t.state().model_dump() for t in self._trackers[request.camera]]})

    def _drop_session(self, request: Any, respond: Responder) -> None:
        respond.final({"dropped": self._sessions.drop(request.session)})
