"""How much of its CPUs the process actually gets, to choose how its inference threads wait.

onnxruntime's intra-op threads spin between pieces of work by default. With the cores to
itself that is the fastest way to wait; on a board where a camera pipeline or another
service keeps a core busy, a spinning thread takes that core's time from the thread that has
the work, and decode fell to half (0.8B, 2 threads, one core busy: 8.9 tok/s spinning, 13.2
sleeping; on idle cores 17.3 and 15.9; docs/engine.md). So the engine measures, as it loads,
what its threads would get, and lets them spin only when every core is free.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

FREE_ENOUGH = 0.85
"""A core counts as free when a thread busy on it gets at least this share of the time."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a unit's CPUAffinity sets)."""
    return len(os.sched_getaffinity(0))


def free_cores(seconds: float = 0.2) -> float:
    """Cores' worth of CPU time that one busy thread per usable core gets over ``seconds``:
    the core count when nothing else runs, less what other processes (and the CPU quota) take.
    The threads hash a buffer, which runs with the GIL released."""
    cores = usable_cores()
    block = bytes(4 << 20)
    got = [0.0] * cores
    start = threading.Barrier(cores + 1)

    def busy(index: int) -> None:
        start.wait()
        began, cpu = time.monotonic(), time.thread_time()
        while time.monotonic() - began < seconds:
            hashlib.sha256(block).digest()
        got[index] = (time.thread_time() - cpu) / (time.monotonic() - began)

    threads = [threading.Thread(target=busy, args=(index,), daemon=True) for index in range(cores)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    return sum(got)

