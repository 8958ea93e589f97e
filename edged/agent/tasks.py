"""What the model does with a frame, apart from when: read it once, then answer rules,
descriptions, detections and questions from forks of that one state.

The daemon's inference thread (agent.py) and ``edged replay`` (replay.py) both drive this;
only their clocks and their order of work differ.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.agent.rules import RuleTracker
from edged.bus.schema import Description, DetectedObject, Detection, Provenance, RuleConfig, RuleEvent
from edged.capture.frame import Frame
from edged.engine.engine import Engine, GenerationOptions
from edged.engine.errors import Cancelled, EngineError
from edged.engine.generation import Generation
from edged.engine.prompt_format import ANSWER, USER_IMAGE, conversation, rule_question, system_turn
from edged.engine.sampling import SamplingOptions
from edged.engine.state import State
from edged.engine.store import PrefixStore
from edged.models.model_settings import ModelConfig

log = structlog.get_logger()

DESCRIBE_PROMPT = "Describe the scene in one sentence."


@dataclass
class ReadFrame:
    """A frame after the model has read it: every task on the frame forks ``state``."""

    frame: Frame
    state: State
    provenance: Provenance


@dataclass
class Figures:
    """The last answer's speed, for status."""

    tokens_per_s: float | None = None
    ttft_ms: float | None = None


def prompt_version(system_prompt: str) -> str:
    return hashlib.sha256(system_prompt.encode()).hexdigest()[:8]


def load_engine(package: Path, model: ModelConfig) -> Engine:
    """The engine as ``[model]`` configures it. For ``rules_per_batch`` above 1 its decoder is
    loaded to take batches of rows; one that cannot (a graph the rewrite does not know, a
    provider without ONNX's Attention) loads as it is, and the rules run one after another."""
    def load(rows: bool) -> Engine:
        return Engine(package, threads=model.threads, max_length=model.max_length, spin=model.spin_choice, rows=rows)

    if model.rules_per_batch > 1:
        try:
            return load(rows=True)
        except Exception as error:  # onnxruntime's errors are not of one class
            log.warning("a frame's rules run one after another: the decoder did not load for batches",
                        rules_per_batch=model.rules_per_batch, reason=_last_line(error))
    return load(rows=False)


def _last_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


