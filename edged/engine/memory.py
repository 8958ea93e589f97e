"""Memory handed back to the system: large buffers kept out of the heap
(``allocate_large_buffers_apart``), the vision encoder's activations reused within its call
and handed back after it (``reuse_activations_within_each_run``), heap freed after a big
model run, and pages of model files that onnxruntime read once (``release_file_pages``);
and the loaded weights moved onto huge pages (``weights_on_huge_pages``).

ONNX Runtime's CPU arena is off for the decoder and the embedding (see Engine), so what a run
allocates goes back to glibc's malloc when the run ends; but glibc keeps it in the process's
heap for reuse, and a long prompt or an image leaves tens of MB there that the daemon would
hold for nothing. At 0.8B, a 512-token prompt then three of 128 tokens took peak RSS from
889 to 956 MB that way. ``malloc_trim`` gives free heap pages back to the kernel. The call
takes 1 to 5 ms, and the next run of that size faults its pages in again: 0.7 to 2% of a
512- or 128-token prefill at 0.8B. So it follows only runs long enough for that not to
matter. Holding the memory instead while it stays under a bound (32 MB) was tried: a
128-token prefill frees more than that, so it bought nothing, and a 64 MB bound took the peak
after more prompts from 894 to 908 MB. Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None
_malloc_trim = getattr(_libc, "malloc_trim", None)  # glibc's only
_mallopt = getattr(_libc, "mallopt", None)  # glibc's only
_madvise = getattr(_libc, "madvise", None)
if _madvise is not None:
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _madvise.restype = ctypes.c_int

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: requests of at least this many bytes get a mapping of their own."""

LARGE_BUFFER = 1 << 20
"""A Gated DeltaNet layer's recurrent state at 0.8B and 2B (16 heads of 128 x 128 float32) is
exactly this; the vision encoder's activations (784 patches x 768 float32) are 2.4 MB."""


def allocate_large_buffers_apart() -> bool:
    """Give every buffer of ``LARGE_BUFFER`` bytes or more a mapping of its own, returned to
    the kernel when it is freed; False where the C library has no mallopt. glibc starts at
    128 KiB but raises its threshold to the size of each mapped buffer freed, up to 32 MiB, so
    after the first frame read the states and activations all come from the heap. There the
    states a daemon keeps (a frame's read, a conversation) sit between the freed activations of
    the last read, and the next read's do not fit in those holes: the heap grows. Measured at
    0.8B (a process that loads the package and reads six frames, each with four rules and a
    24-token answer): peak RSS 1,086 MiB with glibc's own threshold, 1,009 MiB with this one, and
    load RSS 677 against 655 MiB. The price is page faults, where the heap reused pages: a
    frame read about 5% slower, a rule and a decode step 1 to 3%. A 2 MiB threshold, which
    leaves the states in the heap, peaked at 1,056 MiB. Process-wide: the engine sets it before
    its first model part loads, and setting it again changes nothing."""
    if _mallopt is None:
        return False
    return _mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER) == 1


ARENA_GROWS_BY_REQUEST = 1
"""onnxruntime's kSameAsRequested: an arena short of room adds what the request needs."""
ARENA_FIRST_CHUNK = 1 << 20
"""The arena's first allocation; the one part of it that may stay between calls."""
ARENA_MAX_DEAD_BYTES = 1 << 20
"""A free chunk is split when a request would leave more than this of it unused."""


def reuse_activations_within_each_run(options: ort.SessionOptions, run: ort.RunOptions) -> None:
    """Let a session's calls reuse the memory their activations free as they go, and hand it
    all back when each call ends: for the vision encoder, whose one call frees and allocates
    a layer's activations a dozen times over. From glibc (with ``allocate_large_buffers_apart``)
    each of those is a fresh mapping whose pages are faulted in anew: at 0.8B a 448 x 448
    frame faulted in 494 MiB per call. From an arena that grows by what is asked (not by
    powers of two) and shrinks when the call ends, each layer reuses the last one's pages:
    89 to 101 MiB per call, and the call took 0.69 to 0.75 s against 0.90 to 0.98 s (2 threads,
    processes alternating), with the same features; a whole frame read (the call, then 200
    tokens through the decoder) 2% less, in one process alternating two engines. The call's
    peak above what the engine holds is 89 MiB without the arena and 89 to 92 MiB with it;
    onnxruntime's memory pattern (one block for the whole plan) made it 98 MiB, and is off.
    onnxruntime's process-wide CPU arena serves only the sessions that opt in
    (``session.use_env_allocators``); each engine registers it, and a second registration in
    one process does not fail."""
    arena = ort.OrtArenaCfg(0, ARENA_GROWS_BY_REQUEST, ARENA_FIRST_CHUNK, ARENA_MAX_DEAD_BYTES)
    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(cpu, arena)
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.use_env_allocators", "1")
    run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


TRIM_AFTER_TOKENS = 64
"""A run of this many tokens frees MBs of activations and takes at least 0.3 s at 0.8B."""


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel; False where that is not possible."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


