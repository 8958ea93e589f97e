"""The bus contract: every event, request and reply as a pydantic model.

``edged schema`` prints their JSON Schema; docs/bus.md explains them. Version 1. A
compatible change only adds optional fields; anything else bumps ``v``.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator

from edged.capture.camera_settings import CameraName  # one rule for camera names, in config and requests
from edged.capture.camera_status import CameraStatus  # capture's own report, carried as it is

PROTOCOL_VERSION = 1
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(_Model):
    """Where an event comes from: which frame, which model, which prompt or rule version."""

    frame_seq: int | None = Field(None, description="the camera's frame sequence number")
    frame_ts: float | None = Field(None, description="when the frame was captured, Unix seconds")
    frame_hash: str | None = Field(None, description="content hash of the frame")
    model: str | None = Field(None, description="fingerprint of the model package")
    prompt_version: str | None = Field(None, description="version of the prompt or rule used")


# -- events (PUB) ------------------------------------------------------------------------


class DetectedObject(_Model):
    label: str
    count: int = Field(1, ge=0)
    box: list[int] | None = Field(None, min_length=4, max_length=4, description="[x1, y1, x2, y2] in frame pixels")


class Detection(_Model):
    objects: list[DetectedObject]
    provenance: Provenance = Field(default_factory=Provenance)


class RuleEvent(_Model):
    rule: Name = Field(description="the rule's id")
    version: str = Field(description="the rule's version: changes when its text or thresholds change")
    phase: Literal["begin", "end"]
    probability: float = Field(ge=0, le=1, description="P(yes) at this evaluation")
    provenance: Provenance = Field(default_factory=Provenance)


class Description(_Model):
    text: str
    provenance: Provenance = Field(default_factory=Provenance)


class Answer(_Model):
    request_id: str
    session: str | None = Field(None, description="the conversation this answer is saved under, if any")
    text: str
    partial: bool = False
    provenance: Provenance = Field(default_factory=Provenance)
    finish_reason: Literal["stop", "length"] | None = Field(
        None, description="stop: the model ended its answer, or a stop string did; length: max_tokens ended it")
    prompt_tokens: int | None = Field(None, description="tokens the model had read before answering")
    completion_tokens: int | None = Field(None, description="tokens of the answer")


class RuleState(_Model):
    """A rule as the daemon runs it now."""

    id: Name
    version: str
    when: str
    active: bool = Field(description="between its begin and end events")
    probability: float | None = Field(None, description="P(yes) at the last evaluation")
    evaluations: int = Field(0, description="frames it has been evaluated on since it was set")


class InferenceFigures(_Model):
    """The agent's part of the status: the model and how inference is keeping up. The agent
    builds one on its inference thread after each job; the bus thread only reads it."""

    model: str | None = Field(None, description="the model package in use")
    execution_provider: str | None = Field(None, description="what runs the model, e.g. CPUExecutionProvider")
    queue_depth: int = Field(0, description="inference jobs waiting")
    tokens_per_s: float | None = None
    ttft_ms: float | None = Field(None, description="time to first token, last answer")
    frame_to_event_ms: float | None = Field(None, description="capture to publication, last event")
    frame_to_rules_ms: float | None = Field(
        None, description="capture to the last of a frame's rules evaluated, newest frame with rules")
    drops: int = Field(0, description="inference jobs dropped since start, all kinds")
    jobs_dropped: dict[str, int] = Field(
        default_factory=dict, description="jobs dropped because their frame or request went stale, by kind")
    inference_s: dict[str, float] = Field(
        default_factory=dict, description="inference seconds since start, by kind: ask, rules, detect, describe, control")
    rules: dict[str, list[RuleState]] = Field(default_factory=dict, description="each camera's rules")
    engine_loads: int = Field(0, description="times the model was loaded since start (a reload does not load it)")
    prompt_version: str | None = Field(None, description="version of the system prompt in use")
    images_encoded: int | None = Field(None, description="pictures the vision encoder has read since start")
    sessions: int | None = Field(None, description="conversations held in memory")


class DoorState(_Model):
    """How a door beyond the bus (MQTT, HTTP) is doing."""

    state: Literal["starting", "connecting", "connected", "reconnecting", "refused", "listening", "failed"]
    detail: str = Field("", description="where it is connected or listening, or why not")


class Status(InferenceFigures):
    """The daemon's status: the bus's own figures, each camera's report, and the agent's."""

    uptime_s: float
    cameras: dict[str, CameraStatus] = Field(default_factory=dict)
    doors: dict[str, DoorState] = Field(default_factory=dict, description="the MQTT and HTTP doors that are enabled")
    requests_busy: int = Field(0, description="requests refused as busy since start")
    detail: str = Field("", description="the daemon's status line, as systemd shows it")


class ErrorEvent(_Model):
    code: str
    message: str


EVENT_DATA: dict[str, type[_Model]] = {
    "detection": Detection, "rule": RuleEvent, "description": Description, "answer": Answer,
    "status": Status, "error": ErrorEvent,
}


class _Envelope(_Model):
    v: Literal[1] = PROTOCOL_VERSION
    seq: int = Field(ge=0, description="counts up by one per topic; a jump means missed events")
    ts: float = Field(description="when the event was published, Unix seconds")
    device: str
    camera: str | None = None


class DetectionEvent(_Envelope):
    kind: Literal["detection"] = "detection"
    data: Detection


class RuleEventEnvelope(_Envelope):
    kind: Literal["rule"] = "rule"
    data: RuleEvent


class DescriptionEvent(_Envelope):
    kind: Literal["description"] = "description"
    data: Description


class AnswerEvent(_Envelope):
    kind: Literal["answer"] = "answer"
    data: Answer


class StatusEvent(_Envelope):
    kind: Literal["status"] = "status"
    data: Status


class ErrorEventEnvelope(_Envelope):
    kind: Literal["error"] = "error"
    data: ErrorEvent


Event = Annotated[
    DetectionEvent | RuleEventEnvelope | DescriptionEvent | AnswerEvent | StatusEvent | ErrorEventEnvelope,
    Field(discriminator="kind"),
]
EVENT = TypeAdapter(Event)


def topic(kind: str, camera: str | None) -> str:
    """``edged.<kind>.<camera>``, or ``edged.<kind>`` for device-wide events like status."""
    return f"edged.{kind}.{camera}" if camera else f"edged.{kind}"


# -- rules: the config's [[cameras.NAME.rules]] and rules.set both give one --------------


class RuleConfig(_Model):
    """One ``[[cameras.<name>.rules]]`` entry: a yes/no condition watched on every new frame."""

    id: Name
    when: str = Field(min_length=1, max_length=500, description="the condition, in plain words")
    on_threshold: float = Field(0.7, ge=0, le=1, description="P(yes) at or above which it counts as true")
    off_threshold: float = Field(0.3, ge=0, le=1, description="P(yes) at or below which it counts as false")
    consecutive: int = Field(2, ge=1, description="evaluations in a row above on_threshold before 'begin'")
    cooldown_s: float = Field(30.0, ge=0, description="after 'end', seconds before it may begin again")

    @model_validator(mode="after")
    def _thresholds(self) -> RuleConfig:
        if self.off_threshold > self.on_threshold:
            raise ValueError("off_threshold must not be above on_threshold")
        return self

    @property
    def version(self) -> str:
        """Changes whenever the rule's text or thresholds change."""
        import hashlib

        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]


