"""Threaded numba kernels with a serial twin for one thread (optional dependency ``numba``).

``@threaded_kernel(**njit_options)`` compiles a function twice: with ``parallel=True``
(``numba.prange`` split over numba's threads) and without (``prange`` is then ``range``).
A call runs the serial twin when numba has one thread (``numba.get_num_threads() == 1``, the
usual MPI set-up of one rank per core with ``OMP_NUM_THREADS=1``), the parallel one
otherwise.

Why: with the work-queue threading layer (below) even a one-thread parallel kernel runs on a
worker thread, not the caller's: every call pays a hand-over and the worker finds the caller's
data in another core's cache. Measured on the dev VM (2026-12-03, one thread): a 65k-site
U(1) ``sin`` kernel took 3-7 ns per site through the layer against 1.1 ns serial, the
layout-resident vnode SU(3) force at 8^4 2.47 against 1.58 ms (docs/performance.md).

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

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

SERIAL_TWIN = os.environ.get("TRIVHMC_SERIAL_TWIN", "1") != "0"


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


def threaded_kernel(**options):
    """Decorator: ``njit(**options)`` twice, parallel and serial (:class:`ThreadedKernel`)."""

    def wrap(fn: types.FunctionType) -> ThreadedKernel:
        return ThreadedKernel(fn, options)

    return wrap
