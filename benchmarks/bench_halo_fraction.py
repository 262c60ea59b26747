"""Fraction of an SU(3) HMC trajectory spent in halo exchanges, and 1 -> N weak scaling.

    mpiexec -n 1 python benchmarks/bench_halo_fraction.py --local 8 8 8 8
    mpiexec -n 2 python benchmarks/bench_halo_fraction.py --local 8 8 8 8

The global lattice is the local block repeated ``N`` times along x (process grid ``N x 1 x 1
x 1``), so the local volume is the same on every rank count (weak scaling: compare s/traj
of the runs). Every call of ``parallel.halo._exchange`` (used by ``halo_pad`` and ``shift``)
is timed; "MPI" is the time of the calls along a split axis (send, receive and wait: nothing
overlaps them today), "copy" the local periodic copies. Times are the slowest rank's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime

import torch
from mpi4py import MPI

import kernels.backends as kb
import parallel.halo as halo_mod
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge
from parallel import ProcessGrid
from parallel.rng import SiteRNG

SPENT = {"mpi": 0.0, "copy": 0.0, "calls": 0}
_ORIGINAL = halo_mod._exchange


def _timed_exchange(grid, send, dim, mu, towards, tag):
    t0 = time.perf_counter()
    out = _ORIGINAL(grid, send, dim, mu, towards, tag)
    SPENT["mpi" if grid.grid[mu] > 1 else "copy"] += time.perf_counter() - t0
    SPENT["calls"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--local", type=int, nargs=4, default=[8, 8, 8, 8])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--traj", type=int, default=2)
    ap.add_argument("--backend", default="eager")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    halo_mod._exchange = _timed_exchange
    sys.modules["parallel.shift"]._exchange = _timed_exchange  # (the package exports
    # a function under the submodule's name, so import it through sys.modules)
    kb.set_backend(args.backend)
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    shape = (args.local[0] * n, *args.local[1:])
    grid = ProcessGrid(shape, grid=(n, 1, 1, 1))
    th = SU3Gauge(grid, 5.7)
    hmc = HMC(th, make_integrator(th, "omelyan", args.steps, 1.0), SiteRNG(1))
    field = th.hot_start(SiteRNG(1), 0, 1)
    field, _ = hmc.trajectory(field, 1)
    rows = []
    for c in range(2, 2 + args.traj):
        SPENT.update(mpi=0.0, copy=0.0, calls=0)
        comm.Barrier()
        t0 = time.perf_counter()
        field, _ = hmc.trajectory(field, c)
        wall = time.perf_counter() - t0
        rows.append(
            (
                comm.allreduce(wall, op=MPI.MAX),
                comm.allreduce(SPENT["mpi"], op=MPI.MAX),
                comm.allreduce(SPENT["copy"], op=MPI.MAX),
                SPENT["calls"],
            )
        )
    if comm.rank == 0:
        print(
            f"# bench_halo_fraction {datetime.now().isoformat(timespec='seconds')} "
            f"{platform.node()} cpus={os.cpu_count()} ranks={n} backend={args.backend} "
            f"lattice={'x'.join(map(str, shape))} local={'x'.join(map(str, args.local))} "
            f"Omelyan steps={args.steps}"
        )
        print(f"{'ranks':>5} {'s/traj':>8} {'MPI s':>8} {'MPI %':>6} {'copy s':>8} {'calls':>6}")
        for wall, mpi, copy, calls in rows:
            print(
                f"{n:>5} {wall:>8.3f} {mpi:>8.3f} {100 * mpi / wall:>5.1f}% {copy:>8.3f} {calls:>6}"
            )
    grid.free()


if __name__ == "__main__":
    main()
