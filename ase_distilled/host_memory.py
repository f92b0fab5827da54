"""Keep freed CPU memory in the process, so that large force calls stop page-faulting.

glibc's ``malloc`` serves every allocation above its mmap threshold (which grows
to at most 32 MB) with fresh pages from the kernel, returns them on ``free``, and
trims the top of its heap likewise. A force call allocates its per-edge tensors
anew each time, and beyond a few hundred atoms they cross that threshold, so every
call touched all of its memory as if for the first time: 2.2 million page faults
a call for 8,232 atoms of water with the tiny student, and 73 % of its time
(11.0 s a call before, 3.0 s after, measured back to back).
Raising both thresholds to their maximum keeps the memory mapped and reused
(benchmarks/README.md has the before and after).

The setting is process-wide: the process keeps its peak memory instead of giving
it back between calls, which is what a long MD run wants anyway.
"""

import ctypes
import ctypes.util
import functools
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int: allocations above 2 GB still use mmap

_applied = False


@functools.cache
def has_glibc() -> bool:
    """Whether this process runs on glibc, whose ``mallopt`` settings this module uses."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Idempotent. Does nothing where the C library is not glibc (macOS, Windows, musl).

    Returns
    -------
    bool
        True when the thresholds are (now or already) raised.
    """
    global _applied
    if _applied:
        return True
    if not has_glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    return _applied
