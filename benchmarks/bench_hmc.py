"""Wall time per HMC trajectory for each theory and a few volumes.

    python benchmarks/bench_hmc.py                  # phi4, u1, su3 at the default volumes
    python benchmarks/bench_hmc.py --quick          # smallest volume of each, fewer repeats
    mpiexec -n 2 python benchmarks/bench_hmc.py --theories su3 --batch 1
    TRIVHMC_KERNELS=vnode python benchmarks/bench_hmc.py --theories su3 --shapes 16,16,16,16 \
        --batch 1 --md-layout per-call    # without the resident vnode layout, for comparison

For every (theory, lattice) it runs ``--warm`` trajectories from a cold (or hot) start, then
times ``--traj`` trajectories of an Omelyan 2MN integrator with ``--steps`` outer steps over
``tau = 1`` (``2 steps + 1`` force evaluations per trajectory) on a batch of ``--batch``
chains, and prints the median seconds per trajectory (the slowest rank's), per force
evaluation (measured alone), the site updates per second (``batch x volume / s per
trajectory``) and the acceptance (after only ``--warm`` trajectories: not an equilibrium
value). Machine, date, torch threads, rank count and the command are printed first.
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
from machine import cpu_model, numba_target
from mpi4py import MPI

from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories import make_theory
from parallel import ProcessGrid
from parallel.memory import keep_freed_memory
from parallel.rng import SiteRNG

VOLUMES = {
    "phi4": [(16, 16), (32, 32), (64, 64), (128, 128)],
    "u1": [(16, 16), (32, 32), (64, 64), (128, 128)],
    "su3": [(4, 4, 4, 4), (6, 6, 6, 6), (8, 8, 8, 8)],
}
COUPLINGS = {"phi4": {"beta": 0.6, "lam": 0.5}, "u1": {"beta": 2.0}, "su3": {"beta": 5.7}}
#: Omelyan steps giving a high acceptance at the couplings above (tau = 1)
STEPS = {"phi4": 10, "u1": 8, "su3": 10}


def slowest(x: float) -> float:
    return MPI.COMM_WORLD.allreduce(x, op=MPI.MAX)


def bench(
    name: str,
    shape,
    batch: int,
    steps: int,
    n_traj: int,
    n_warm: int,
    device: str,
    start: str,
    per_call: bool = False,
):
    grid = ProcessGrid(shape)
    theory = make_theory(name, grid, device=device, **COUPLINGS[name])
    if per_call:  # no resident MD layout: the backend converts at every force and drift
        theory.resident_md = lambda field, forces: None
    rng = SiteRNG(1)
    hmc = HMC(theory, make_integrator(theory, "omelyan", steps, 1.0), rng)
    if start == "hot":
        field = theory.hot_start(rng, 0, batch, grid.replica * batch)
    else:
        field = theory.cold_start(batch)
    for counter in range(1, n_warm + 1):
        field, _ = hmc.trajectory(field, counter)
    times, acc = [], []
    for counter in range(n_warm + 1, n_warm + n_traj + 1):
        grid.barrier()
        field, rec = hmc.trajectory(field, counter)
        times.append(slowest(rec.wall_time))
        acc.append(rec.acceptance)
    force_t = []
    for _ in range(max(3, n_traj)):
        grid.barrier()
        t0 = time.perf_counter()
        theory.force(field)
        force_t.append(slowest(time.perf_counter() - t0))
    grid.free()
    t_traj = statistics.median(times)
    return {
        "theory": name,
        "lattice": "x".join(map(str, shape)),
        "grid": "x".join(map(str, grid.grid)),
        "batch": batch,
        "steps": steps,
        "s_traj": t_traj,
        "ms_force": 1e3 * statistics.median(force_t),
        "sites_per_s": batch * grid.volume / t_traj,
        "acc": sum(acc) / len(acc),
    }


def lattice_shape(text: str) -> tuple[int, ...]:
    """``--shapes`` entry: comma-separated positive extents, e.g. ``16,16,16,16``."""
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lattice such as 16,16,16,16")
    return shape


def main(argv=None) -> None:
    keep_freed_memory()  # as the application does (parallel/memory.py)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--theories", nargs="+", default=["phi4", "u1", "su3"])
    ap.add_argument("--batch", type=int, default=4, help="chains per replica")
    ap.add_argument("--traj", type=int, default=5, help="timed trajectories")
    ap.add_argument("--warm", type=int, default=5, help="untimed trajectories first")
    ap.add_argument("--steps", type=int, default=None, help="Omelyan steps (default per theory)")
    ap.add_argument("--quick", action="store_true", help="smallest two volumes, 3 trajectories")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--start", choices=["cold", "hot"], default="cold")
    ap.add_argument(
        "--shapes",
        nargs="+",
        type=lattice_shape,
        default=None,
        help="global lattices instead of the defaults, e.g. 16,16,16,16 (one theory)",
    )
    ap.add_argument(
        "--md-layout",
        choices=["auto", "per-call"],
        default="auto",
        help="per-call: refuse the backend's resident MD layout (vnode) for comparison",
    )
    args = ap.parse_args(argv)
    if args.shapes and len(args.theories) != 1:
        ap.error("--shapes needs exactly one theory in --theories")
    torch.set_default_dtype(torch.float64)
    root = MPI.COMM_WORLD.Get_rank() == 0
    if root:
        print(f"# bench_hmc  {datetime.now().isoformat(timespec='seconds')}")
        print(f"# machine: {platform.node()}  {cpu_model()}  ({os.cpu_count()} cpus)")
        print(f"# {numba_target()}")
        print(
            f"# torch {torch.__version__}, {torch.get_num_threads()} threads/rank, "
            f"{MPI.COMM_WORLD.Get_size()} MPI rank(s), device {args.device}"
        )
        print(f"# command: {' '.join([sys.executable, *sys.argv])}")
        head = (
            f"{'theory':6} {'lattice':>10} {'grid':>8} {'batch':>5} {'steps':>5} "
            f"{'s/traj':>9} {'ms/force':>9} {'site-upd/s':>11} {'acc':>5}"
        )
        print(head)
        print("-" * len(head))
    for name in args.theories:
        vols = VOLUMES[name][:2] if args.quick else VOLUMES[name]
        if args.shapes:
            vols = args.shapes
        for shape in vols:
            r = bench(
                name,
                shape,
                args.batch,
                args.steps or STEPS[name],
                3 if args.quick else args.traj,
                min(3, args.warm) if args.quick else args.warm,
                args.device,
                args.start,
                args.md_layout == "per-call",
            )
            if root:
                print(
                    f"{r['theory']:6} {r['lattice']:>10} {r['grid']:>8} {r['batch']:>5} "
                    f"{r['steps']:>5} {r['s_traj']:>9.4f} {r['ms_force']:>9.3f} "
                    f"{r['sites_per_s']:>11.3e} {r['acc']:>5.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
