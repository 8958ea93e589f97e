"""Generating from a state: tokens picked one at a time (greedy or sampled), streamed as text,
ended by an end-of-turn token, a stop string, the token budget, a full state or a cancel,
and optionally held to a JSON schema (llguidance, as ORT GenAI's own guidance)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edged.engine.errors import EngineError
from edged.engine.sampling import SamplingOptions, TokenSampler
from edged.engine.state import State

if TYPE_CHECKING:
    from edged.engine.engine import Engine

FinishReason = Literal["eos", "length", "stop", "cancelled"]


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    """Strings that end the answer; the answer's text stops before them."""
    sampling: SamplingOptions = SamplingOptions()
    json_schema: dict[str, Any] | None = None
    """Constrain the answer to JSON valid against this schema (llguidance)."""


@dataclass
class Generation:
    """A generation in progress: iterate it for (token, text) as they come, then read the
    outcome. The state follows along: afterwards it holds the prompt and the answer (the
    answer's last token pending), ready for a follow-up."""

    engine: Engine
    state: State
    options: GenerationOptions
    cancel: threading.Event | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        engine, state, options = self.engine, self.state, self.options
        sampler = TokenSampler(options.sampling)
        stream = engine.tokenizer.create_stream()
        grammar = _Grammar(engine, options.json_schema) if options.json_schema is not None else None
        held = ""  # text that might be the start of a stop string, not yet emitted
        engine.extend(state, [])  # run any pending token so the logits are current
        for step in range(options.max_tokens):
            if self.cancel is not None and self.cancel.is_set():
                self.finish_reason = "cancelled"
                break
            allowed = grammar.allowed() if grammar else None
            context = [*state.tokens, *state.pending] if options.sampling.repetition_penalty != 1.0 else ()
            token = sampler.pick(state.logits, context, allowed)  # type: ignore[arg-type]
            self.tokens.append(token)
            state.pending.append(token)
            engine.counters.tokens_generated += 1
            if grammar:
                grammar.consume(token)
            if token in engine.eos_token_ids:
                self.finish_reason = "eos"
                break
            held += stream.decode(token)
            cut = _stop_at(held, options.stop)
            if cut is not None:
                self.text += held[:cut]
                self.finish_reason = "stop"
                return
            emit, held = _split_possible_stop(held, options.stop)
            self.text += emit
            yield token, emit
            if grammar and grammar.done():  # the document is complete
                self.finish_reason = "eos"
                break
            if step + 1 == options.max_tokens or state.length > engine.max_length:
                self.finish_reason = "length"  # asked for no more, or the state is full
                break
            engine.extend(state, [])
        else:
            self.finish_reason = "length"
        self.text += held

    def run(self) -> Generation:
        """Generate to the end without streaming."""
        for _ in self:
            pass
        return self


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _split_possible_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
    """Text safe to emit, and a tail that could still grow into a stop string."""
    keep = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-length:]):
                keep = max(keep, length)
                break
    return (text[:-keep], text[-keep:]) if keep else (text, "")


class _Grammar:
    """JSON-schema constrained decoding through llguidance, the library ORT GenAI's own
    guidance uses: at each step, the tokens that can continue a valid document."""

    _tokenizers: dict[str, Any] = {}  # building one takes about a second: once per model

    def __init__(self, engine: Engine, schema: dict[str, Any]) -> None:
        import llguidance

        tokenizer = self._tokenizers.get(engine.fingerprint)
        if tokenizer is None:
            tokenizer = llguidance.LLTokenizer(
                (engine.package / "tokenizer.json").read_text(),
                n_vocab=engine.manifest.architecture.vocab_size,
                eos_token=sorted(engine.eos_token_ids)[0],
            )
            self._tokenizers[engine.fingerprint] = tokenizer
        self._size = engine.manifest.architecture.vocab_size
        # Compact JSON unless the schema says otherwise: whitespace costs a small board tokens.
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        self._matcher = llguidance.LLMatcher(tokenizer, grammar)
        if self._matcher.is_error():
            raise EngineError(f"invalid JSON schema: {self._matcher.get_error()}")

    def allowed(self) -> np.ndarray:
        mask = np.full((self._size + 31) // 32, -1, dtype=np.int32)
        self._matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        return np.unpackbits(mask.view(np.uint8), bitorder="little")[: self._size].astype(bool)

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise EngineError(f"the grammar refused token {token}: {self._matcher.get_error()}")

    def done(self) -> bool:
        return self._matcher.is_stopped()
