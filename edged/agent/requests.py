"""The agent's side of the bus's requests, dispatched by their schema model. ``handle`` runs
on the bus thread: rules.list and snapshot are answered there, from what the inference thread
last published (frames and detections in the agent's memory, rule states in its status);
every other request becomes a job in the queue's ask share, and its work, below, runs on the
inference thread, which owns the engine and every state."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import numpy as np
import structlog
from pydantic import BaseModel, ValidationError

from edged.agent.agent_settings import AgentSettings
from edged.agent.memory import AgentMemory
from edged.agent.rules import trackers_for
from edged.agent.scheduler import ASK, JobQueue
from edged.agent.snapshot import snapshot
from edged.agent.tasks import Cancelled, FrameTasks, ReadFrame, generation_options
from edged.bus.schema import (
    Answer,
    AskRequest,
    DescribeRequest,
    DetectRequest,
    Provenance,
    Request,
    RuleConfig,
    RuleState,
    RulesListRequest,
    RulesSetRequest,
    SessionsDropRequest,
    SnapshotRequest,
)
from edged.bus.server import Respond
from edged.capture.frame import content_hash
from edged.engine.engine import Engine, EngineError
from edged.engine.generation import Generation
from edged.engine.prompt_format import ANSWER, END_OF_TURN, follow_up, user_turn
from edged.engine.state import State
from edged.engine.store import SessionStore

log = structlog.get_logger()


class AgentRequests:
    def __init__(self, memory: AgentMemory, queue: JobQueue, stopping: threading.Event,
                 settings: Callable[[], AgentSettings], cameras: Collection[str],
                 publish: Callable[[str, str | None, BaseModel], None], settle: Callable[[], None],
                 rule_states: Callable[[], dict[str, list[RuleState]]]) -> None:
        """``settle``: brings the agent's status up to date; it runs before each final reply, so
        a client that asks for the status next sees what its request did. ``rule_states``: the
        rules as that status last had them, what the bus thread reads of them."""
        self._memory, self._queue, self._stopping = memory, queue, stopping
        self._settings, self._cameras, self._publish, self._settle = settings, cameras, publish, settle
        self._rule_states = rule_states
        self._engine: Engine | None = None
        self._tasks: FrameTasks | None = None
        self._sessions: SessionStore | None = None
        self._on_bus_thread: dict[type, Callable[[Any, Respond], None]] = {
            RulesListRequest: self._rules_list, SnapshotRequest: self._snapshot}
        self._on_inference_thread: dict[type, Callable[[Any, Respond], None]] = {
            AskRequest: self._ask, DescribeRequest: self._describe, DetectRequest: self._detect,
            RulesSetRequest: self._set_rules, SessionsDropRequest: self._drop_session}

    def bind(self, engine: Engine, tasks: FrameTasks, sessions: SessionStore) -> None:
        """What the agent made at start: the requests that need the model can run from now on."""
        self._engine, self._tasks, self._sessions = engine, tasks, sessions

    # -- the bus thread ------------------------------------------------------------------------

    def handle(self, request: Request, respond: Respond) -> None:
        kind = type(request)
        if kind in self._on_bus_thread:
            self._on_bus_thread[kind](request, respond)
        elif self._stopping.is_set():
            respond.error("unavailable", "the daemon is stopping; ask again when it is back")
        else:
            work = self._on_inference_thread[kind]
            deadline = time.monotonic() + self._settings().bus.request_timeout_s  # then the bus says 'deadline'
            self._queue.put(ASK, partial(self._answer, work, request, respond), deadline)

    def _rules_list(self, request: RulesListRequest, respond: Respond) -> None:
        respond.final({name: [state.model_dump() for state in states]
                       for name, states in self._rule_states().items() if request.camera in (None, name)})

    def _snapshot(self, request: SnapshotRequest, respond: Respond) -> None:
        camera = request.camera
        if camera not in self._cameras:
            respond.error("not_found", f"no camera {camera}; cameras: {', '.join(self._cameras) or 'none'}")
            return
        if request.frame_seq is not None:
            frame = self._memory.kept(camera, request.frame_seq)
            missing = f"frame {request.frame_seq} of camera {camera} is not among the frames kept"
        else:
            frame = self._memory.newest(camera)
            missing = f"no frame yet from camera {camera}"
        if frame is None:
            respond.error("not_found", missing)
            return
        detection = self._memory.detections.get(camera)
        objects = detection.objects if detection and detection.provenance.frame_seq == frame.seq else []
        respond.final(snapshot(frame, objects, self._rule_states().get(camera, []), request.format))

    # -- the inference thread --------------------------------------------------------------------

    def _answer(self, work: Callable[[Any, Respond], None], request: Request, respond: Respond) -> None:
        """Run a request's work; whatever goes wrong, the client hears about it."""
        try:
            work(request, _Settled(respond, self._settle))
        except Cancelled:
            respond.error("unavailable", "the daemon is stopping; ask again when it is back")
        except EngineError as error:
            respond.error("bad_request", str(error))
        except Exception as error:
            log.exception("request failed", op=request.op, request_id=request.id)
            respond.error("internal", f"{type(error).__name__}: {error}")

    def _ask(self, request: AskRequest, respond: Respond) -> None:
        engine, tasks, sessions = self._engine, self._tasks, self._sessions
        picture = picture_reference(request)
        turns = [(turn.role, turn.text) for turn in request.history]
        if request.session:
            continued = sessions.get(request.session)
        elif request.remember and turns:
            continued = sessions.get(conversation_key(engine.fingerprint, picture, turns))
        else:
            continued = None
        provenance = Provenance(model=engine.fingerprint[:16], prompt_version=tasks.prompt_version)
        if continued is not None:
            # A follow-up: the conversation so far, picture included, is already in the state.
            state = continued
            last = (state.pending or state.tokens)[-1:]  # a read answer has run its end token; a generated one not yet
            closed = bool(last) and last[0] in engine.eos_token_ids
            prompt = follow_up(request.question, closed)
        else:
            start = self._start_of_conversation(request, respond)
            if start is None:
                return
            state, provenance = start
            user_turn_open = not request.without_picture
            tasks.read_turns(state, turns, user_turn_open)
            prompt = (request.question if user_turn_open else user_turn(request.question)) if not turns \
                else follow_up(request.question, answer_closed=True)
        max_tokens = min(request.max_tokens, self._settings().agent.answer_max_tokens)
        options = generation_options(max_tokens, request.temperature, request.stop, request.json_schema)
        before = state.fork() if request.remember else None
        generation = tasks.answer(state, prompt, options, on_text=lambda piece: respond.partial({"text": piece}),
                                  cancel=self._stopping)
        text = generation.text.strip()
        prompt_tokens = state.length - len(generation.tokens)
        session = request.session
        if request.remember:
            session = conversation_key(engine.fingerprint, picture, [*turns, ("user", request.question), ("assistant", text)])
            if not reads_back_the_same(engine, generation, text):
                # The state must be what reading the conversation's text gives, since that is
                # what a request carrying it would read when no remembered state continues it.
                state = before
                engine.extend_prompt(state, f"{prompt}{ANSWER}{text}{END_OF_TURN}")
        if session:
            sessions.put(session, state)
        answer = Answer(request_id=request.id, session=session, text=text, provenance=provenance,
                        finish_reason="length" if generation.finish_reason == "length" else "stop",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=len(generation.tokens))
        respond.final(answer)
        self._publish("answer", request.camera, answer)

    def _start_of_conversation(self, request: AskRequest, respond: Respond) -> tuple[State, Provenance] | None:
        """The state a new conversation starts from: a camera's frame read, the request's own
        picture read, or the system prompt alone; None once the client has been told why not."""
        engine, tasks = self._engine, self._tasks
        if request.without_picture:
            return tasks.after_system_prompt(), Provenance(model=engine.fingerprint[:16], prompt_version=tasks.prompt_version)
        if request.image is not None:
            rgb = decode_picture(request.image)
            if rgb is None:
                respond.error("bad_request", "image: not a JPEG or PNG picture in base64")
                return None
            return tasks.read_picture(rgb), Provenance(frame_hash=content_hash(rgb), model=engine.fingerprint[:16],
                                                       prompt_version=tasks.prompt_version)
        if request.camera is not None and request.camera not in self._cameras:
            respond.error("not_found", f"no camera {request.camera}; cameras: {', '.join(self._cameras) or 'none'}")
            return None
        if request.frame_seq is not None:
            named = self._memory.kept(request.camera, request.frame_seq)
            read = self._memory.read(named, tasks) if named is not None else None
            missing = f"frame {request.frame_seq} of camera {request.camera} is not among the frames kept"
        else:
            read = self._memory.newest_read(request.camera, tasks, self._settings().agent.reuse_read_within_s)
            missing = f"no frame yet from camera {request.camera or '(any)'}"
        if read is None:
            respond.error("not_found", missing)
            return None
        return read.state.fork(), read.provenance

    def _newest_read_or_report(self, camera: str, respond: Respond) -> ReadFrame | None:
        """The newest frame of ``camera``, read; None once the client has been told there is none."""
        read = self._memory.newest_read(camera, self._tasks, self._settings().agent.reuse_read_within_s)
        if read is None:
            respond.error("not_found", f"no frame yet from camera {camera}")
        return read

    def _describe(self, request: DescribeRequest, respond: Respond) -> None:
        read = self._newest_read_or_report(request.camera, respond)
        if read is not None:
            respond.final(self._tasks.describe(read, cancel=self._stopping))

    def _detect(self, request: DetectRequest, respond: Respond) -> None:
        read = self._newest_read_or_report(request.camera, respond)
        if read is None:
            return
        detection = self._tasks.detect(read, request.labels, cancel=self._stopping)
        if not request.labels:
            self._memory.set_detection(request.camera, detection)
        respond.final(detection)

    def _set_rules(self, request: RulesSetRequest, respond: Respond) -> None:
        """Replace one camera's rules until the next reload or restart."""
        cameras = self._settings().cameras
        if request.camera not in cameras:
            respond.error("not_found", f"no camera {request.camera}; cameras: {', '.join(cameras) or 'none'}")
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
        self._memory.set_trackers(request.camera, trackers_for(rules, self._memory.trackers.get(request.camera, [])))
        log.info("rules set", camera=request.camera, rules=[rule.id for rule in rules])
        respond.final({request.camera: [t.state().model_dump() for t in self._memory.trackers[request.camera]]})

    def _drop_session(self, request: SessionsDropRequest, respond: Respond) -> None:
        respond.final({"dropped": self._sessions.drop(request.session)})


