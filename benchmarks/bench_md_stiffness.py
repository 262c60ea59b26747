"""Molecular-dynamics stiffness: trivialized HMC against plain HMC at fixed step counts.

    python benchmarks/bench_md_stiffness.py --model sweep-u1-L16-b6 --models /tmp/models \\
        --steps 4,16,64,256 --batch 4 --traj 2

For a flow from the model registry (its card gives the theory, couplings and lattice), plain
HMC is thermalised from a hot start (``--therm`` trajectories, step size tuned to acceptance
0.9); its final configurations ``U`` are the equilibrium starts of both samplers (trivialized
HMC from ``V = F^{-1}(U)``). Then, for each Omelyan step count ``n`` of ``--steps``
(``tau = 1``, no tuning), each sampler runs ``--traj`` trajectories from those starts and the
table gives per sampler: ``<|dH|>``, ``<min(1, exp(-dH))>`` (the acceptance rate), the force
at the starts (root mean square and maximum over all variables), the curvature of the action
along a random direction at the starts, and the wall time per
trajectory per chain. For a second-order integrator ``dH ~ eps^2 x`` (force curvature), so a
stiff trivialized action shows as ``|dH|`` that stays large until ``eps`` is below
``1 / sqrt(max curvature)``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from flow_bench_setup import add_flow_arguments, load_trivialized, say
from mpi4py import MPI

from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from parallel.rng import SiteRNG


def force_stats(theory, field) -> tuple[float, float]:
    """Root mean square and maximum of the force over all variables and chains (global)."""
    f = theory.force(field).detach()
    comm = theory.grid.comm
    sq = comm.allreduce(float(f.pow(2).sum()), op=MPI.SUM)
    n = comm.allreduce(f.numel(), op=MPI.SUM)
    mx = comm.allreduce(float(f.abs().max()), op=MPI.MAX)
    return (sq / n) ** 0.5, mx


def curvature(theory, field, seed: int, s: float = 1e-7) -> float:
    """Largest (over chains) second derivative of the action along a random unit direction
    ``d`` (Gaussian, normalised over the whole lattice), ``d . (F(x + s d) - F(x - s d)) / 2 s``
    with the force ``F = dS/dx``; a leapfrog-type integrator is unstable for
    ``eps > 2 / sqrt(curvature)`` along that direction."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(field.shape, generator=gen, dtype=field.dtype)
    domain = theory.grid.domain_comm  # per-chain sums over the chain's lattice
    dims = tuple(range(1, d.ndim))
    d = d / torch.from_numpy(
        np.sqrt(domain.allreduce(d.pow(2).sum(dim=dims).numpy(), op=MPI.SUM))
    ).reshape((-1,) + (1,) * (d.ndim - 1))
    df = theory.force(field + s * d) - theory.force(field - s * d)
    c = domain.allreduce((d * df).sum(dim=dims).numpy(), op=MPI.SUM) / (2 * s)
    return theory.grid.comm.allreduce(float(np.max(np.abs(c))), op=MPI.MAX)


def run_fixed(theory, start, n_steps, n_traj, seed, batch):
    """``n_traj`` trajectories of ``n_steps`` Omelyan steps from ``start``, all accepted or
    not by Metropolis; returns (<|dH|>, <min(1, e^-dH)>, s / trajectory / chain)."""
    hmc = HMC(theory, make_integrator(theory, "omelyan", n_steps, 1.0), SiteRNG(seed))
    field, dh, prob, times = start, [], [], []
    for t in range(1, n_traj + 1):
        field, rec = hmc.trajectory(field, t, theory.grid.replica * batch)
        dh.extend(rec.dH.abs().double().tolist())
        prob.extend(rec.acceptance_probability.double().tolist())
        times.append(MPI.COMM_WORLD.allreduce(rec.wall_time, op=MPI.MAX))
    return sum(dh) / len(dh), sum(prob) / len(prob), sum(times) / len(times) / batch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_flow_arguments(ap)
    ap.add_argument("--steps", default="4,16,64,256", help="Omelyan step counts, comma list")
    ap.add_argument("--batch", type=int, default=4, help="chains")
    ap.add_argument("--traj", type=int, default=2, help="trajectories per step count")
    ap.add_argument("--therm", type=int, default=200, help="plain-HMC thermalisation")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    theory, triv, _ = load_trivialized(args, "bench_md_stiffness")
    grid = theory.grid

    rng = SiteRNG(args.seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 4, 1.0), rng, target_acceptance=0.9)
    off = grid.replica * args.batch
    u = theory.hot_start(rng, 0, args.batch, off)
    t0 = time.perf_counter()
    for t in range(1, args.therm + 1):
        u, _ = hmc.trajectory(u, t, off, tune=t <= (3 * args.therm) // 4)
        if t == (3 * args.therm) // 4:
            hmc.finish_tuning()
    v = triv.from_physical(u)
    say(
        f"# plain HMC thermalised: {args.therm} trajectories, {hmc.n_steps} steps "
        f"({time.perf_counter() - t0:.0f} s); V = F^-1(U) max |F(V) - U| = "
        f"{float((triv.to_physical(v) - u).abs().max()):.1e}"
    )
    rms_p, max_p = force_stats(theory, u)
    rms_t, max_t = force_stats(triv, v)
    say(f"# force at the starts: plain rms {rms_p:.3g} max {max_p:.3g}; ")
    say(f"#   trivialized rms {rms_t:.3g} max {max_t:.3g}")
    c_p, c_t = curvature(theory, u, args.seed), curvature(triv, v, args.seed)
    say(
        f"# curvature along a random direction (max over chains): plain {c_p:.3g} "
        f"(stable eps < {2 / c_p**0.5:.3g}), trivialized {c_t:.3g} (eps < {2 / c_t**0.5:.3g})"
    )
    say("")
    say(
        "| steps | eps | plain <\\|dH\\|> | plain acc. | plain s/traj/chain "
        "| triv. <\\|dH\\|> | triv. acc. | triv. s/traj/chain |"
    )
    say("|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.steps.split(",") if s.strip()):
        p = run_fixed(theory, u, n, args.traj, args.seed + n, args.batch)
        q = run_fixed(triv, v, n, args.traj, args.seed + n, args.batch)
        say(
            f"| {n} | {1.0 / n:.4f} | {p[0]:.3g} | {p[1]:.3f} | {p[2]:.2e} "
            f"| {q[0]:.3g} | {q[1]:.3f} | {q[2]:.2e} |"
        )


if __name__ == "__main__":
    main()
