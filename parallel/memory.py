"""Keep freed memory in the process for reuse (glibc ``mallopt``), instead of handing large
blocks back to the operating system.

Why: glibc serves a large ``malloc`` (by default above 128 kB, adapting up to 32 MB) with a
fresh ``mmap`` and returns it to the system on ``free``; the next array of that size then
costs a page fault, and the kernel's zeroing, for every page it touches. MD and the Wilson
flow allocate a field-sized array per force and per drift (numpy, torch), so a trajectory
paid this at every step: measured on the dev VM (2026-12-04, ``vnode`` backend, 1 chain, one
thread), an SU(3) HMC trajectory of 5 Omelyan steps took 0.047-0.063 s at 8^4 and 0.86-1.00
s at 16^4 with glibc's defaults and 0.038-0.040 / 0.73-0.83 s with :func:`keep_freed_memory`
(docs/performance.md, "Kernel backends", session 9). Five chained force + drift pairs on
packed 8^4 links: 16.4-17.0 against 11.5 ms.

:func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (every block from the heap) and
``M_TRIM_THRESHOLD`` to 1 GiB (freed memory at the top of the heap stays mapped), the
settings HPC codes use with glibc. The price: the process keeps its peak heap until it
exits, which is what a batch job's memory budget is sized for anyway. It applies only where
the C library is glibc (elsewhere it does nothing and returns False) and is skipped when
``TRIVHMC_MALLOC=0``. The batch application (``trivhmc``) and the benchmarks call it at start.
"""

from __future__ import annotations

import ctypes
import functools
import platform

from .settings import flag

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: freed memory kept at the top of the heap before glibc trims it
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve every block from the heap and keep freed memory (module doc).
    Returns True when both settings were accepted; False on another C library, with
    ``TRIVHMC_MALLOC=0``, or when ``mallopt`` refused. Idempotent (the first call decides)."""
    if not flag("TRIVHMC_MALLOC", True) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
