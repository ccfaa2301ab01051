"""Keep freed memory in the training process instead of handing it back to
the kernel after every step.

glibc's malloc serves each block over 32 MB (activations of a 64-photo
batch at 224 px are 10-100 MB) with a fresh mmap and unmaps it on free, so
the next step page-faults the same memory in again, zeroing it page by page.
On the 2-core AVX2 development VM the view pool's frozen stages (trainer.pool)
took 47.9 ms a photo with 7.1 of every 11.6 CPU seconds in the kernel, and
18.6 ms with mmap off and trimming raised (bench/pool_speed.py,
bench/results/pool-speed-20261202-120742.md). The price is a higher peak RSS
(1.13 -> 1.76 GB there): memory once used stays with the process until it
exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve big blocks from its heap (no mmap) and to
    trim the heap only past 1 GB free. False where it does not apply (not
    Linux with glibc); nothing changes then."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    if not ok:
        log.debug("mallopt refused; malloc keeps its defaults")
    return ok
