"""What the engine raises when it cannot do what it was asked."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine cannot carry out; the message says why."""


class Cancelled(Exception):
    """Work cut off because the daemon is stopping: a generation between two tokens, or a
    vision encoder run in progress (Engine.stop_runs)."""


class ContextFullError(EngineError):
    """An extend would take a state past ``max_length`` tokens; nothing was run."""
