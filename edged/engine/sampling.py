"""Choosing the next token from logits: greedy, or sampled with temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0
    """0 is greedy (argmax); above 0 samples from softmax(logits / temperature)."""
    top_k: int = 0
    """Sample only among the k most likely tokens; 0 means all."""
    top_p: float = 1.0
    """Sample only among the most likely tokens whose probabilities sum to p."""
    seed: int | None = None
    repetition_penalty: float = 1.0
    """Above 1 makes tokens already in the context less likely (divides positive logits)."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(
                "temperature and top_k must be >= 0, top_p in (0, 1], repetition_penalty > 0"
            )


class TokenSampler:
    """Picks tokens for one generation; a seeded sampler repeats its choices."""

    def __init__(self, options: SamplingOptions) -> None:
        self.options = options
        self._rng = np.random.default_rng(options.seed)

    def pick(self, logits: np.ndarray, context: Sequence[int], allowed: np.ndarray | None = None) -> int:
        """The next token; ``allowed`` (a boolean mask) restricts the choice, e.g. to a grammar."""
        options = self.options
        if options.temperature == 0 and options.repetition_penalty == 1.0 and allowed is None:
            return int(np.argmax(logits))  # plain greedy: no copy of the 1 MB of logits per token
        scores = logits.astype(np.float32, copy=True)
        if options.repetition_penalty != 1.0 and len(context):
            seen = np.unique(np.asarray(context, dtype=np.int64))
            seen = seen[seen < scores.size]
            values = scores[seen]
            scores[seen] = np.where(values > 0, values / options.repetition_penalty, values * options.repetition_penalty)
        if allowed is not None:
            scores[~allowed[: scores.size]] = -np.inf
        if options.temperature == 0:
            return int(np.argmax(scores))
        scores = scores / options.temperature
        if 0 < options.top_k < scores.size:
            threshold = np.partition(scores, -options.top_k)[-options.top_k]
            scores[scores < threshold] = -np.inf
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        if options.top_p < 1.0:
            order = np.argsort(-probabilities)
            cumulative = np.cumsum(probabilities[order])
            keep = order[: int(np.searchsorted(cumulative, options.top_p)) + 1]
            kept = np.zeros_like(probabilities)
            kept[keep] = probabilities[keep]
            probabilities = kept / kept.sum()
        return int(self._rng.choice(probabilities.size, p=probabilities))
