"""Cost of the `measure:` measurements per SU(3) configuration: Wilson flow (RK3 steps with
E measured every step; Q at one flow time), Wilson loops up to R x T, Polyakov loop.

    OMP_NUM_THREADS=1 python benchmarks/bench_measure.py [--shape 8 8 8 8] [--device cpu]
    OMP_NUM_THREADS=1 mpiexec -n 2 python benchmarks/bench_measure.py --shape 16 8 8 8

Prints a table (seconds per configuration and per flow step; wall time, the slowest rank,
after one untimed flow step). Under mpiexec the lattice is split over the ranks
(``ProcessGrid``'s default grid) as in a run.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from mpi4py import MPI

from kernels.groups import su_expm
from kernels.static_loops import wilson_loop_table
from kernels.theories.su3 import SU3Gauge, polyakov_loop
from kernels.wilson_flow import wilson_flow
from parallel import ProcessGrid
from parallel.memory import keep_freed_memory
from parallel.rng import SiteRNG


def main() -> None:
    keep_freed_memory()  # as the application does (parallel/memory.py)
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=4, default=[8, 8, 8, 8])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--t-max", type=float, default=1.0)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--loops", type=int, default=4, help="R x T up to loops x loops")
    args = ap.parse_args()
    grid = ProcessGrid(tuple(args.shape))
    th = SU3Gauge(grid, 6.0, device=args.device)
    u = su_expm(0.5 * th.random_momentum(SiteRNG(1), 0, 1)) @ th.cold_start(1)
    wilson_flow(u, grid, args.eps, args.eps)  # compile / warm up
    rows = []

    def timed(name, fn, per=1):
        MPI.COMM_WORLD.Barrier()
        t0 = time.perf_counter()
        fn()
        if args.device != "cpu":
            torch.cuda.synchronize() if args.device == "cuda" else None
        dt = MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        rows.append((name, dt, dt / per))

    n = round(args.t_max / args.eps)
    timed(
        f"flow t_max={args.t_max} eps={args.eps} (+Q at t_max)",
        lambda: wilson_flow(u, grid, args.t_max, args.eps, charge_times=(args.t_max,)),
        per=n,
    )
    timed(
        f"Wilson loops up to {args.loops}x{args.loops}",
        lambda: wilson_loop_table(u, grid, args.loops, args.loops),
    )
    timed("Polyakov loop", lambda: polyakov_loop(u, grid))
    if MPI.COMM_WORLD.Get_rank():
        return
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, {grid.describe()}, "
        f"device {args.device}"
    )
    print(f"{'measurement':<48} {'s/config':>10} {'s/step':>10}")
    for name, dt, per in rows:
        print(f"{name:<48} {dt:>10.3f} {per:>10.4f}")


if __name__ == "__main__":
    main()