class FrameTasks:
    """One engine and the system prompt's state; not thread-safe (one inference thread)."""

    def __init__(self, engine: Engine, system_prompt: str, prefixes: PrefixStore | None = None,
                 on_prefix_error: Callable[[OSError], None] = lambda error: None, rules_per_batch: int = 1) -> None:
        self.engine = engine
        self.rules_per_batch = rules_per_batch if engine.rows else 1
        """How many of a frame's rules run in one decoder call: 1 unless the engine was loaded
        for rows, and 1 from the first batch that fails."""
        self.figures = Figures()
        self._prefixes = prefixes
        self._on_prefix_error = on_prefix_error
        self.set_system_prompt(system_prompt)
        yes = [engine.encode(w)[0] for w in ("Yes", "yes", " Yes", " yes")]
        no = [engine.encode(w)[0] for w in ("No", "no", " No", " no")]
        self._yes, self._no = sorted(set(yes)), sorted(set(no) - set(yes))

    def set_system_prompt(self, system_prompt: str) -> None:
        """Read the system prompt once (or load its saved state): every frame starts from it."""
        tokens = self.engine.encode(system_turn(system_prompt))
        prefix = self._prefixes.get(tokens) if self._prefixes else None
        if prefix is None:
            prefix = self.engine.new_state()
            self.engine.extend(prefix, tokens)
            if self._prefixes:
                try:
                    self._prefixes.put(tokens, prefix)
                except OSError as error:  # a read-only state dir costs a warm start, nothing else
                    self._on_prefix_error(error)
        self._prefix = prefix
        self.system_prompt = system_prompt
        self.prompt_version = prompt_version(system_prompt)

    def read(self, frame: Frame, between: Callable[[], None] | None = None) -> ReadFrame:
        """The frame's state: the system prompt's state forked and extended with the image;
        ``between`` runs between the pieces of the read (Engine.extend_prompt)."""
        provenance = Provenance(frame_seq=frame.seq, frame_ts=round(frame.wall, 3), frame_hash=frame.hash,
                                model=self.engine.fingerprint[:16], prompt_version=self.prompt_version)
        return ReadFrame(frame, self.read_picture(frame.rgb, between), provenance)

    def read_picture(self, rgb: np.ndarray, between: Callable[[], None] | None = None) -> State:
        """The system prompt's state extended with a picture, in a user turn left open for its text."""
        state = self._prefix.fork()
        self.engine.extend_prompt(state, USER_IMAGE, [self.engine.fit_to_grid(rgb)], between=between)
        return state

    def after_system_prompt(self) -> State:
        """A fork of the system prompt's state, for a conversation without a picture."""
        return self._prefix.fork()

    def read_turns(self, state: State, turns: list[tuple[str, str]], user_turn_open: bool) -> None:
        """Earlier turns of a conversation, (role, text) pairs, read into ``state`` as if it had
        held them: after them the state is as a generated answer leaves it, ready for a follow-up."""
        if turns:
            self.engine.extend_prompt(state, conversation(turns, user_turn_open))

    def evaluate_rules(self, read: ReadFrame, trackers: list[RuleTracker],
                       between: Callable[[], None] | None = None) -> Iterator[RuleEvent]:
        """Feed each tracker its rule's P(yes) on this frame (at the frame's time): one
        extend on a fork of the read, no generation, ``rules_per_batch`` rules to a decoder
        call. Yields the events that causes as each call's rules are fed; ``between`` runs
        before each call (the daemon lets waiting questions in)."""
        step = self.rules_per_batch
        for start in range(0, len(trackers), step):
            if between is not None:
                between()
            batch = trackers[start:start + step]
            for tracker, probability in zip(batch, self._rule_probabilities(read, [t.rule for t in batch])):
                phase = tracker.update(probability, read.frame.monotonic)
                if phase is not None:
                    rule = tracker.rule
                    yield RuleEvent(rule=rule.id, version=rule.version, phase=phase, probability=round(probability, 4),
                                    provenance=read.provenance.model_copy(update={"prompt_version": rule.version}))

    def _rule_probabilities(self, read: ReadFrame, rules: list[RuleConfig]) -> list[float]:
        continuations = [self.engine.encode(rule_question(rule.when) + ANSWER) for rule in rules]
        if len(rules) > 1:
            try:
                batched = self.engine.fork_logits(read.state, continuations, rows=len(rules))
                return [self.probability_of_yes(row) for row in batched]
            except (EngineError, Cancelled):
                raise  # what one rule at a time would meet too (a full context, a stop)
            except Exception as error:  # onnxruntime's errors are not of one class
                log.warning("a frame's rules run one after another from now: their batch failed",
                            rules=len(rules), reason=_last_line(error))
                self.rules_per_batch = 1
        return [self.probability_of_yes(row) for row in self.engine.fork_logits(read.state, continuations)]

    def probability_of_yes(self, logits: np.ndarray) -> float:
        """P(yes) against P(no) from the logits after a yes-or-no question."""
        top = max(logits[self._yes].max(), logits[self._no].max())
        yes = np.exp(logits[self._yes] - top).sum()
        no = np.exp(logits[self._no] - top).sum()
        return float(yes / (yes + no))

    def describe(self, read: ReadFrame, cancel: threading.Event | None = None,
                 between: Callable[[], None] | None = None) -> Description:
        """A short description of the read frame; ``between`` runs after each of its tokens."""
        return Description(text=self.generate(read.state.fork(), DESCRIBE_PROMPT, 48, cancel=cancel, between=between),
                           provenance=read.provenance)

    def detect(self, read: ReadFrame, labels: list[str] | None = None,
               cancel: threading.Event | None = None, between: Callable[[], None] | None = None) -> Detection:
        """Objects as JSON constrained to a schema; boxes come in Qwen's 0-1000 coordinates
        and go out in pixels of the frame the model saw. ``between`` runs after each token."""
        only = f" Only these kinds: {', '.join(labels)}." if labels else ""
        text = self.generate(read.state.fork(), "List the objects you see as JSON: label, count, box "
                             f"[x1, y1, x2, y2] in 0-1000 coordinates.{only}", 200, schema=DETECTION_SCHEMA,
                             cancel=cancel, between=between)
        height, width = read.frame.rgb.shape[:2]
        return Detection(objects=objects_in_pixels(text, width, height), provenance=read.provenance)

    def generate(self, state: State, prompt: str, max_tokens: int, on_text: Callable[[str], None] | None = None,
                 schema: dict[str, Any] | None = None, cancel: threading.Event | None = None,
                 between: Callable[[], None] | None = None) -> str:
        """The user turn ``prompt`` on top of ``state`` and the model's answer to it; the
        state follows along. Raises ``Cancelled`` when ``cancel`` is set."""
        options = GenerationOptions(max_tokens=max_tokens, json_schema=schema)
        return self.answer(state, prompt, options, on_text, cancel, between).text.strip()

    def answer(self, state: State, prompt: str, options: GenerationOptions,
               on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
               between: Callable[[], None] | None = None) -> Generation:
        """As ``generate``, with every generation option, and the whole outcome. ``between``
        runs after each token, on other states (the daemon answers waiting questions there);
        the answer is the one an uninterrupted generation gives, and its speed leaves that
        time out."""
        started = time.perf_counter()
        self.engine.extend_prompt(state, f"{prompt}{ANSWER}")
        generation = self.engine.generate(state, options, cancel)
        first, lent = None, 0.0
        for _, piece in generation:
            first = first or time.perf_counter()
            if on_text is not None and piece:
                on_text(piece)
            if between is not None:
                paused = time.perf_counter()
                between()
                lent += time.perf_counter() - paused
        if generation.finish_reason == "cancelled":
            raise Cancelled()
        finished = time.perf_counter() - lent
        if first is not None:
            self.figures.ttft_ms = round((first - started) * 1000, 1)
            if len(generation.tokens) > 1 and finished > first:
                self.figures.tokens_per_s = round((len(generation.tokens) - 1) / (finished - first), 1)
        return generation


def generation_options(max_tokens: int, temperature: float = 0.0, stop: list[str] | None = None,
                       schema: dict[str, Any] | None = None) -> GenerationOptions:
    return GenerationOptions(max_tokens=max_tokens, stop=tuple(stop or ()),
                             sampling=SamplingOptions(temperature=temperature), json_schema=schema)


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
