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


def best_in_turn(sides: dict[str, dict[str, Callable[[], float]]], repeats: int) -> dict[str, dict[str, float]]:
    """For each side of a comparison and each of its figures (a run that returns the seconds it
    counts), the fastest of ``repeats`` runs after a warm-up, the sides taking turns at each
    figure. A shared machine's speed drifts by a fifth over minutes: timed one side after the
    other, a side can fall in a slow stretch the other missed, and the ratio shows the machine;
    in turn, both meet the same stretches."""
    for figures in sides.values():
        for run in figures.values():
            run()
    fastest: dict[str, dict[str, float]] = {side: {} for side in sides}
    figure_names = list(dict.fromkeys(name for figures in sides.values() for name in figures))
    for _ in range(repeats):
        for name in figure_names:
            for side, figures in sides.items():
                if name in figures:
                    taken = figures[name]()
                    fastest[side][name] = min(taken, fastest[side].get(name, taken))
    return fastest