class _Settled:
    """A responder whose final reply waits for the agent's status to catch up."""

    def __init__(self, respond: Respond, settle: Callable[[], None]) -> None:
        self._respond, self._settle = respond, settle

    def partial(self, data: Any) -> None:
        self._respond.partial(data)

    def final(self, data: Any = None) -> None:
        self._settle()
        self._respond.final(data)

    def error(self, code: str, message: str) -> None:
        self._respond.error(code, message)


def picture_reference(request: AskRequest) -> str:
    """What a conversation is about, as its request names it: the same words on a follow-up
    find the same conversation (a camera's "newest" means the frame its first turn read)."""
    if request.image is not None:
        return "image:" + hashlib.sha256(request.image.encode()).hexdigest()
    if request.without_picture:
        return "none"
    frame = "newest" if request.frame_seq is None else str(request.frame_seq)
    return f"camera:{request.camera or '(any)'}:{frame}"


def reads_back_the_same(engine: Engine, generation: Generation, text: str) -> bool:
    """Whether the answer's tokens are those its text reads as, closed by the end of its turn:
    then the state after generating it is the state after reading it. Not so when the model
    picked a split of the text its tokenizer would not make, or a stop string or max_tokens cut
    the answer (the state holds tokens the text does not)."""
    return (generation.finish_reason == "eos" and generation.tokens[-1:] == engine.encode(END_OF_TURN)
            and engine.encode(text) == generation.tokens[:-1])


def conversation_key(fingerprint: str, picture: str, turns: list[tuple[str, str]]) -> str:
    """The session name of a conversation remembered by content (AskRequest.remember)."""
    content = json.dumps([fingerprint, picture, turns], ensure_ascii=False)
    return "conversation-" + hashlib.sha256(content.encode()).hexdigest()[:32]


def decode_picture(encoded: str) -> np.ndarray | None:
    """An RGB array from a base64 JPEG or PNG; None if it is not one."""
    import cv2

    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