# -- requests and replies (ROUTER) ---------------------------------------------------------


class _Request(_Model):
    v: Literal[1] = PROTOCOL_VERSION
    id: str = Field(min_length=1, max_length=128, description="chosen by the client; replies carry it")


def _partial(model: type[_Model], name: str, doc: str) -> type[_Model]:
    """``model`` with every field that has a default made optional (None: the default applies),
    the rest as they are: same names, types, bounds and descriptions, one owner."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        if info.is_required():
            fields[key] = (info.annotation, info)
        else:
            optional = copy.copy(info)
            optional.default = None
            fields[key] = (info.annotation | None, optional)
    return create_model(name, __base__=_Model, __doc__=doc, **fields)


RuleSpec = _partial(RuleConfig, "RuleSpec", "A rule as rules.set gives it; omitted thresholds take the config's defaults.")


class Turn(_Model):
    """One earlier turn of a conversation, as text."""

    role: Literal["user", "assistant"]
    text: str = Field(max_length=20000)


class AskRequest(_Request):
    op: Literal["ask"] = "ask"
    question: str = Field(min_length=1, max_length=4000)
    camera: CameraName | None = Field(None, description="whose newest frame to ask about")
    frame_seq: int | None = Field(
        None, ge=0, description="ask about this frame of the camera (an event's provenance.frame_seq) instead "
        "of the newest; the agent keeps the last [agent] frames_kept frames")
    image: str | None = Field(
        None, description="ask about this picture (JPEG or PNG, base64) instead of a camera's frame")
    without_picture: bool = Field(False, description="ask the model alone: no camera frame, no picture")
    session: str | None = Field(None, max_length=128, description="continue this conversation")
    history: list[Turn] = Field(
        default_factory=list, max_length=64,
        description="the conversation's earlier turns, user first, alternating, an assistant turn last: read after "
        "the picture, unless a state remembered by content already holds them (remember)")
    remember: bool = Field(
        False, description="keep the conversation's state under a name made from its content (picture, turns, this "
        "answer), so that a later ask carrying it as history continues it instead of reading it again; the "
        "answer's session field gives the name")
    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2, description="0: the most likely token each step; above 0: sampled")
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=4, description="strings that end the answer (not included in it)")
    json_schema: dict[str, Any] | None = Field(None, description="the answer is JSON valid against this schema")

    @model_validator(mode="after")
    def _one_picture(self) -> AskRequest:
        if self.frame_seq is not None and self.camera is None:
            raise ValueError("frame_seq names a frame of one camera: give camera too")
        pictures = [self.camera is not None, self.image is not None, self.without_picture]
        if sum(pictures) > 1:
            raise ValueError("camera, image and without_picture each say what the question is about: give one")
        if self.session is not None and (self.history or self.remember):
            raise ValueError("session names a conversation; history and remember find one by its content: not both")
        if self.history and (self.history[0].role != "user" or self.history[-1].role != "assistant"
                             or any(a.role == b.role for a, b in zip(self.history, self.history[1:]))):
            raise ValueError("history: turns alternate, the user's first and the assistant's last")
        return self


class DescribeRequest(_Request):
    op: Literal["describe"] = "describe"
    camera: CameraName


class DetectRequest(_Request):
    op: Literal["detect"] = "detect"
    camera: CameraName
    labels: list[str] | None = Field(None, description="only these kinds of object")


class RulesListRequest(_Request):
    op: Literal["rules.list"] = "rules.list"
    camera: CameraName | None = None


class RulesSetRequest(_Request):
    op: Literal["rules.set"] = "rules.set"
    camera: CameraName
    rules: list[RuleSpec]


class SnapshotRequest(_Request):
    op: Literal["snapshot"] = "snapshot"
    camera: CameraName
    frame_seq: int | None = Field(
        None, ge=0, description="this kept frame (an event's provenance.frame_seq) instead of the newest")
    format: Literal["jpeg", "png"] = "jpeg"


class Snapshot(_Model):
    """The newest frame the model has seen, with the last detection's boxes and the rules'
    states drawn on it; ``image`` is the picture, base64-encoded."""

    camera: str
    frame_seq: int
    frame_ts: float
    width: int
    height: int
    media_type: Literal["image/jpeg", "image/png"]
    image: str
    objects: list[DetectedObject] = Field(default_factory=list, description="the boxes drawn")
    rules: list[RuleState] = Field(default_factory=list)


class SessionsDropRequest(_Request):
    op: Literal["sessions.drop"] = "sessions.drop"
    session: str = Field(min_length=1, max_length=128)


class StatusRequest(_Request):
    op: Literal["status"] = "status"


Request = Annotated[
    AskRequest | DescribeRequest | DetectRequest | RulesListRequest | RulesSetRequest | SnapshotRequest
    | SessionsDropRequest | StatusRequest,
    Field(discriminator="op"),
]
REQUEST = TypeAdapter(Request)
OPS = ("ask", "describe", "detect", "rules.list", "rules.set", "snapshot", "sessions.drop", "status")

ErrorCode = Literal["bad_request", "unknown_op", "too_large", "busy", "deadline", "not_found", "unavailable", "internal"]


class ErrorInfo(_Model):
    code: ErrorCode
    message: str


class Reply(_Model):
    v: Literal[1] = PROTOCOL_VERSION
    id: str | None = Field(description="the request's id; null when the request had none readable")
    ok: bool
    partial: bool = Field(False, description="more replies follow for this id")
    data: Any = None
    error: ErrorInfo | None = None


def all_schemas() -> dict[str, Any]:
    """JSON Schema of the envelope, every event kind, every request and the reply."""
    return {
        "version": PROTOCOL_VERSION,
        "event": EVENT.json_schema(),
        "events": {kind: model.model_json_schema() for kind, model in EVENT_DATA.items()},
        "request": REQUEST.json_schema(),
        "reply": Reply.model_json_schema(),
    }
