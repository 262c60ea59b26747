"""Sampling efficiency of L2HMC against plain HMC: 2D U(1), the Schwinger model, SU(3) (issue 16).

    python benchmarks/bench_l2hmc.py --quick                      # ~2 minutes on one core
    python benchmarks/bench_l2hmc.py --L 16 --betas 4 5 6         # the table in docs/performance.md
    mpiexec -n 2 python benchmarks/bench_l2hmc.py --L 16 --betas 4
    python benchmarks/bench_l2hmc.py --theory schwinger --L 8 --betas 2 --kappa 0.265
    python benchmarks/bench_l2hmc.py --theory su3 --L 4 --betas 5.7 --layers 3
    python benchmarks/bench_l2hmc.py --samplers hmc l2hmc ...     # leave out hmc_tuned

``--theory schwinger`` (2D U(1) + Nf = 2 Wilson fermions, pseudofermions): thermalisation with
pseudofermion HMC (Omelyan, fermion force outside, gauge force 3 steps inside, tau = 1, tuned);
the L2HMC model is a U(1) model trained on the *quenched* theory at the same beta (the Schwinger
run then uses the full force, pseudofermions refreshed per trajectory); HMC at the same
trajectory length integrates the whole force with ``--layers`` leapfrog steps. Extra columns:
CG iterations per trajectory and chain (all solves: heatbath, actions, forces).

``--theory su3`` (4D SU(3) Wilson action, ``L^4``): HMC thermalisation (Omelyan, tau = 1,
tuned); L2HMC (:mod:`kernels.l2hmc.su3`) trained on the plaquette ESJD; observables the
plaquette every trajectory and the clover charge ``Q`` after Wilson flow to ``--q-flow-time``
(RK3, step 0.05) every ``--q-every`` trajectories; ``tunnel`` is the fraction of consecutive
measurements whose ``round(Q)`` differ, ``tau_int`` is that of the plaquette (``Q`` on a small
lattice rarely moves), plus ``<|dH|>`` and ``<exp(-dH) |J|>`` (1 at equilibrium).

For each ``beta`` (2D U(1), ``L x L``, Wilson action), in one run:

1. plain HMC (Omelyan, ``tau = 1``, step size tuned to 80% acceptance) thermalises ``--batch``
   chains from a hot start for ``--therm`` trajectories, with ``beta`` ramped from
   ``min(beta, 3)`` to ``beta`` over the first two thirds (the charge distribution then starts
   near equilibrium also where plain HMC freezes);
2. an L2HMC model (``--layers`` generalized leapfrog layers, CNN channels ``--hidden``, networks
   starting at ``--init-scale`` of their random initial output weights) is trained for
   ``--train-steps`` steps of ``--train-batch`` chains started from those configurations, in
   ``--train-dtype``, with the loss ``-<A dQ_sin^2>`` (+ ``--plaquette-weight`` times the
   plaquette ESJD), the action annealed ``gamma: --gamma-start -> 1`` over the first half, Adam
   ``--lr`` with cosine decay to a tenth (timed: the training time);
3. the trained model, copied to float64, samples ``--traj`` trajectories from the thermalised
   configurations; plain HMC runs ``--traj`` trajectories from the same configurations with
   ``--layers`` leapfrog steps over the *same trajectory length* as the trained L2HMC map
   (``tau = sum_k eps_x^k``), so both spend ``layers + 1`` force evaluations per trajectory
   (``hmc``), and once more with its step count tuned to 80% acceptance over 50 trajectories
   (``hmc_tuned``, more force evaluations).

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
from kernels.integrators import LevelSpec, make_integrator
from kernels.l2hmc import L2HMC, L2HMCTrainConfig, L2HMCTrainer, build_l2hmc_model
from kernels.samplers.hmc import HMC
from kernels.theories.schwinger import Schwinger
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette, topological_charge_squared
from kernels.wilson_flow import flow_step_rk3, topological_charge
from parallel import ProcessGrid
from parallel.rng import SiteRNG

ROOT = MPI.COMM_WORLD.Get_rank() == 0


def say(*a) -> None:
    if ROOT:
        print(*a, flush=True)


def run_chain(sampler, theory, x, n_traj, counter0, measure=None, q_every=1):
    """``n_traj`` trajectories; per-trajectory ``Q`` (every ``q_every``) and plaquette (T, B),
    acceptance, wall seconds of the updates (measurements not timed), force evaluations per
    trajectory, and per trajectory and chain ``dH``, ``exp(-dH) |J|`` and CG iterations."""
    measure = measure or (lambda th, f, with_q: U1Gauge.observables(th, f))
    q, plaq, acc, n_force, dh, ratio, cg = [], [], [], 0, [], [], []
    wall = 0.0
    for i in range(n_traj):
        start = time.perf_counter()
        x, rec = sampler.trajectory(x, counter0 + i)
        wall += time.perf_counter() - start
        with_q = (i + 1) % q_every == 0
        obs = measure(theory, x, with_q)
        if with_q:
            q.append(obs["Q_int"].numpy())
        plaq.append(obs["plaquette"].numpy())
        acc.append(rec.acceptance)
        n_force = rec.n_force
        dh.append(rec.dH.numpy())
        lj = 0.0 if rec.log_jacobian is None else rec.log_jacobian.numpy()
        ratio.append(np.exp(-rec.dH.numpy() + lj))
        its = [v for k, v in rec.costs.items() if k.endswith("cg_iterations")]
        cg.append(sum(np.asarray(v, dtype=float) for v in its) if its else np.zeros(len(rec.dH)))
    extra = {"dH": np.array(dh), "ratio": np.array(ratio), "cg": np.array(cg)}
    return x, np.array(q), np.array(plaq), float(np.mean(acc)), wall, n_force, extra


def analyse(q, plaq, acc, wall, n_force, batch, n_traj, extra=None, q_every=1):
    gq = gamma_method(q.T)
    gq2 = gamma_method((q * q).T)
    gp = gamma_method(plaq.T)
    per_traj = wall / (n_traj * batch)
    tau = gq.tau_int * q_every  # in trajectories
    frozen = not math.isfinite(tau)
    out = {
        "acc": acc,
        "plaq": (gp.mean, gp.error),
        "q2": (gq2.mean, gq2.error),
        "tau": (tau, gq.tau_int_error * q_every),
        "tau_plaq": (gp.tau_int, gp.tau_int_error),
        "frozen": frozen,
        "n_force": n_force,
        "tau_force": tau * n_force if not frozen else float("nan"),
        "wall": per_traj,
        "cost": 2.0 * tau * per_traj if not frozen else float("nan"),
        "changes": int(np.sum(np.abs(np.diff(q, axis=0)) > 0.5)),
        "tunnel": float(np.mean(np.abs(np.diff(q, axis=0)) > 0.5)) if len(q) > 1 else 0.0,
    }
    if extra is not None:
        out["abs_dH"] = float(np.mean(np.abs(extra["dH"])))
        out["ratio"] = float(np.mean(extra["ratio"]))
        out["cg"] = float(np.mean(extra["cg"]))
        # machine-independent cost of the fermion runs: CG iterations per independent Q
        out["cg_indep"] = 2.0 * tau * out["cg"] if not frozen else float("nan")
    return out


def _hot_thermalised(theory, hmc0, args, beta, b0):
    """HMC thermalisation from a hot start with beta ramped from b0 (tuned step size)."""
    ramp = max(2 * args.therm // 3, 1)
    x = theory.hot_start(SiteRNG(args.seed), 0, args.batch)
    for c in range(1, args.therm + 1):
        theory.beta = b0 + (beta - b0) * min(c / ramp, 1.0)
        x, _ = hmc0.trajectory(x, c, tune=True)
    theory.beta = beta
    return x


def train_model(grid, model_theory_name, ttheory, x, args, weights):
    """Train an L2HMC model (timed); returns the float64 model and the training seconds."""
    tdtype = ttheory.dtype.to_real() if ttheory.dtype.is_complex else ttheory.dtype
    kw = dict(
        n_layers=args.layers,
        hidden=args.hidden,
        kernel_size=args.kernel_size,
        step_size=args.step_size,
        init_scale=args.init_scale,
    )
    torch.manual_seed(args.seed)
    model = build_l2hmc_model(grid, model_theory_name, dtype=tdtype, **kw)
    cfg = L2HMCTrainConfig(
        steps=args.train_steps,
        batch=args.train_batch,
        lr=args.lr,
        lr_final_factor=0.1,
        gamma_start=args.gamma_start,
        anneal_steps=max(args.train_steps // 2, 1),
        **weights,
    )
    start = x[: args.train_batch].to(ttheory.dtype) if args.train_batch <= args.batch else None
    trainer = L2HMCTrainer(model, ttheory, SiteRNG(args.seed + 1), cfg, start=start)
    t0 = time.perf_counter()
    hist = trainer.train()
    train_s = time.perf_counter() - t0
    last = hist[-max(len(hist) // 10, 1) :] if hist else []
    if last:
        key = "dQ_sin2" if "dQ_sin2" in last[0] else "dP"
        say(
            f"  trained {len(hist)} steps in {train_s:.0f} s: last-10% mean acceptance "
            f"{np.mean([h['acceptance'] for h in last]):.2f}, <A {key}> "
            f"{np.mean([h[key] for h in last]):.3g}"
        )
    model64 = build_l2hmc_model(grid, model_theory_name, **kw)
    model64.load_state_dict(model.state_dict())
    return model64, train_s


def compare(theory, model64, x, args, measure=None, q_every=1, hmc_integrator=None):
    """L2HMC, HMC at the same tau (``--layers`` leapfrog steps) and HMC tuned to 80%."""
    tau = float(sum(model64.step_sizes()[1]))
    res = {}
    runs = {
        "l2hmc": lambda: (L2HMC(theory, model64, SiteRNG(args.seed + 2)), x),
        "hmc": lambda: (
            HMC(
                theory,
                make_integrator(theory, "leapfrog", args.layers, tau),
                SiteRNG(args.seed + 3),
            ),
            x,
        ),
        "hmc_tuned": lambda: _tuned(theory, x, args, tau),
    }
    for name in args.samplers:
        sampler, x0 = runs[name]()
        _, q, p, acc, wall, nf, extra = run_chain(
            sampler, theory, x0, args.traj, 1000, measure, q_every
        )
        res[name] = analyse(q, p, acc, wall, nf, args.batch, args.traj, extra, q_every)
    return res, tau


def _tuned(theory, x, args, tau):
    """Plain HMC at the same tau with its step count tuned to 80% acceptance (leapfrog)."""
    tuned = HMC(
        theory,
        make_integrator(theory, "leapfrog", args.layers, tau),
        SiteRNG(args.seed + 4),
        target_acceptance=0.8,
    )
    xt = x
    for c in range(1, 51):
        xt, _ = tuned.trajectory(xt, 500 + c, tune=True)
    tuned.finish_tuning()
    return tuned, xt


def bench_beta(beta, args):
    shape = (args.L, args.L)
    grid = ProcessGrid(shape)
    theory = U1Gauge(grid, beta=beta)
    # 1. thermalise with plain HMC (Omelyan, tau = 1, tuned to 80% acceptance), the coupling
    #    ramped from min(beta, 3) to beta over the first two thirds (so that the charge
    #    distribution is near equilibrium also where HMC freezes)
    hmc0 = HMC(
        theory,
        make_integrator(theory, "omelyan", 6, 1.0),
        SiteRNG(args.seed),
        target_acceptance=0.8,
    )
    x = _hot_thermalised(theory, hmc0, args, beta, min(beta, 3.0))
    # 2. train
    ttheory = U1Gauge(grid, beta=beta, dtype=getattr(torch, args.train_dtype))
    weights = {"plaquette_weight": args.plaquette_weight}
    model64, train_s = train_model(grid, "u1", ttheory, x, args, weights)
    # 3. sample, both from the same thermalised configurations
    res, tau = compare(theory, model64, x, args)
    exact = (mean_plaquette(beta, shape), topological_charge_squared(beta, shape))
    return res, train_s, tau, exact


def bench_schwinger(beta, args):
    """The Schwinger model: pseudofermion HMC thermalisation, a U(1) model trained on the
    quenched theory, L2HMC vs HMC with the full force (module docstring)."""
    shape = (args.L, args.L)
    grid = ProcessGrid(shape)
    theory = Schwinger(grid, beta, args.kappa, cg_tol=1e-10, cg_max_iter=5000)
    integ = make_integrator(
        theory,
        "omelyan",
        trajectory_length=1.0,
        levels=[LevelSpec(("fermion",), 4), LevelSpec(("gauge",), 3)],
    )
    hmc0 = HMC(theory, integ, SiteRNG(args.seed), target_acceptance=0.8)
    x = _hot_thermalised(theory, hmc0, args, beta, beta)
    ttheory = U1Gauge(grid, beta=beta, dtype=getattr(torch, args.train_dtype))
    weights = {"plaquette_weight": args.plaquette_weight}
    model64, train_s = train_model(grid, "u1", ttheory, x, args, weights)
    res, tau = compare(theory, model64, x, args)
    quenched = (mean_plaquette(beta, shape), topological_charge_squared(beta, shape))
    return res, train_s, tau, quenched


def su3_measure(t_flow: float):
    """Plaquette every trajectory, flowed clover ``Q`` when asked (RK3, step 0.05)."""
    n = max(int(round(t_flow / 0.05)), 1)

    def measure(theory, u, with_q):
        with torch.no_grad():
            out = {"plaquette": theory.observables(u)["plaquette"]}
            if with_q:
                v = u
                for _ in range(n):
                    v = flow_step_rk3(v, theory.grid, t_flow / n)
                out["Q_int"] = topological_charge(v, theory.grid)
        return out

    return measure


def bench_su3(beta, args):
    """SU(3) Wilson action on L^4 (module docstring)."""
    grid = ProcessGrid((args.L,) * 4)
    theory = SU3Gauge(grid, beta=beta)
    hmc0 = HMC(
        theory,
        make_integrator(theory, "omelyan", 6, 1.0),
        SiteRNG(args.seed),
        target_acceptance=0.8,
    )
    x = _hot_thermalised(theory, hmc0, args, beta, beta)
    cdtype = torch.complex64 if args.train_dtype == "float32" else torch.complex128
    ttheory = SU3Gauge(grid, beta=beta, dtype=cdtype)
    weights = {"charge_weight": 0.0, "plaquette_weight": 1.0}
    model64, train_s = train_model(grid, "su3", ttheory, x, args, weights)
    res, tau = compare(theory, model64, x, args, su3_measure(args.q_flow_time), args.q_every)
    return res, train_s, tau, (float("nan"), float("nan"))


def fmt(v, e=None, digits=3):
    if not math.isfinite(v):
        return "frozen" if e is None else "-"
    return f"{v:.{digits}f}" if e is None else f"{v:.{digits}f}({e:.{digits}f})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--betas", type=float, nargs="+", default=[4.0, 5.0, 6.0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--therm", type=int, default=150)
    ap.add_argument("--traj", type=int, default=400)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, nargs="+", default=[8, 8])
    ap.add_argument("--kernel-size", type=int, default=3, help="CNN kernel size (odd)")
    ap.add_argument("--step-size", type=float, default=0.1)
    ap.add_argument("--init-scale", type=float, default=0.1)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--gamma-start", type=float, default=0.5)
    ap.add_argument("--plaquette-weight", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--theory", default="u1", choices=["u1", "schwinger", "su3"])
    ap.add_argument("--kappa", type=float, default=0.265, help="schwinger: hopping parameter")
    ap.add_argument("--q-every", type=int, default=2, help="su3: trajectories between Q")
    ap.add_argument("--q-flow-time", type=float, default=1.0, help="su3: Wilson-flow time of Q")
    ap.add_argument(
        "--samplers",
        nargs="+",
        default=["l2hmc", "hmc", "hmc_tuned"],
        choices=["l2hmc", "hmc", "hmc_tuned"],
    )
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
    bench = {"u1": bench_beta, "schwinger": bench_schwinger, "su3": bench_su3}[args.theory]
    title = {"u1": "2D U(1)", "schwinger": f"Schwinger kappa={args.kappa}", "su3": "SU(3) 4D"}
    for beta in args.betas:
        say(f"\n## {title[args.theory]} L={args.L} beta={beta}")
        res, train_s, tau, (plaq_ex, q2_ex) = bench(beta, args)
        ref = "quenched" if args.theory == "schwinger" else "exact"
        say(
            f"  trajectory length tau = sum eps_x = {tau:.3f}; {ref} <plaq> = {plaq_ex:.4f}, "
            f"<Q^2> = {q2_ex:.3f}"
        )
        say(
            f"  {'sampler':9s} {'acc':>5s} {'<plaq>':>16s} {'<Q^2>':>16s} {'tau_int(Q)':>14s} "
            f"{'tau(plaq)':>10s} {'nF':>3s} {'tau*nF':>8s} {'ms/traj/ch':>10s} "
            f"{'ms/indep Q':>10s} {'dQ!=0':>6s} {'tunnel':>6s} {'<|dH|>':>7s} {'<e^-dH J>':>9s} "
            f"{'CG/traj':>8s} {'CG/indepQ':>9s}"
        )
        for name, r in res.items():
            say(
                f"  {name:9s} {r['acc']:5.2f} {fmt(*r['plaq'], digits=4):>16s} "
                f"{fmt(*r['q2']):>16s} {fmt(*r['tau'], digits=1):>14s} "
                f"{fmt(*r['tau_plaq'], digits=1):>10s} {r['n_force']:3d} "
                f"{fmt(r['tau_force'], digits=1):>8s} {1e3 * r['wall']:10.2f} "
                f"{fmt(1e3 * r['cost'], digits=1):>10s} {r['changes']:6d} {r['tunnel']:6.3f} "
                f"{r['abs_dH']:7.3f} {r['ratio']:9.3f} {r['cg']:8.0f} "
                f"{fmt(r['cg_indep'], digits=0):>9s}"
            )
        if "l2hmc" not in res or len(res) < 2:
            continue
        lc = res["l2hmc"]["cost"]
        hc = min(r["cost"] for k, r in res.items() if k != "l2hmc")
        if math.isfinite(lc) and math.isfinite(hc) and hc > lc:
            say(f"  L2HMC training ({train_s:.0f} s) pays after {train_s / (hc - lc):.0f} indep. Q")
        else:
            say(f"  L2HMC training {train_s:.0f} s; does not pay here (cost per indep. Q)")


if __name__ == "__main__":
    main()
