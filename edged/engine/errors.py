"""What the engine raises when it cannot do what it was asked."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine cannot carry out; the message says why."""


class ContextFullError(EngineError):
    """An extend would take a state past ``max_length`` tokens; nothing was run."""
