"""Threaded numba kernels with a serial twin for one thread (optional dependency ``numba``).

``@threaded_kernel(**njit_options)`` compiles a function twice: with ``parallel=True``
(``numba.prange`` split over numba's threads) and without (``prange`` is then ``range``).
A call runs the serial twin when numba has one thread (``numba.get_num_threads() == 1``, the
usual MPI set-up of one rank per core with ``OMP_NUM_THREADS=1``), the parallel one
otherwise.

Why: with the work-queue threading layer (below) even a one-thread parallel kernel runs on a
worker thread, not the caller's: every call pays a hand-over, ~0.1 ms on the dev VM. Measured
there (2026-12-03, one thread, the two compilations alternating in one process): the U(1)
``sin`` pass at 256^2 0.14-0.21 against 0.069 ms, a whole U(1) force 0.56-0.63 against 0.24
ms, the vnode action density at 8^4 0.72-0.76 against 0.49-0.51 ms. For the large SU(3) force
kernels the two compilations differ by up to +-15% in either direction between runs and sizes,
and an HMC trajectory shows no difference (docs/performance.md, "Kernel backends", session 7).

Threading layer: the work-queue layer, unless ``NUMBA_THREADING_LAYER`` says otherwise.
numba's default OpenMP layer leaves its worker threads spinning after a parallel kernel
returns; they then compete with torch for the cores (measured: a torch loop of 0.24 s took
4.3 s after one numba force). The work-queue layer's workers sleep between kernels. The
choice must be made before the first parallel kernel runs (numba starts the layer then), so
every module that defines kernels imports this one first.

``TRIVHMC_SERIAL_TWIN=0`` in the environment (read at import) always runs the parallel
kernel: for comparison (benchmarks) and as a way out should a serial twin misbehave.

The twin is a copy of the Python function under the name ``<name>_serial``, so numba's disk
cache (keyed by the qualified name) keeps the two compilations apart.
"""

from __future__ import annotations

import functools
import os
import types

import numba
from numba import njit

from parallel import jit_target
from parallel.settings import flag

jit_target.configure()  # before the first @njit: 512-bit vectors on AVX-512 hosts

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

SERIAL_TWIN = flag("TRIVHMC_SERIAL_TWIN", True)


class ThreadedKernel:
    """A parallel numba dispatcher and its serial twin; calling picks one (module doc)."""

    def __init__(self, fn: types.FunctionType, options: dict) -> None:
        self.parallel = njit(parallel=True, **options)(fn)
        twin = types.FunctionType(
            fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__
        )
        twin.__qualname__ = fn.__qualname__ + "_serial"
        twin.__module__ = fn.__module__
        twin.__doc__ = fn.__doc__
        self.serial = njit(**options)(twin)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        """Run the serial twin on one numba thread, the parallel kernel otherwise."""
        if SERIAL_TWIN and numba.get_num_threads() == 1:
            return self.serial(*args)
        return self.parallel(*args)


def match_torch_threads() -> None:
    """numba threads = torch's (at most numba's maximum): called before a threaded kernel so
    that it uses the threads the run was given (``OMP_NUM_THREADS``, ``--threads``)."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def threaded_kernel(**options):
    """Decorator: ``njit(**options)`` twice, parallel and serial (:class:`ThreadedKernel`)."""

    def wrap(fn: types.FunctionType) -> ThreadedKernel:
        return ThreadedKernel(fn, options)

    return wrap
