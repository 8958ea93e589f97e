"""Memory freed after a big model run, handed back to the system.

ONNX Runtime's CPU arena is off (see Engine), so what a run allocates goes back to glibc's
malloc when the run ends; but glibc keeps it in the process's heap for reuse, and a long
prompt or an image leaves tens of MB there that the daemon would hold for nothing. At 0.8B,
a 512-token prompt then three of 128 tokens took peak RSS from 889 to 956 MB that way.
``malloc_trim`` gives free heap pages back to the kernel. The call takes 1 to 5 ms, and the
next run of that size faults its pages in again: 0.7 to 2% of a 512- or 128-token prefill at
0.8B. So it follows only runs long enough for that not to matter. Holding the memory instead
while it stays under a bound (32 MB) was tried: a 128-token prefill frees more than that, so
it bought nothing, and a 64 MB bound took the peak after more prompts from 894 to 908 MB.
Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError):  # not glibc
    _malloc_trim = None

TRIM_AFTER_TOKENS = 64
"""A run of this many tokens frees MBs of activations and takes at least 0.3 s at 0.8B."""


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel; False where that is not possible."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
