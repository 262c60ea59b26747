"""The trivhmc batch application: CLI, decks, run loop, ensemble I/O, registry, analysis.

Importing it sets ``MKL_CBWR=COMPATIBLE`` unless ``MKL_CBWR`` is already set, before torch is
loaded: MKL's default float64 matrix products (float64 network convolutions and linear layers
on CPU) round a column differently depending on the size of the product and the column's
place in it, so a network's output at a site would depend on the local block and records
would differ between process grids in the last bits (docs/conventions.md, "Reductions").

It also sets ``OMP_WAIT_POLICY=PASSIVE`` when numba is installed, unless ``OMP_WAIT_POLICY``
is already set: after each parallel region torch's OpenMP threads otherwise spin for a while,
and with more than one thread per rank they then hold the cores that the numba kernels'
worker threads (``vnode``/``numba`` backends, the fused stout layer) need next. Measured on
the dev VM with two threads (docs/performance.md, "Kernel backends", session 12): an SU(3)
8^4 HMC trajectory with ``vnode`` 0.28-0.29 -> 0.22 s, the trivialized stout force per chain
~100 -> 66-78 ms; a pure-torch (``eager``) trajectory 7-9% slower, hence not without numba.
With one thread per rank (``OMP_NUM_THREADS=1``) it changes nothing.
"""

import os
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
if "OMP_WAIT_POLICY" not in os.environ and find_spec("numba") is not None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def code_version() -> str:
    """The installed trivhmc version (recorded in ensembles, checkpoints and model cards)."""
    try:
        return version("trivhmc")
    except PackageNotFoundError:
        return "unknown"
