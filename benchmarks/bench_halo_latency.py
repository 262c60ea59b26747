"""Fixed cost of one small halo message: before (blocking ``Sendrecv``, fresh buffers) and
after (pooled buffers, ``Irecv``/``Isend`` + ``Waitall``), against bare mpi4py.

    mpiexec -n 2 python benchmarks/bench_halo_latency.py
    python benchmarks/bench_halo_latency.py        # one rank: messages to itself

Two ranks exchange one face of ``count`` float64 along x (process grid ``2 x 1``), both
directions at once as in a halo. On one rank every message goes to the rank itself through
MPI: that isolates the software cost per exchange (Python, copies, buffers, MPI calls) from
the partner's scheduling, which dominates on an oversubscribed machine. Columns (median
microseconds per exchange of both faces, slowest rank, ``--repeat`` timed calls after a
warm-up):

* ``raw``: ``comm.Sendrecv`` on preallocated numpy buffers (the floor on this machine);
* ``before``: the previous path (still the adjoint's): :func:`parallel.comm.sendrecv` as
  :func:`parallel.halo._exchange` calls it on a split axis (contiguous copy, fresh receive
  buffer, blocking ``Sendrecv``, tensor wrap), one call per direction;
* ``after``: :func:`parallel.halo._post` for both directions then one
  :func:`parallel.halo._complete` (pack into pooled buffers, all posted at once, one
  ``Waitall``, unpack into the output);
* ``shift``: the whole public :func:`parallel.shift` (pooled, output allocated per call).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime

import numpy as np
import torch
from mpi4py import MPI

from parallel import ProcessGrid, shift
from parallel.comm import sendrecv
from parallel.halo import _complete, _post

COUNTS = [1, 16, 128, 1024, 8192, 65536]


def median_us(fn, repeat: int, comm: MPI.Comm) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * comm.allreduce(statistics.median(times), op=MPI.MAX)


def measure(count: int, repeat: int, comm: MPI.Comm) -> tuple[float, ...]:
    """Median microseconds of raw / before / after / shift for a face of ``count`` float64."""
    n = comm.Get_size()
    grid = ProcessGrid((2 * n, count), grid=(n, 1))
    x = torch.randn((1, 2, count), dtype=torch.float64)
    down, up = grid.neighbours[0]
    sb, rb = np.ones(count), np.empty(count)
    sb2, rb2 = np.ones(count), np.empty(count)

    def raw():
        grid.cart.Sendrecv(sb, dest=up, sendtag=1, recvbuf=rb, source=down, recvtag=1)
        grid.cart.Sendrecv(sb2, dest=down, sendtag=2, recvbuf=rb2, source=up, recvtag=2)

    def before():  # parallel.halo._exchange on a split axis (no local-copy shortcut)
        sendrecv(grid.cart, x[:, 1:2], up, (1, 1, count), down, 11)
        sendrecv(grid.cart, x[:, 0:1], down, (1, 1, count), up, 12)

    out = torch.empty((1, 4, count), dtype=torch.float64)
    lo_send = (slice(None), slice(1, 2), slice(None))
    hi_send = (slice(None), slice(0, 1), slice(None))
    lo_recv = (slice(None), slice(0, 1), slice(None))
    hi_recv = (slice(None), slice(3, 4), slice(None))

    def after():
        m1 = _post(grid, x, 0, -1, [lo_send], [lo_recv], 21, 1, dst=out)
        m2 = _post(grid, x, 0, +1, [hi_send], [hi_recv], 22, 1, dst=out)
        _complete(out, [m1, m2])

    def whole_shift():
        shift(x, grid, 0, 1, first=1)

    t = [median_us(f, repeat, comm) for f in (raw, before, after, whole_shift)]
    grid.free()
    return (count * 8, *t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    rows = [measure(count, args.repeat, comm) for count in COUNTS]
    if comm.rank == 0:
        print(
            f"# bench_halo_latency {datetime.now().isoformat(timespec='seconds')} "
            f"{platform.node()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} ranks={n} "
            f"torch {torch.__version__} {MPI.Get_library_version().splitlines()[0]}"
        )
        print(f"{'bytes':>8} {'raw us':>8} {'before us':>10} {'after us':>9} {'shift us':>9}")
        for b, raw_t, before_t, after_t, shift_t in rows:
            print(f"{b:>8} {raw_t:>8.1f} {before_t:>10.1f} {after_t:>9.1f} {shift_t:>9.1f}")


if __name__ == "__main__":
    main()
