"""The model's state as a value: everything it has read, as tensors that can be forked,
kept and saved.

A Gated DeltaNet layer's state (a short convolution window and a recurrent matrix) has a
fixed size whatever it has read; only the full-attention layers keep a KV cache that grows
by one entry per token. Tensors are onnxruntime OrtValues. A fork shares them with its
parent, copy-on-write: forking copies nothing, a shared tensor is never written, and a run
on a shared state allocates new outputs; a state that owns its DeltaNet tensors has them
updated in place while it decodes. A KV cache may hold room past the tokens read (positions
``len(tokens)`` on, along its third axis), which decoding fills in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnxruntime as ort


@dataclass
class State:
    fingerprint: str
    """The model package it was computed by; no other model may continue it."""
    arithmetic: str
    """What else its numbers depend on (``Engine.arithmetic``): onnxruntime's version, the
    provider and the decoder graph as run. Saved with it (persist.py, store.py)."""
    tokens: list[int] = field(default_factory=list)
    """Every token run through the model, image pad tokens included."""
    pending: list[int] = field(default_factory=list)
    """Tokens appended but not yet run: the last generated token waits here, so a follow-up
    runs it together with the next prompt instead of in a step of its own."""
    next_position: int = 0
    """Rotary position of the next token; an image advances it by less than its token count."""
    tensors: dict[str, ort.OrtValue] = field(default_factory=dict, repr=False)
    """Decoder state by input name (past.{i}.conv, past.{i}.recurrent, past_key_values.{i}.*)."""
    logits: np.ndarray | None = field(default=None, repr=False)
    """Next-token logits after ``tokens``; None when nothing has run or tokens are pending."""
    owned: set[str] = field(default_factory=set, repr=False)
    """Tensors no other state shares: the decoder may update these in place."""
    step_binding: tuple[Any, tuple[ort.OrtValue, ...]] | None = field(default=None, repr=False, compare=False)
    """The engine's: the decoder binding of this state's last step, and the tensors bound in
    it, which the next step reuses when it updates the same tensors in place. Kept here so
    that it goes when the state goes, with the references it holds."""

    def fork(self) -> State:
        """An independent copy; neither this state nor the fork sees the other's extensions."""
        self.owned = set()  # shared from now on: the next run of either allocates anew
        return replace(self, tokens=list(self.tokens), pending=list(self.pending), tensors=dict(self.tensors), owned=set(),
                       step_binding=None)

    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors as numpy arrays of what the state has read: KV caches without their room."""
        used = len(self.tokens)
        return {name: value.numpy()[:, :, :used] if is_kv_cache(name) else value.numpy()
                for name, value in self.tensors.items()}

    @property
    def length(self) -> int:
        """Tokens the state holds, pending ones included."""
        return len(self.tokens) + len(self.pending)

    @property
    def nbytes(self) -> int:
        tensors = sum(value.tensor_size_in_bytes() for value in self.tensors.values())
        return tensors + (self.logits.nbytes if self.logits is not None else 0) + 8 * self.length


def is_kv_cache(name: str) -> bool:
    """past_key_values.{i}.key and .value: (batch, heads, positions, head size)."""
    return name.startswith("past_key_values.")
