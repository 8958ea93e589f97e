"""The inference thread's queue: jobs by priority, each with a deadline past which it is
dropped and counted instead of run, and cameras taken in turn.

Priorities, most urgent first: control (config changes), ask (any request a client waits
for), rules, detect, describe. Within a priority, first come first served.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

CONTROL, ASK, RULES, DETECT, DESCRIBE = range(5)
KIND_NAMES = {CONTROL: "control", ASK: "ask", RULES: "rules", DETECT: "detect", DESCRIBE: "describe"}

T = TypeVar("T")


@dataclass(order=True)
class Job:
    priority: int
    order: int
    deadline: float = field(compare=False)
    """time.monotonic() after which the job is no longer worth running."""
    run: Callable[[], None] = field(compare=False)
    expire: Callable[[], None] = field(compare=False, default=lambda: None)
    """Called instead of ``run`` when the deadline has passed (e.g. to tell a client)."""


class JobQueue:
    """Thread-safe: the bus and main threads put, the inference thread takes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._heap: list[Job] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._added = threading.Event()
        self._clock = clock
        self.dropped: Counter[str] = Counter()

    def put(self, priority: int, run: Callable[[], None], deadline: float = float("inf"),
            expire: Callable[[], None] = lambda: None) -> None:
        with self._lock:
            heapq.heappush(self._heap, Job(priority, next(self._order), deadline, run, expire))
        self._added.set()

    def take(self, most_urgent: int = DESCRIBE) -> Job | None:
        """The most urgent job of priority ``most_urgent`` or better that is still in time;
        expired ones met on the way are dropped and counted."""
        while True:
            with self._lock:
                if not self._heap or self._heap[0].priority > most_urgent:
                    return None
                job = heapq.heappop(self._heap)
            if self._clock() <= job.deadline:
                return job
            self.dropped[KIND_NAMES[job.priority]] += 1
            job.expire()

    def wait(self, timeout: float) -> None:
        """Until a job is put, or ``timeout`` seconds."""
        self._added.wait(timeout)
        self._added.clear()

    def __len__(self) -> int:
        return len(self._heap)


class RoundRobin(Generic[T]):
    """Visits names in turn, starting after the one served last, so a busy camera cannot
    keep the others waiting."""

    def __init__(self) -> None:
        self._last: str | None = None

    def first(self, names: Sequence[str], ready: Callable[[str], T | None]) -> tuple[str, T] | None:
        """The first name after the last one served for which ``ready`` gives something."""
        if not names:
            return None
        start = names.index(self._last) + 1 if self._last in names else 0
        for name in [*names[start:], *names[:start]]:
            found = ready(name)
            if found is not None:
                self._last = name
                return name, found
        return None