MADV_DONTNEED = 4
"""Linux's value on every architecture edged runs on (x86-64, arm64), as are the two below."""
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
"""Linux 6.1 and later; older kernels refuse it, and khugepaged then collapses what
MADV_HUGEPAGE marked, in the background."""
THP = Path("/sys/kernel/mm/transparent_hugepage")


def weights_on_huge_pages(thp: Path = THP) -> int:
    """Move the process's fully resident anonymous mappings onto transparent huge pages: MiB
    moved. Called once a model part has loaded, when those mappings are mostly its weights as
    onnxruntime repacked them. Each decoded token reads all of them (541 MB at 0.8B): on 4 KiB
    pages that is 130,000 address translations a token, more than the TLB holds, and each
    miss a page walk (two nested ones in a virtual machine). Only mappings whose every page is
    resident are taken, so RSS does not grow (a huge page over a thread's mostly unused stack
    would add to it); the heap is left to glibc. Nothing is done where transparent huge pages
    are ``never`` or the kernel has none; a collapse that fails (no free huge page, a kernel
    before 6.1) leaves the pages as they were. Only the whole huge pages inside a mapping can
    move: most of the 0.8B decoder's weights sit in one mapping of 408 MiB, and its 2.6 MiB
    per-layer buffers hold at most one each."""
    if _madvise is None:
        return 0
    try:
        if "[never]" in (thp / "enabled").read_text():
            return 0
        huge = int((thp / "hpage_pmd_size").read_text())
        smaps = Path("/proc/self/smaps").read_text()
        before = _anonymous_huge_bytes()
    except (OSError, ValueError, StopIteration):
        return 0
    for start, end, already_huge in _resident_anonymous_mappings(smaps):
        first, last = -(-start // huge) * huge, end // huge * huge
        if last - first > already_huge:
            _madvise(first, last - first, MADV_HUGEPAGE)
            # Its result is not the count: a range that fails in part (no free huge page at
            # that moment) reports the failure but keeps what did move.
            _madvise(first, last - first, MADV_COLLAPSE)
    return max(0, _anonymous_huge_bytes() - before) >> 20


def _anonymous_huge_bytes() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        return next(int(line.split()[1]) << 10 for line in rollup if line.startswith("AnonHugePages:"))


def _resident_anonymous_mappings(smaps: str) -> list[tuple[int, int, int]]:
    """(start, end, bytes already on huge pages) of each writable private mapping of no file
    whose pages are all resident and anonymous (the heap and the stacks are named, and left
    out)."""
    return [(start, end, fields.get("AnonHugePages", 0) << 10)
            for start, end, permissions, name, fields in _smaps_mappings(smaps)
            if not name and permissions == "rw-p" and fields.get("Anonymous", 0) << 10 == end - start]


def release_file_pages(folder: Path) -> int:
    """Unmap the pages of files in ``folder`` that this process maps and has not written:
    MiB released. onnxruntime maps a model's external weights from its file and, once it has
    repacked them for its kernels, never reads most of them again, but the pages it read stay
    mapped and count in the process's RSS (90 MiB of the 0.8B decoder's scales). A page the
    process has not written is the file's own content, so dropping it loses nothing: a later
    read maps it again from the page cache. A mapping with any written page (``Anonymous``
    above zero) is left alone, and so is every mapping where smaps shows nothing resident:
    qemu-user fakes smaps that way (all zeros) while it does carry out ``madvise``, so under
    emulation, where a written page could not be told apart, nothing is released."""
    if _madvise is None:
        return 0
    try:
        mappings = _clean_mappings(Path("/proc/self/smaps").read_text(), str(folder.resolve()) + "/")
    except OSError:
        return 0
    released = 0
    for start, end, resident_kib in mappings:
        if _madvise(start, end - start, MADV_DONTNEED) == 0:
            released += resident_kib
    return released >> 10


def _clean_mappings(smaps: str, prefix: str) -> list[tuple[int, int, int]]:
    """(start, end, resident KiB) of each mapping of a file under ``prefix`` with resident
    pages, none of them written."""
    return [(start, end, fields.get("Rss", 0)) for start, end, _, name, fields in _smaps_mappings(smaps)
            if name.startswith(prefix) and fields.get("Anonymous", 0) == 0 and fields.get("Rss", 0) > 0]


def _smaps_mappings(smaps: str) -> Iterator[tuple[int, int, str, str, dict[str, int]]]:
    """(start, end, permissions, file or bracketed name or "", {field: kB}) of each mapping
    in the text of /proc/PID/smaps."""
    mapping: tuple[int, int, str, str, dict[str, int]] | None = None
    for line in smaps.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            if mapping is not None:
                yield mapping
            start, end = (int(bound, 16) for bound in head[0].split("-"))
            mapping = (start, end, head[1], head[5] if len(head) == 6 else "", {})
        elif mapping is not None and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
            mapping[4][head[0][:-1]] = int(head[1])
    if mapping is not None:
        yield mapping
