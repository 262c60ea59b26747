"""Cost of the exact (correctly rounded, grid-independent) global sum against a float Allreduce.

    mpiexec -n 1 python benchmarks/bench_reduce.py
    mpiexec -n 2 python benchmarks/bench_reduce.py --quick

For each theory and volume it times, per rank (the slowest rank counts):

* ``fast``: ``global_sum(x.sum(...))``, a local float sum and an ``MPI_Allreduce`` (its
  rounding depends on the process grid);
* ``exact``: ``lattice_sum(x)`` from ``parallel/reduce.py`` (integer bins per exponent,
  integer ``MPI_Allreduce``, one rounding);

for the two sums every HMC trajectory needs twice (start and end): the action density
``(B, *local)`` and the momenta ``(B, Nd, *local[, 8])``. ``traj`` is the median wall time of a
real HMC trajectory (which already uses the exact sums), ``share`` the fraction of it spent
in the four exact sums of a trajectory (``2 * (action + kinetic)``).

``--cg``: a Schwinger-model CG solve (``kernels/fermions/cg.py``, even-odd normal equations,
4 chains) with its dot products summed exactly (as the code does) against a plain
``torch.sum`` of the local values (what one rank could do without reproducibility), run
alternately; the slowdown is the cost of the exact dots in a CG-dominated trajectory.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime

import torch
from mpi4py import MPI

from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories import make_theory
from parallel import ProcessGrid, global_sum, lattice_sum
from parallel.rng import SiteRNG

VOLUMES = {
    "phi4": [(32, 32), (128, 128), (512, 512)],
    "u1": [(32, 32), (128, 128), (512, 512)],
    "su3": [(4, 4, 4, 4), (8, 8, 8, 8)],
}
COUPLINGS = {"phi4": {"beta": 0.6, "lam": 0.5}, "u1": {"beta": 2.0}, "su3": {"beta": 5.7}}
STEPS = {"phi4": 10, "u1": 8, "su3": 10}
#: real numbers per site and direction in a momentum (su(3): 8 generators)
MOMENTUM_DOF = {"phi4": 1, "u1": 1, "su3": 8}


def slowest(x: float) -> float:
    return MPI.COMM_WORLD.allreduce(x, op=MPI.MAX)


def median_time(fn, grid: ProcessGrid, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        grid.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(slowest(time.perf_counter() - t0))
    return statistics.median(times)


def bench(name: str, shape, batch: int, repeat: int, n_traj: int, device: str) -> dict:
    grid = ProcessGrid(shape)
    theory = make_theory(name, grid, device=device, **COUPLINGS[name])
    gen = torch.Generator().manual_seed(1)
    dens = torch.randn((batch, *grid.local_shape), generator=gen).to(device)
    nd = len(shape) if name != "phi4" else 1
    mom_shape = (batch, nd, *grid.local_shape, MOMENTUM_DOF[name])
    mom = torch.randn(mom_shape, generator=gen).to(device)
    t = {}
    for what, x in (("action", dens), ("kinetic", mom)):
        dims = tuple(range(1, x.ndim))
        t[f"fast_{what}"] = median_time(
            lambda x=x, d=dims: global_sum(x.sum(d), grid), grid, repeat
        )
        t[f"exact_{what}"] = median_time(lambda x=x: lattice_sum(x, grid, 1), grid, repeat)
    rng = SiteRNG(1)
    hmc = HMC(theory, make_integrator(theory, "omelyan", STEPS[name], 1.0), rng)
    field = theory.cold_start(batch)
    field, _ = hmc.trajectory(field, 0)
    times = []
    for counter in range(1, n_traj + 1):
        grid.barrier()
        field, rec = hmc.trajectory(field, counter)
        times.append(slowest(rec.wall_time))
    grid.free()
    traj = statistics.median(times)
    exact = 2 * (t["exact_action"] + t["exact_kinetic"])
    return {
        "theory": name,
        "lattice": "x".join(map(str, shape)),
        "grid": "x".join(map(str, grid.grid)),
        **t,
        "traj": traj,
        "share": exact / traj,
    }


def bench_cg(sizes, repeat: int) -> None:
    """Median CG solve time with exact dot products against torch.sum ones (one rank)."""
    from kernels.fermions import cg
    from kernels.theories.schwinger import Schwinger

    exact = cg.grid_independent_sum

    def plain(x, grid):
        return x.sum(dim=tuple(range(1, x.ndim)))

    print(f"{'L':>4} {'iters':>6} {'exact ms':>9} {'torch.sum ms':>13} {'ratio':>6}")
    for size in sizes:
        grid = ProcessGrid((size, size))
        theory = Schwinger(grid, beta=2.0, kappa=0.26)
        theta = theory.hot_start(SiteRNG(3), 0, 4) * 0.3
        op = theory.dirac(theta)
        gen = torch.Generator().manual_seed(1)
        b = torch.randn((4, 2, size, size), generator=gen, dtype=torch.complex128)
        b = op.schur_dag(op.schur_rhs(b))
        t = {"exact": [], "plain": []}
        iters = 0
        for _ in range(repeat):
            for name, fn in (("exact", exact), ("plain", plain)):
                cg.grid_independent_sum = fn
                t0 = time.perf_counter()
                res = cg.conjugate_gradient(op.schur_normal, b, grid, 1e-10, 2000)
                t[name].append(time.perf_counter() - t0)
                iters = max(iters, int(res.iterations.max()))
        cg.grid_independent_sum = exact
        te, tp = statistics.median(t["exact"]), statistics.median(t["plain"])
        print(f"{size:4d} {iters:6d} {1e3 * te:9.1f} {1e3 * tp:13.1f} {te / tp:6.2f}", flush=True)
        grid.free()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--theories", nargs="+", default=["phi4", "u1", "su3"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--traj", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smallest two volumes only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cg", action="store_true", help="only the CG dot-product comparison")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    if args.cg:
        bench_cg([8, 16, 32], max(3, args.repeat // 4))
        return
    root = MPI.COMM_WORLD.Get_rank() == 0
    if root:
        print(f"# bench_reduce  {datetime.now().isoformat(timespec='seconds')}")
        print(f"# machine: {platform.node()} {platform.processor()} ({os.cpu_count()} cpus)")
        print(
            f"# torch {torch.__version__}, {torch.get_num_threads()} threads/rank, "
            f"{MPI.COMM_WORLD.Get_size()} MPI rank(s), device {args.device}, batch {args.batch}"
        )
        print(f"# command: {' '.join([sys.executable, *sys.argv])}")
        head = (
            f"{'theory':6} {'lattice':>11} {'grid':>8} {'S fast ms':>10} {'S exact ms':>11} "
            f"{'K fast ms':>10} {'K exact ms':>11} {'traj s':>8} {'share':>7}"
        )
        print(head)
        print("-" * len(head))
    for name in args.theories:
        for shape in VOLUMES[name][:2] if args.quick else VOLUMES[name]:
            r = bench(name, shape, args.batch, args.repeat, args.traj, args.device)
            if root:
                print(
                    f"{r['theory']:6} {r['lattice']:>11} {r['grid']:>8} "
                    f"{1e3 * r['fast_action']:10.3f} {1e3 * r['exact_action']:11.3f} "
                    f"{1e3 * r['fast_kinetic']:10.3f} {1e3 * r['exact_kinetic']:11.3f} "
                    f"{r['traj']:8.3f} {100 * r['share']:6.2f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()
