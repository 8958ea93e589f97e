"""The agent: one inference thread owns the engine and every state, and works through a
queue in order of priority: config changes, requests from the bus, the rules of each new
frame, then detections and descriptions (scheduler.py).

Each frame is read at most once, and only when some task needs it: the system prompt's
state is forked and extended with the image, and every rule, question and description
about that frame forks the result (tasks.py). A rule needs no generation: its probability
is P(yes) from the logits after its question. What a frame calls for is frame_policy.py's,
what requests do is requests.py's, what the agent knows between jobs is memory.py's. SIGHUP
and ``rules.set`` change rules and the system prompt between two jobs, without loading the
model again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import structlog
from pydantic import BaseModel

from edged.agent.agent_settings import AgentSettings
from edged.agent.frame_policy import TaskPeriods
from edged.agent.memory import AgentMemory
from edged.agent.requests import AgentRequests
from edged.agent.rules import trackers_for
from edged.agent.scheduler import ASK, CONTROL, DESCRIBE, DETECT, RULES, Job, JobQueue, RoundRobin
from edged.agent.tasks import Cancelled, FrameTasks, load_engine
from edged.bus.schema import ErrorEvent, InferenceFigures, Request
from edged.bus.server import Respond
from edged.capture.capture_part import CapturePart
from edged.capture.frame import Frame
from edged.engine.cores import usable_cores
from edged.engine.engine import Engine
from edged.engine.store import PrefixStore, SessionStore
from edged.models.installed import ModelChoice
from edged.models.integrity import PackageDamaged, check_package
from edged.parts import EX_DATAERR, ProgressMonitor, StartRefused

log = structlog.get_logger()

PERIODIC_KINDS = {"detect": DETECT, "describe": DESCRIBE}


@dataclass
class _Running:
    job: Job
    charged_until: float
    """time.monotonic() up to which the job's time has been charged to its kind."""


