"""Fraction of an SU(3) HMC trajectory spent waiting on halos, and 1 -> N weak scaling.

    mpiexec -n 1 python benchmarks/bench_halo_fraction.py --local 8 8 8 8
    mpiexec -n 2 python benchmarks/bench_halo_fraction.py --local 8 8 8 8 --overlap

The global lattice is the local block repeated ``N`` times along x (process grid ``N x 1 x 1
x 1``), so the local volume is the same on every rank count (weak scaling: compare s/traj
of the runs). Timed per trajectory, slowest rank: "post" = packing faces into the pooled
buffers and posting ``Isend``/``Irecv`` (``parallel.halo._post``), "wait" = the time blocked in
``parallel.comm.waitall`` until the faces have arrived, "halo %" = (post + wait) / wall.
Without ``--overlap`` the force uses the eager backend (blocking shifts: every wait follows
its post at once); with ``--overlap`` the Wilson force computes the interior staples between
``halo_begin`` and ``halo_end`` (:func:`kernels.theories.su3.wilson_staples_overlap`), so
the wait only covers what the interior did not hide (eager backend only: a fused backend
ignores ``--overlap``, ``SU3Gauge._overlapped``). With ``--backend vnode`` the resident
layout's ghost-plane exchange before every force (``PackedMD._post`` / ``_fill``) counts too:
its copies, posts and ghost fills as "post", its ``waitall`` as "wait" (with axis 0 split
alone the interior planes are computed between post and wait; ``TRIVHMC_VNODE_OVERLAP=0``
turns that off). The table prints every trajectory and the medians (the dev VM is shared:
single runs are noisy).

``--alternate`` (N >= 2 ranks) measures the weak-scaling efficiency inside one launch, so that
both sides see the same load on a shared machine. Every round runs one N-rank trajectory;
then, on rank 0 alone, one trajectory of the local lattice on a one-rank grid of
``COMM_SELF`` (the 1-rank run) while the other ranks wait in a sleeping poll of an
``Ibarrier`` (no core spinning); then that 1-rank trajectory on every rank at once. The
efficiency (1 rank / N ranks) splits into "shared" (1 rank alone / N single ranks at once:
what sharing cores, caches and memory costs) and "comm" (N single ranks / N ranks: what
the split grid and its exchanges cost); medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime

import torch
from mpi4py import MPI

import kernels.backends as kb
import parallel.comm as comm_mod
import parallel.halo as halo_mod
import parallel.shifts as shifts_mod
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge
from parallel import ProcessGrid
from parallel.memory import keep_freed_memory
from parallel.rng import SiteRNG

SPENT = {"post": 0.0, "wait": 0.0, "msgs": 0}
_POST, _WAIT = halo_mod._post, comm_mod.waitall


def _timed_post(*args, **kwargs):
    t0 = time.perf_counter()
    out = _POST(*args, **kwargs)
    SPENT["post"] += time.perf_counter() - t0
    SPENT["msgs"] += 1
    return out


def _timed_wait(requests):
    t0 = time.perf_counter()
    _WAIT(requests)
    SPENT["wait"] += time.perf_counter() - t0


def _time_packed_exchange() -> None:
    """``vnode``: the resident layout's ghost-plane exchange (``PackedMD._post`` /
    ``_fill``, kernels/backends/vnode.py) bypasses ``parallel.halo``; its copies, posts and
    ghost fills count as "post" (its ``waitall`` is timed as "wait" already; the interior
    sweep between post and wait is compute)."""
    from kernels.backends import vnode

    for name, msgs in (("_post", 2), ("_fill", 0)):
        orig = getattr(vnode.PackedMD, name)

        def timed(self, q3, d, orig=orig, msgs=msgs):
            t0 = time.perf_counter()
            out = orig(self, q3, d)
            SPENT["post"] += time.perf_counter() - t0
            SPENT["msgs"] += msgs
            return out

        setattr(vnode.PackedMD, name, timed)


def idle_until_rank0(comm: MPI.Comm) -> None:
    """Wait for rank 0 without keeping a core busy (MPI's blocking calls spin): a sleeping
    poll of a non-blocking barrier that rank 0 enters when its work is done."""
    req = comm.Ibarrier()
    if comm.rank == 0:
        req.Wait()
        return
    while not req.Test():
        time.sleep(2e-4)


def build_hmc(grid: ProcessGrid, args) -> tuple[SU3Gauge, HMC]:
    """The benchmark's theory (Wilson beta 5.7) and Omelyan HMC on ``grid``."""
    th = SU3Gauge(grid, 5.7, overlap=args.overlap)
    return th, HMC(th, make_integrator(th, "omelyan", args.steps, 1.0), SiteRNG(1))


def timed_trajectory(hmc: HMC, field, c: int, comm: MPI.Comm):
    """One trajectory started together on every rank of ``comm``, the halo counters reset:
    ``(field, this rank's seconds)``."""
    SPENT.update(post=0.0, wait=0.0, msgs=0)
    comm.Barrier()
    t0 = time.perf_counter()
    field, _ = hmc.trajectory(field, c)
    return field, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as the application does (parallel/memory.py)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--local", type=int, nargs=4, default=[8, 8, 8, 8])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--traj", type=int, default=3)
    ap.add_argument("--backend", default="eager")
    ap.add_argument("--overlap", action="store_true", help="Wilson force with overlap")
    ap.add_argument(
        "--alternate",
        action="store_true",
        help="N >= 2 ranks: alternate N-rank trajectories with 1-rank ones on rank 0",
    )
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    halo_mod._post = shifts_mod._post = _timed_post
    comm_mod.waitall = _timed_wait
    kb.set_backend(args.backend)
    if args.backend == "vnode":
        _time_packed_exchange()
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    if args.alternate and n < 2:
        raise SystemExit("bench_halo_fraction.py: --alternate needs at least 2 ranks")
    shape = (args.local[0] * n, *args.local[1:])
    grid = ProcessGrid(shape, grid=(n, 1, 1, 1))
    th, hmc = build_hmc(grid, args)
    field = th.hot_start(SiteRNG(1), 0, 1)
    field, _ = hmc.trajectory(field, 1)
    if args.alternate:
        alternate(args, comm, hmc, field)
        grid.free()
        return
    rows = []
    for c in range(2, 2 + args.traj):
        field, wall = timed_trajectory(hmc, field, c, comm)
        rows.append(
            (
                comm.allreduce(wall, op=MPI.MAX),
                comm.allreduce(SPENT["post"], op=MPI.MAX),
                comm.allreduce(SPENT["wait"], op=MPI.MAX),
                SPENT["msgs"],
            )
        )
    if comm.rank == 0:
        print(
            f"# bench_halo_fraction {datetime.now().isoformat(timespec='seconds')} "
            f"{platform.node()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} ranks={n} "
            f"backend={args.backend} overlap={args.overlap} "
            f"lattice={'x'.join(map(str, shape))} local={'x'.join(map(str, args.local))} "
            f"Omelyan steps={args.steps}"
        )
        print(f"{'ranks':>5} {'s/traj':>8} {'post s':>8} {'wait s':>8} {'halo %':>7} {'msgs':>6}")
        for wall, post, wait, msgs in rows:
            frac = 100 * (post + wait) / wall
            print(f"{n:>5} {wall:>8.3f} {post:>8.3f} {wait:>8.3f} {frac:>6.1f}% {msgs:>6}")
        med = [statistics.median(col) for col in zip(*rows)]
        frac = statistics.median(100 * (p + w) / t for t, p, w, _ in rows)
        print(
            f"{'med':>5} {med[0]:>8.3f} {med[1]:>8.3f} {med[2]:>8.3f} {frac:>6.1f}% "
            f"{int(med[3]):>6}"
        )
    grid.free()


