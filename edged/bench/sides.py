"""Each side of a comparison loaded alone, in a process of its own, as a user runs it; the
parent times the sides in turn (timing.best_in_turn) by calling on them. What a side loads
and runs is named by its factory (bench.engine.side_timings), which the child imports.

Loaded into one process, engines are not equal: at 0.8B on two threads, whichever of edged
and og.Generator loaded second decoded 3 to 7% faster, both ways round (edged 43.3 tok/s
against og's 41.8 loaded after it, 41.0 against 43.4 loaded before it). One process per side
takes that out of the ratio.

Nor are processes, on a virtual machine: two identical processes, loaded one after the
other with no other engine alive, decode 5 to 8% apart, and the first is the slower (0.8B, 2
threads: 41.9 against 44.5 tok/s), its weights on 4 KiB pages of memory the host backs
afresh. edged now moves its weights onto huge pages, which takes that away (memory.py), but
og.Generator and llama.cpp keep theirs on 4 KiB pages. So ``best_loaded_both_ways`` loads the
sides once in each order and keeps each side's best.
"""

from __future__ import annotations

import importlib
import math
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from multiprocessing.connection import Connection
from typing import Any

from edged.bench.children import dies_with_parent
from edged.bench.timing import best_in_turn


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


def best_loaded_both_ways(factory: str, sides: dict[str, tuple[Any, ...]], repeats: int,
                          figures: Sequence[str] | None = None) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Each side's figures (``figures``, by default all it has) timed in turn with the others
    (timing.best_in_turn), the sides loaded in the order given and then in the reverse order,
    half the repeats each; for each side and figure the best of both loadings. Also each
    side's ``fact`` from the last loading."""
    fastest: dict[str, dict[str, float]] = {name: {} for name in sides}
    facts: dict[str, Any] = {}
    for order in (list(sides), list(reversed(sides))):
        with ExitStack() as stack:
            loaded = {name: stack.enter_context(SideProcess(factory, *sides[name])) for name in order}
            timed = best_in_turn({name: {figure: run for figure, run in loaded[name].figures.items()
                                         if figures is None or figure in figures} for name in sides},
                                 max(1, math.ceil(repeats / 2)))
            facts = {name: side.fact for name, side in loaded.items()}
        for name, taken in timed.items():
            for figure, value in taken.items():
                fastest[name][figure] = min(value, fastest[name].get(figure, value))
    return fastest, facts


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
