"""Sampling efficiency of L2HMC against plain HMC on 2D U(1) (issue 16).

    python benchmarks/bench_l2hmc.py --quick                      # ~2 minutes on one core
    python benchmarks/bench_l2hmc.py --L 16 --betas 4 5 6         # the table in docs/performance.md
    mpiexec -n 2 python benchmarks/bench_l2hmc.py --L 16 --betas 4

For each ``beta`` (2D U(1), ``L x L``, Wilson action), in one run:

1. plain HMC (leapfrog, ``--layers`` steps of the initial step size ``--step-size``) thermalises
   ``--batch`` chains from a hot start for ``--therm`` trajectories;
2. an L2HMC model (``--layers`` generalized leapfrog layers, CNN channels ``--hidden``, networks
   starting at ``--init-scale`` of their random initial output weights) is trained for
   ``--train-steps`` steps of ``--train-batch`` chains started from those configurations, in
   ``--train-dtype``, with the loss ``-<A dQ_sin^2>`` (+ ``--plaquette-weight`` times the
   plaquette ESJD), the action annealed ``gamma: --gamma-start -> 1`` over the first half, Adam
   ``--lr`` with cosine decay to a tenth (timed: the training time);
3. the trained model, copied to float64, samples ``--traj`` trajectories from the thermalised
   configurations; plain HMC runs ``--traj`` trajectories from the same configurations with
   ``--layers`` leapfrog steps over the *same trajectory length* as the trained L2HMC map
   (``tau = sum_k eps_x^k``), so both spend ``layers + 1`` force evaluations per trajectory.

Reported per sampler: acceptance, ``<plaquette>`` (against the exact value), ``<Q_int^2>``
(exact value next to it), ``tau_int(Q_int)`` in trajectories from the Gamma method
(``app.analysis.gamma_method``, chains as replicas; ``frozen`` when no chain changed its
charge), ``tau_int`` times force evaluations per trajectory, wall time per trajectory per
chain, the cost per independent ``Q`` (``2 tau_int x`` wall time per trajectory per chain) and
for L2HMC the training time and the number of independent ``Q`` after which its training has
paid for itself. Short runs give ``tau_int`` with large errors (printed); a ``tau_int`` near
the run length is a lower bound.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import datetime

import numpy as np
import torch
from mpi4py import MPI

from app.analysis import gamma_method
from kernels.integrators import make_integrator
from kernels.l2hmc import L2HMC, L2HMCModel, L2HMCTrainConfig, L2HMCTrainer
from kernels.samplers.hmc import HMC
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette, topological_charge_squared
from parallel import ProcessGrid
from parallel.rng import SiteRNG

ROOT = MPI.COMM_WORLD.Get_rank() == 0


def say(*a) -> None:
    if ROOT:
        print(*a, flush=True)


def run_chain(sampler, theory, x, n_traj, counter0):
    """``n_traj`` trajectories; per-trajectory ``Q_int`` and plaquette (T, B), acceptance,
    wall seconds, force evaluations per trajectory."""
    q, plaq, acc, n_force = [], [], [], 0
    start = time.perf_counter()
    for i in range(n_traj):
        x, rec = sampler.trajectory(x, counter0 + i)
        obs = theory.observables(x)
        q.append(obs["Q_int"].numpy())
        plaq.append(obs["plaquette"].numpy())
        acc.append(rec.acceptance)
        n_force = rec.n_force
    wall = time.perf_counter() - start
    return x, np.array(q), np.array(plaq), float(np.mean(acc)), wall, n_force


def analyse(q, plaq, acc, wall, n_force, batch, n_traj):
    gq = gamma_method(q.T)
    gq2 = gamma_method((q * q).T)
    gp = gamma_method(plaq.T)
    per_traj = wall / (n_traj * batch)
    tau = gq.tau_int
    frozen = not math.isfinite(tau)
    return {
        "acc": acc,
        "plaq": (gp.mean, gp.error),
        "q2": (gq2.mean, gq2.error),
        "tau": (tau, gq.tau_int_error),
        "frozen": frozen,
        "n_force": n_force,
        "tau_force": tau * n_force if not frozen else float("nan"),
        "wall": per_traj,
        "cost": 2.0 * tau * per_traj if not frozen else float("nan"),
        "changes": int(np.sum(np.abs(np.diff(q, axis=0)) > 0.5)),
    }


def bench_beta(beta, args):
    shape = (args.L, args.L)
    grid = ProcessGrid(shape)
    theory = U1Gauge(grid, beta=beta)
    eps0 = args.step_size
    # 1. thermalise with plain HMC
    hmc0 = HMC(
        theory,
        make_integrator(theory, "leapfrog", args.layers, args.layers * eps0),
        SiteRNG(args.seed),
    )
    x = theory.hot_start(SiteRNG(args.seed), 0, args.batch)
    for c in range(1, args.therm + 1):
        x, _ = hmc0.trajectory(x, c)
    # 2. train
    tdtype = getattr(torch, args.train_dtype)
    ttheory = U1Gauge(grid, beta=beta, dtype=tdtype)
    torch.manual_seed(args.seed)
    model = L2HMCModel(
        grid,
        "u1",
        n_layers=args.layers,
        hidden=args.hidden,
        step_size=eps0,
        init_scale=args.init_scale,
        dtype=tdtype,
    )
    cfg = L2HMCTrainConfig(
        steps=args.train_steps,
        batch=args.train_batch,
        lr=args.lr,
        lr_final_factor=0.1,
        gamma_start=args.gamma_start,
        anneal_steps=max(args.train_steps // 2, 1),
        plaquette_weight=args.plaquette_weight,
    )
    start = x[: args.train_batch].to(tdtype) if args.train_batch <= args.batch else None
    trainer = L2HMCTrainer(model, ttheory, SiteRNG(args.seed + 1), cfg, start=start)
    t0 = time.perf_counter()
    hist = trainer.train()
    train_s = time.perf_counter() - t0
    last = hist[-max(len(hist) // 10, 1) :] if hist else []
    if last:
        say(
            f"  trained {len(hist)} steps in {train_s:.0f} s: last-10% mean acceptance "
            f"{np.mean([h['acceptance'] for h in last]):.2f}, <A dQ_sin^2> "
            f"{np.mean([h['dQ_sin2'] for h in last]):.3f}"
        )
    model64 = L2HMCModel(
        grid,
        "u1",
        n_layers=args.layers,
        hidden=args.hidden,
        step_size=eps0,
        init_scale=args.init_scale,
    )
    model64.load_state_dict(model.state_dict())
    tau = float(sum(model64.step_sizes()[1]))
    # 3. sample, both from the same thermalised configurations
    res = {}
    sampler = L2HMC(theory, model64, SiteRNG(args.seed + 2))
    _, q, p, acc, wall, nf = run_chain(sampler, theory, x, args.traj, 1000)
    res["l2hmc"] = analyse(q, p, acc, wall, nf, args.batch, args.traj)
    hmc = HMC(theory, make_integrator(theory, "leapfrog", args.layers, tau), SiteRNG(args.seed + 3))
    _, q, p, acc, wall, nf = run_chain(hmc, theory, x, args.traj, 1000)
    res["hmc"] = analyse(q, p, acc, wall, nf, args.batch, args.traj)
    exact = (mean_plaquette(beta, shape), topological_charge_squared(beta, shape))
    return res, train_s, tau, exact


def fmt(v, e=None, digits=3):
    if not math.isfinite(v):
        return "frozen" if e is None else "-"
    return f"{v:.{digits}f}" if e is None else f"{v:.{digits}f}({e:.{digits}f})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--betas", type=float, nargs="+", default=[4.0, 5.0, 6.0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--therm", type=int, default=100)
    ap.add_argument("--traj", type=int, default=400)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, nargs="+", default=[8, 8])
    ap.add_argument("--step-size", type=float, default=0.2)
    ap.add_argument("--init-scale", type=float, default=0.1)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--gamma-start", type=float, default=0.5)
    ap.add_argument("--plaquette-weight", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--quick", action="store_true", help="L=8, beta=3, short runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.L, args.betas, args.therm, args.traj, args.train_steps = 8, [3.0], 30, 100, 40
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    say(
        f"# bench_l2hmc {datetime.now().isoformat(timespec='minutes')} on "
        f"{platform.node()} ({platform.processor() or platform.machine()}), "
        f"{MPI.COMM_WORLD.Get_size()} rank(s), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    say(f"# {vars(args)}")
    for beta in args.betas:
        say(f"\n## 2D U(1) L={args.L} beta={beta}")
        res, train_s, tau, (plaq_ex, q2_ex) = bench_beta(beta, args)
        say(
            f"  trajectory length tau = sum eps_x = {tau:.3f}; exact <plaq> = {plaq_ex:.4f}, "
            f"<Q^2> = {q2_ex:.3f}"
        )
        say(
            f"  {'sampler':8s} {'acc':>5s} {'<plaq>':>16s} {'<Q^2>':>16s} {'tau_int(Q)':>14s} "
            f"{'nF':>3s} {'tau*nF':>8s} {'ms/traj/ch':>10s} {'ms/indep Q':>10s} {'dQ!=0':>6s}"
        )
        for name, r in res.items():
            say(
                f"  {name:8s} {r['acc']:5.2f} {fmt(*r['plaq'], digits=4):>16s} "
                f"{fmt(*r['q2']):>16s} {fmt(*r['tau'], digits=1):>14s} {r['n_force']:3d} "
                f"{fmt(r['tau_force'], digits=1):>8s} {1e3 * r['wall']:10.2f} "
                f"{fmt(1e3 * r['cost'], digits=1):>10s} {r['changes']:6d}"
            )
        lc, hc = res["l2hmc"]["cost"], res["hmc"]["cost"]
        if math.isfinite(lc) and math.isfinite(hc) and hc > lc:
            say(f"  L2HMC training ({train_s:.0f} s) pays after {train_s / (hc - lc):.0f} indep. Q")
        else:
            say(f"  L2HMC training {train_s:.0f} s; does not pay here (cost per indep. Q)")


if __name__ == "__main__":
    main()