class AgentPart:
    name = "agent"

    def __init__(self, settings: AgentSettings, monitor: ProgressMonitor, capture: CapturePart,
                 model: ModelChoice) -> None:
        self._settings = settings
        self._model = model
        """The package ``[model] path`` chose, once, before the daemon started (edged.preflight)."""
        self._capture = capture
        self._pulse = monitor.register(self.name)
        self._idle_wait = monitor.beat_every
        self.publish: Callable[[str, str | None, BaseModel], None] = lambda kind, camera, data: None
        self._queue = JobQueue()
        for camera in capture.cameras.values():
            camera.mailbox.on_put = self._queue.wake  # a frame wakes the inference thread: no polling
        self._turns: RoundRobin[Frame] = RoundRobin()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name="inference", daemon=True)
        self._memory = AgentMemory({name: trackers_for(camera.rules, []) for name, camera in settings.cameras.items()})
        self._requests = AgentRequests(self._memory, self._queue, self._stop, lambda: self._settings,
                                       list(capture.cameras), lambda *event: self.publish(*event),
                                       settle=self._refresh_figures, rule_states=lambda: self._figures.rules)
        self._periods = TaskPeriods()
        self._scheduled: set[tuple[str, str]] = set()
        self.engine: Engine | None = None
        self._tasks: FrameTasks | None = None  # with the engine, at start
        self._sessions: SessionStore | None = None  # with the engine, at start
        self._stop_deadline = math.inf
        self._running: list[_Running] = []
        """The job running, then each job it let in, innermost last."""
        self.engine_loads = 0
        self._frame_to_event_ms: float | None = None
        self._frame_to_rules_ms: float | None = None
        self._figures = InferenceFigures(rules={name: [t.state() for t in trackers]
                                                for name, trackers in self._memory.trackers.items()})
        """The agent's part of the status, replaced by the inference thread after each job."""

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
        self.engine = load_engine(choice.path, model)
        self.engine_loads += 1
        prefixes = PrefixStore(state_dir, self.engine.fingerprint, self.engine.arithmetic, self.engine.device)
        self._tasks = FrameTasks(
            self.engine, self._settings.agent.system_prompt, prefixes,
            on_prefix_error=lambda error: log.warning("prefix state not saved", reason=str(error)),
            rules_per_batch=model.rules_per_batch)
        self._sessions = SessionStore(state_dir, self.engine.fingerprint, self.engine.arithmetic,
                                      self._settings.state.budget_mb << 20, self.engine.device)
        self._requests.bind(self.engine, self._tasks, self._sessions)
        self._refresh_figures()
        log.info("agent ready", model=choice.path.name, cameras=len(self._memory.trackers),
                 rules=sum(map(len, self._memory.trackers.values())), cores=usable_cores(),
                 free_cores=self.engine.free_cores,
                 threads_wait="spinning" if self.engine.spin else "sleeping",
                 weights_on_huge_pages_mib=self.engine.huge_page_mib,
                 rules_per_batch=self._tasks.rules_per_batch)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Stops within one decode step or read piece, and a vision encoder run at once: an
        answer in progress is cut off and told why, and the inference thread, which owns the
        sessions, saves them before ``deadline``."""
        self._stop_deadline = deadline
        self._stop.set()
        if self.engine is not None:
            self.engine.stop_runs()
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

    # -- the bus thread ----------------------------------------------------------------------

    def handle(self, request: Request, respond: Respond) -> None:
        self._requests.handle(request, respond)

    def status_figures(self) -> InferenceFigures:
        """The inference thread's last snapshot, with the queue as it is now."""
        return self._figures.model_copy(update={"queue_depth": len(self._queue)})

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
            self._queue.arm()
            if not self._queue.waiting(RULES):  # a frame's rules all run before the next frame is taken
                self._accept_next_frame()
            job = self._queue.take()
            if job is None:
                self._refresh_figures()  # jobs may have been dropped on the way
                self._queue.wait(self._idle_wait)  # a job or a frame ends the wait
                continue
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        self._running.append(_Running(job, time.monotonic()))
        try:
            job.run()
        except Cancelled:
            pass
        except Exception as error:  # noqa: BLE001 - one bad job must not stop inference; logged with its traceback
            log.exception("inference job failed")
            # no client waits on a rule, detection or description: subscribers hear of it instead
            self.publish("error", None, ErrorEvent(code="internal", message=f"{type(error).__name__}: {error}"))
        finally:
            self._charge_running()
            self._queue.finish(job)
            self._running.pop()
            if self._running:  # the time a question let in took is its own, not the job's it came into
                self._running[-1].charged_until = time.monotonic()
        self._refresh_figures()

    def _charge_running(self) -> None:
        """Charge the running job's kind with its time so far: a job that lets questions in
        must have its time counted before their share is weighed against it, or every
        question after the first waits for the whole job."""
        running, now = self._running[-1], time.monotonic()
        self._queue.charge(running.job, now - running.charged_until)
        running.charged_until = now

    def _let_waiting_work_in(self, running: int, frames: bool = False) -> None:
        """Between the pieces of a job of kind ``running`` (a frame's read, the tokens of a
        description or detection): the questions waiting, each on its own state, as long as
        questions are within their share of time against that kind, so that none waits for
        the whole job (whose result is the same). With ``frames`` (between tokens), new frames
        are taken too, and a frame's rules run here as well once their frame is read (the
        description's own read, most often): they fork that read, so the peak memory stays
        that of a question let in. Rules that would read their frame here instead wait, and
        while their claim is better than the questions', none is let in until the job ends
        and the rules run: with questions let in a description lasts seconds, and a camera's
        mailbox keeps only its newest frame (under a flood of asks the rules saw one frame in
        two, with a tenth of the time). A read beside the description's state would raise the
        daemon's peak memory (by 80 MB at 0.8B). Once the daemon is stopping, the job ends
        here instead: a read is seconds long on a slow board, longer than the stop may take."""
        while True:
            if self._stop.is_set():
                raise Cancelled()
            self._pulse.beat()
            if self._running:
                self._charge_running()
            if frames and not self._queue.waiting(RULES):
                self._accept_next_frame()
            job = self._queue.take_waiting((ASK, RULES) if frames else (ASK,), running=running,
                                           yield_to=(RULES,) if frames else ())
            if job is None:
                return
            self._run_job(job)

    def _accept_next_frame(self) -> bool:
        """Take the next camera's newest frame, in turn, and queue the work it calls for."""
        cameras = self._capture.cameras
        found = self._turns.first(list(cameras), lambda name: cameras[name].mailbox.take(timeout=0))
        if found is None:
            return False
        name, frame = found
        self._memory.remember(frame, self._settings.agent.frames_kept)
        deadline = frame.monotonic + self._settings.agent.stale_after_s
        if self._memory.trackers.get(name):
            self._queue.put(RULES, partial(self._evaluate_rules, frame), deadline,
                            nestable=partial(self._memory.is_read, frame))
        camera = self._settings.cameras.get(name)
        if camera is not None:
            for task in self._periods.due(name, camera, time.monotonic()):
                self._schedule(name, task, deadline)
        return True

    def _schedule(self, camera: str, task: str, deadline: float) -> None:
        """Queue a periodic task that is due, unless it is queued already."""
        key = (camera, task)
        if key in self._scheduled:
            return
        self._scheduled.add(key)
        work = self._detect_periodically if task == "detect" else self._describe_periodically

        def run() -> None:
            self._scheduled.discard(key)
            self._periods.ran(camera, task, time.monotonic())
            work(camera)

        self._queue.put(PERIODIC_KINDS[task], run, deadline, expire=lambda: self._scheduled.discard(key))

    def _evaluate_rules(self, frame: Frame) -> None:
        """Every rule of the frame's camera on one read of the frame, waiting questions let in
        between. One job, so that the deadline is for starting the frame's work: once the read
        is paid for, a rule costs a fork and a few tokens. As a job per rule, a 4B model on two
        cores (an 11 s read) saw every rule after the first pass its deadline: no frame's rules
        ever all ran."""
        trackers = self._memory.trackers.get(frame.camera, [])
        if not trackers:
            return  # the camera's rules were removed after this job was queued: no read needed
        questions = partial(self._let_waiting_work_in, RULES)
        read = self._memory.read(frame, self._tasks, questions)
        for event in self._tasks.evaluate_rules(read, trackers, between=questions):
            self._publish("rule", frame, event)
            log.info("rule event", camera=frame.camera, rule=event.rule, phase=event.phase,
                     probability=round(event.probability, 3))
        self._frame_to_rules_ms = round((time.monotonic() - frame.monotonic) * 1000, 1)

    def _detect_periodically(self, camera: str) -> None:
        questions = partial(self._let_waiting_work_in, DETECT)
        read = self._memory.newest_read(camera, self._tasks, between=questions)
        if read is not None:
            detection = self._tasks.detect(read, cancel=self._stop, between=partial(questions, frames=True))
            self._memory.set_detection(camera, detection)
            self._publish("detection", read.frame, detection)
            log.info("detection", camera=camera, objects=[o.label for o in detection.objects])

    def _describe_periodically(self, camera: str) -> None:
        questions = partial(self._let_waiting_work_in, DESCRIBE)
        read = self._memory.newest_read(camera, self._tasks, between=questions)
        if read is not None:
            description = self._tasks.describe(read, cancel=self._stop, between=partial(questions, frames=True))
            self._publish("description", read.frame, description)
            log.info("description", camera=camera, text=description.text)

    def _publish(self, kind: str, frame: Frame, data: BaseModel) -> None:
        self._frame_to_event_ms = round((time.monotonic() - frame.monotonic) * 1000, 1)
        self._refresh_figures()  # a subscriber that asks for the status next sees what the event says
        self.publish(kind, frame.camera, data)

    def _apply(self, settings: AgentSettings) -> None:
        self._memory.trackers = {name: trackers_for(camera.rules, self._memory.trackers.get(name, []))
                                 for name, camera in settings.cameras.items()}
        if settings.agent.system_prompt != self._tasks.system_prompt:
            self._tasks.set_system_prompt(settings.agent.system_prompt)
            self._memory.forget_reads()
        self._settings = settings
        log.info("agent settings applied", rules=sum(map(len, self._memory.trackers.values())),
                 prompt_version=self._tasks.prompt_version)

    def _refresh_figures(self) -> None:
        engine, tasks = self.engine, self._tasks
        self._figures = InferenceFigures(
            model=engine.manifest.name, execution_provider=engine.execution_provider,
            images_encoded=engine.counters.images_encoded, sessions=len(self._sessions),
            tokens_per_s=tasks.figures.tokens_per_s, ttft_ms=tasks.figures.ttft_ms,
            frame_to_event_ms=self._frame_to_event_ms, frame_to_rules_ms=self._frame_to_rules_ms,
            drops=sum(self._queue.dropped.values()), jobs_dropped=dict(self._queue.dropped),
            inference_s={kind: round(seconds, 3) for kind, seconds in self._queue.seconds.items()},
            rules={name: [t.state() for t in trackers] for name, trackers in self._memory.trackers.items()},
            engine_loads=self.engine_loads, prompt_version=tasks.prompt_version,
        )
