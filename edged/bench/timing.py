"""How a benchmark times one thing: the best of several runs after a warm-up; and several
sides of a comparison, their runs taken in turn."""

from __future__ import annotations

import time
from collections.abc import Callable


def best(run: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs, after one warm-up run."""
    run()
    return min(seconds(run) for _ in range(repeats))


def seconds(run: Callable[[], object]) -> float:
    """How long one run takes."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def best_in_turn(sides: dict[str, dict[str, Callable[[], float]]], repeats: int, span_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> dict[str, dict[str, float]]:
    """For each side of a comparison and each of its figures (a run that returns the seconds it
    counts), the fastest of its runs after a warm-up, the sides taking turns at each figure:
    ``repeats`` rounds, and more until the rounds have taken ``span_s`` seconds. A shared
    machine's speed drifts by a fifth over minutes: timed one side after the other, a side can
    fall in a slow stretch the other missed, and the ratio shows the machine; in turn, both meet
    the same stretches. The span is for a side whose own speed comes and goes in stretches of
    seconds (llama.cpp here): a few rounds in a row can all fall in one."""
    for figures in sides.values():
        for run in figures.values():
            run()
    fastest: dict[str, dict[str, float]] = {side: {} for side in sides}
    figure_names = list(dict.fromkeys(name for figures in sides.values() for name in figures))
    started, rounds = clock(), 0
    while rounds < repeats or clock() - started < span_s:
        for name in figure_names:
            for side, figures in sides.items():
                if name in figures:
                    taken = figures[name]()
                    fastest[side][name] = min(taken, fastest[side].get(name, taken))
        rounds += 1
    return fastest
