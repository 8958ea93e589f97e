"""The inference thread's queue: jobs by kind, each with a deadline past which it is
dropped and counted instead of run, inference time shared fairly between kinds, and
cameras taken in turn.

Kinds: control (config changes, always first), ask (any request a client waits for),
rules, detect, describe. While several kinds have work waiting, each gets inference time
in proportion to its share (ask 0.5, rules 0.3, detect 0.1, describe 0.1): a flood of
questions cannot stop the rules, and rules cannot stop descriptions. A kind that was idle
(nothing waiting or running) comes back level with the lowest claim of the busy kinds: it
banks no credit while idle, and is not set behind the job running either. One kind alone
gets all the time. Between kinds with equal claims the more urgent goes first; within a
kind, first come first served.
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
SHARES = {ASK: 0.5, RULES: 0.3, DETECT: 0.1, DESCRIBE: 0.1}
"""Each kind's share of inference time while the others have work waiting too."""

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
    nestable: Callable[[], bool] = field(compare=False, default=lambda: True)
    """Whether the job may run now between the pieces of another (``take_waiting``)."""


class JobQueue:
    """Thread-safe: the bus and main threads put, the inference thread takes and charges."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._waiting: dict[int, list[Job]] = {kind: [] for kind in KIND_NAMES}
        self._used = dict.fromkeys(SHARES, 0.0)
        """Each kind's inference seconds divided by its share: the fair pick is the lowest."""
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._added = threading.Event()
        self._clock = clock
        self.dropped: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        """Inference seconds charged to each kind, by name: where the time went."""
        self._running: Counter[int] = Counter()
        """Jobs taken and not yet finished, by kind (a job let in runs inside another)."""

    def put(self, priority: int, run: Callable[[], None], deadline: float = float("inf"),
            expire: Callable[[], None] = lambda: None, nestable: Callable[[], bool] = lambda: True) -> None:
        with self._lock:
            if priority in self._used and not self._waiting[priority] and not self._running[priority]:
                # Level with the lowest busy claim, running ones included: leveled with a
                # waiting description's alone, a question that came while a frame's rules ran
                # looked over its share against them and waited for their whole job.
                rivals = [self._used[kind] for kind in self._used if self._waiting[kind] or self._running[kind]]
                self._used[priority] = max(self._used[priority], min(rivals, default=0.0))
            heapq.heappush(self._waiting[priority], Job(priority, next(self._order), deadline, run, expire, nestable))
        self._added.set()

    def take(self) -> Job | None:
        """The next job to run: control first, then the kind furthest below its share;
        every job found past its deadline is dropped and counted on the way."""
        self._drop_expired()
        with self._lock:
            kinds = [kind for kind, jobs in self._waiting.items() if jobs]
            if not kinds:
                return None
            kind = min(kinds, key=lambda k: (self._used.get(k, -1.0), k))  # control: -1, always first
            return self._start(kind)

    def take_waiting(self, kinds: Sequence[int], running: int, yield_to: Sequence[int] = ()) -> Job | None:
        """For a job of kind ``running`` that lets others in between its pieces: the next job
        of one of ``kinds`` that may run there now (``Job.nestable``; the stale dropped first)
        and whose kind has not had more than its share against ``running``'s, the lowest
        claim first. So a flood of questions lets one or two in per frame read, not all: the
        read goes on, and the rules with it. None as well while a job of a kind in
        ``yield_to`` that cannot run there waits and ``take`` would pick it first: the running
        job then goes on alone, ends sooner, and that job is next."""
        self._drop_expired()
        with self._lock:
            def claim(kind: int) -> tuple[float, int]:
                return self._used.get(kind, -1.0), kind

            ready = [kind for kind in kinds if self._waiting[kind] and self._waiting[kind][0].nestable()
                     and claim(kind)[0] <= claim(running)[0]]
            if not ready:
                return None
            kind = min(ready, key=claim)
            if any(self._waiting[other] and claim(other) < claim(kind) for other in yield_to):
                return None
            return self._start(kind)

    def _start(self, kind: int) -> Job:
        job = heapq.heappop(self._waiting[kind])
        self._running[kind] += 1
        return job

    def finish(self, job: Job) -> None:
        """The job taken has ended (after its last ``charge``)."""
        with self._lock:
            self._running[job.priority] -= 1

    def charge(self, job: Job, seconds: float) -> None:
        """Count ``seconds`` of inference time against the job's kind."""
        with self._lock:
            self.seconds[KIND_NAMES[job.priority]] += seconds
            if job.priority in SHARES:
                self._used[job.priority] += seconds / SHARES[job.priority]

    def waiting(self, priority: int) -> int:
        """Jobs of this kind waiting to run."""
        return len(self._waiting[priority])

    def arm(self) -> None:
        """Forget earlier wake-ups: call before looking for work, so that whatever arrives
        after the look (a job, or a frame whose camera calls ``wake``) ends the next ``wait``."""
        self._added.clear()

    def wait(self, timeout: float) -> None:
        """Until a job is put or ``wake`` is called since the last ``arm``, or ``timeout`` seconds."""
        self._added.wait(timeout)

    def wake(self) -> None:
        self._added.set()

    def _drop_expired(self) -> None:
        now = self._clock()
        with self._lock:
            expired = [job for jobs in self._waiting.values() for job in jobs if job.deadline < now]
            if expired:
                for kind, jobs in self._waiting.items():
                    self._waiting[kind] = [job for job in jobs if job.deadline >= now]
                    heapq.heapify(self._waiting[kind])
        for job in sorted(expired):
            self.dropped[KIND_NAMES[job.priority]] += 1
            job.expire()

    def __len__(self) -> int:
        return sum(map(len, self._waiting.values()))


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
