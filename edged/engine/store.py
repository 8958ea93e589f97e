"""Where states live: prefix states by what they read, conversations under a memory budget.

Prefix states ("the model after the system prompt and rules") are keyed by the model's
fingerprint and their token ids, kept in memory and saved, so a restart with the same
config starts warm. One saved under other arithmetic (persist.py: after an upgrade of
onnxruntime, say) is deleted and read again, so that it gives what a fresh read gives.
Conversation states live in a least-recently-used map whose total size never exceeds the
budget: the least recently used spill to disk and come back on their next question. At stop
every session is saved. A conversation saved under other arithmetic goes on under the new:
it cannot always be read again (its picture is not kept), and dropping it would lose what
was said.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import structlog

from edged.engine.persist import ComputedElsewhere, StateFileError, load_state, read_metadata, save_state, set_aside
from edged.engine.state import State

log = structlog.get_logger()


def _file_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _refuse(path: Path, error: StateFileError, what: str, **fields: str) -> None:
    """Log why a state file was refused and move it aside, so the next start or question
    does not trip over it again; it is kept under ``<state dir>/refused`` for inspection.
    A prefix computed under other arithmetic is sound, and every one would be so after an
    upgrade of onnxruntime: it is deleted rather than kept, and read again."""
    if isinstance(error, ComputedElsewhere):
        path.unlink(missing_ok=True)
        log.info(f"{what} computed under other arithmetic; reading it again", reason=str(error), **fields)
        return
    moved = set_aside(path, path.parent.parent / "refused")
    log.warning(f"{what} refused; starting fresh", reason=str(error),
                moved_to=str(moved) if moved else "(could not be moved)", **fields)


class PrefixStore:
    """States after fixed prompt prefixes, in memory and under ``directory/prefixes``."""

    def __init__(self, directory: Path, fingerprint: str, arithmetic: str, device: str = "cpu") -> None:
        """``arithmetic``, ``device``: the engine's (``Engine.arithmetic``, ``Engine.device``:
        where loaded states' tensors go)."""
        self.directory = directory / "prefixes"
        self.fingerprint = fingerprint
        self.arithmetic = arithmetic
        self.device = device
        self._states: dict[str, State] = {}

    def _key(self, tokens: Sequence[int]) -> str:
        return _file_key(self.fingerprint, ",".join(map(str, tokens)))

    def get(self, tokens: Sequence[int]) -> State | None:
        """A fork of the stored state for exactly these tokens, from memory or disk."""
        key = self._key(tokens)
        state = self._states.get(key)
        if state is None:
            path = self.directory / f"{key}.safetensors"
            if not path.exists():
                return None
            try:
                state = load_state(path, self.fingerprint, self.arithmetic, self.device)
                if state.tokens + state.pending != list(tokens):
                    raise StateFileError(f"{path}: holds other tokens")
            except StateFileError as error:
                _refuse(path, error, "prefix state")
                return None
            self._states[key] = state
        return state.fork()

    def put(self, tokens: Sequence[int], state: State) -> None:
        key = self._key(tokens)
        self._states[key] = state.fork()
        save_state(state, self.directory / f"{key}.safetensors")


class SessionStore:
    """Conversation states by session id, at most ``budget_bytes`` of them in memory."""

    def __init__(self, directory: Path, fingerprint: str, arithmetic: str, budget_bytes: int,
                 device: str = "cpu") -> None:
        """``arithmetic``, ``device``: the engine's (``Engine.arithmetic``, ``Engine.device``:
        where loaded states' tensors go)."""
        self.directory = directory / "sessions"
        self.fingerprint = fingerprint
        self.arithmetic = arithmetic
        self.device = device
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[str, State] = OrderedDict()
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def _path(self, session: str) -> Path:
        return self.directory / f"{_file_key(session)}.safetensors"

    def get(self, session: str) -> State | None:
        """The session's state (the store keeps its own copy), from memory or disk."""
        state = self._states.get(session)
        if state is not None:
            self._states.move_to_end(session)
            return state.fork()
        path = self._path(session)
        if not path.exists():
            return None
        try:
            if read_metadata(path).get("session") != session:
                raise StateFileError(f"{path}: belongs to another session")
            state = load_state(path, self.fingerprint, None, self.device)
        except StateFileError as error:
            _refuse(path, error, "session state", session=session)
            return None
        if state.arithmetic != self.arithmetic:
            log.info("session goes on under other arithmetic than it was read with", session=session,
                     saved_under=state.arithmetic or "(not recorded)", now=self.arithmetic)
        self.put(session, state)
        return state.fork()

    def put(self, session: str, state: State) -> None:
        """Keep ``state`` as the session's latest; spill the least recently used past the budget."""
        self.drop(session, forget=False)
        self._states[session] = state.fork()
        self.used_bytes += state.nbytes
        while self.used_bytes > self.budget_bytes and self._states:
            oldest, evicted = self._states.popitem(last=False)
            self.used_bytes -= evicted.nbytes
            save_state(evicted, self._path(oldest), {"session": oldest})
            log.debug("session spilled to disk", session=oldest, bytes=evicted.nbytes)

    def drop(self, session: str, forget: bool = True) -> bool:
        """Remove a session from memory (and from disk when ``forget``); True if it existed."""
        state = self._states.pop(session, None)
        if state is not None:
            self.used_bytes -= state.nbytes
        path = self._path(session)
        existed = state is not None or path.exists()
        if forget:
            path.unlink(missing_ok=True)
        return existed

    def save_all(self, deadline: float = float("inf")) -> int:
        """Save the sessions in memory (at stop), most recently used first, until
        ``deadline`` (time.monotonic()); the number saved."""
        saved = 0
        for session, state in reversed(self._states.items()):
            if time.monotonic() > deadline:
                break
            save_state(state, self._path(session), {"session": session})
            saved += 1
        return saved
