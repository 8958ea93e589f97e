"""Each side of a comparison loaded alone, in a process of its own, as a user runs it; the
parent times the sides in turn (timing.best_in_turn) by calling on them. What a side loads
and runs is named by its factory (bench.engine.side_timings), which the child imports.

Loaded into one process, engines are not equal: at 0.8B on two threads, whichever of edged
and og.Generator loaded second decoded 3 to 7% faster, both ways round (edged 43.3 tok/s
against og's 41.8 loaded after it, 41.0 against 43.4 loaded before it). One process per side
takes that out of the ratio.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from edged.bench.children import dies_with_parent


class SideProcess:
    """``factory`` ("module:function") called with ``args`` in a child process gives the
    side's timed runs by name, each returning the seconds it counts, and a fact about the side
    (``fact``: for edged, whether its threads spin). ``figures`` runs them there."""

    def __init__(self, factory: str, *args: Any) -> None:
        ours, theirs = socket.socketpair()
        # Whatever a side prints goes to the bench's stderr: its stdout may be the --json report.
        self._process = subprocess.Popen([sys.executable, "-m", "edged.bench.sides", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], stdout=2, preexec_fn=dies_with_parent)
        theirs.close()
        self._connection = Connection(ours.detach())
        self._connection.send((factory, args))
        try:
            names, self.fact = self._answer()
        except RuntimeError:
            self.close()
            raise
        self.figures: dict[str, Callable[[], float]] = {name: self._runner(name) for name in names}

    def _runner(self, name: str) -> Callable[[], float]:
        def run() -> float:
            self._connection.send(name)
            return self._answer()
        return run

    def _answer(self) -> Any:
        try:
            failed, value = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"a bench side's process ended (exit status {self._process.wait()})") from None
        if failed:
            raise RuntimeError(f"a bench side failed:\n{value}")
        return value

    def close(self) -> None:
        self._connection.close()  # the child ends at the end of its input
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> SideProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(connection: Connection) -> None:
    try:
        factory, args = connection.recv()
        module, name = factory.split(":")
        timings, fact = getattr(importlib.import_module(module), name)(*args)
        connection.send((False, (list(timings), fact)))
        while True:
            try:
                figure = connection.recv()
            except EOFError:
                return
            connection.send((False, timings[figure]()))
    except Exception:
        connection.send((True, traceback.format_exc()))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