def alternate(args, comm: MPI.Comm, hmc: HMC, field) -> None:
    """Rounds of three trajectories: one N-rank trajectory; one 1-rank trajectory of the
    local lattice (``COMM_SELF`` grid) on rank 0 while the others idle
    (:func:`idle_until_rank0`); and that 1-rank trajectory on every rank at once (no
    communication: what sharing the machine's cores, caches and memory costs)."""
    n = comm.Get_size()
    g1 = ProcessGrid(tuple(args.local), grid=(1, 1, 1, 1), comm=MPI.COMM_SELF)
    th1, hmc1 = build_hmc(g1, args)
    f1, _ = hmc1.trajectory(th1.hot_start(SiteRNG(1), 0, 1), 1)
    rows = []
    for c in range(2, 2 + args.traj):
        field, wall = timed_trajectory(hmc, field, c, comm)
        wall = comm.allreduce(wall, op=MPI.MAX)
        halo = comm.allreduce(SPENT["post"] + SPENT["wait"], op=MPI.MAX)
        one = 0.0
        if comm.rank == 0:
            f1, one = timed_trajectory(hmc1, f1, c, MPI.COMM_SELF)
        idle_until_rank0(comm)
        f1, both = timed_trajectory(hmc1, f1, c, comm)
        both = comm.allreduce(both, op=MPI.MAX)
        rows.append((one, both, wall, halo))
    g1.free()
    if comm.rank == 0:
        print(
            f"# bench_halo_fraction --alternate {datetime.now().isoformat(timespec='seconds')} "
            f"{platform.node()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} ranks={n} "
            f"backend={args.backend} overlap={args.overlap} "
            f"local={'x'.join(map(str, args.local))} Omelyan steps={args.steps}"
        )
        print(
            f"{'round':>5} {'1 rank s':>9} {f'{n}x1 rank s':>11} {f'{n} ranks s':>10} "
            f"{'efficiency':>10} {'shared':>7} {'comm':>6} {'halo %':>7}"
        )
        cols = []
        for i, (one, both, wall, halo) in enumerate(rows):
            eff, shared, comm_eff = one / wall, one / both, both / wall
            cols.append((one, both, wall, eff, shared, comm_eff, 100 * halo / wall))
            print(
                f"{i:>5} {one:>9.4f} {both:>11.4f} {wall:>10.4f} {eff:>10.2f} {shared:>7.2f} "
                f"{comm_eff:>6.2f} {100 * halo / wall:>6.1f}%"
            )
        m = [statistics.median(col) for col in zip(*cols)]
        print(
            f"{'med':>5} {m[0]:>9.4f} {m[1]:>11.4f} {m[2]:>10.4f} {m[3]:>10.2f} {m[4]:>7.2f} "
            f"{m[5]:>6.2f} {m[6]:>6.1f}%"
        )
        print(
            "# efficiency = 1 rank / N ranks = shared (1 rank / N x 1 rank at once) x comm "
            "(N x 1 rank / N ranks); medians of the per-round ratios"
        )


if __name__ == "__main__":
    main()
