"""Sampler shoot-out on pure 2D U(1) at L = 32 and 64, beta = 4, 6, 8 (issue 15 items 3 and 6).

    nice python -m benchmarks.bench_shootout_u1 --L 32 --beta 4 --models runs/u1models  # one case
    nice python -m benchmarks.bench_shootout_u1 --train-only --models runs/u1models      # training
    python -m benchmarks.bench_shootout_u1 --quick                                       # seconds

Every learned model is **trained once** at ``--train-L`` (16) and ``--train-beta`` (4) and
saved in the model registry (:mod:`app.registry`; the card records the lattice and couplings
it was trained at and the training CPU seconds); each case ``(--L, --beta)`` loads it from the
registry *without retraining* (transfer up in L and in beta) and prints where the card says it
was trained. A registry with the models already present (same training options) is reused:
train once, then run the six cases, each in its own process.

Per case, in one run, all samplers start from the same thermalised configurations: plain HMC
from a hot start with beta ramped from ``min(beta, 3)`` to ``beta`` over the first two thirds
of ``--therm`` trajectories (tuned Omelyan, trajectory length 1, target acceptance
``--target``), ``--chains`` chains. Then, each from the first chains of that batch:

* ``hmc``: plain HMC (step count frozen after the thermalisation), ``--chains`` chains x
  ``--traj`` trajectories;
* ``nthmc``: HMC on the action transformed by :func:`kernels.flows.nthmc_u1.u1_nthmc_flow`
  (8 layers, CNN hidden (8,), plaquettes + rectangles) trained by
  :class:`kernels.flows.force_norm.ForceNormTrainer` (objective ``force_p``, p = 2) on plain-HMC
  configurations at the training point; step count tuned on ``--tune-chains`` chains for
  ``--tune-traj`` trajectories (:func:`kernels.samplers.nthmc.tune_on_few_chains`), frozen;
* ``triv``: trivialized HMC with the existing :func:`kernels.flows.u1.u1_stout_flow` (4
  stout layers, one coefficient each) trained by reverse KL at the training point, tuned the
  same way;
* ``fm``: the same stout flow's independence Metropolis (one update = one proposal);
* ``fm_sweep``: independence Metropolis with :func:`kernels.flows.u1_sweep.u1_sweep_flow`
  (2 (L - 1) spline couplings, no hidden layer) started from the fitted single-plaquette map at
  the case's beta (:func:`kernels.flows.u1_sweep.init_marginal`; the docs' winner at L = 16).
  Its layers depend on L, so it is *built per case* (the 1D fit is its "training"), not
  transferred;
* ``l2hmc``: :class:`kernels.l2hmc.L2HMC` with a U(1) model (8 leapfrog layers, CNN [8, 8])
  trained at the training point (:func:`benchmarks.bench_l2hmc.train_model`), transferred.

The learned samplers cost 30-1000x plain HMC per trajectory, so they get fewer chains and
trajectories (``--learned-chains``, ``--learned-traj``, per sampler ``--<name>-traj``): their
tau_int are short-run estimates and say so.

Reported per sampler: acceptance, ``tau_int`` of ``Q_int`` and of the plaquette (Gamma method,
:func:`app.analysis.gamma_method`, chains as replicas; ``*`` where the run has fewer charge
changes than half the independent ``Q`` it would claim), the lag-one charge autocorrelation
time ``tau_1(Q) = 2 <Q^2>_exact / <dQ^2>`` (meaningful in runs shorter than tau, see
:func:`analyse`), tunnelling rate (changes of
``round(Q)`` per trajectory and chain), ``<Q^2>`` and ``<plaq>`` next to their exact values
(:mod:`kernels.theories.u1_exact`), force evaluations per trajectory, process-CPU seconds per
trajectory and chain (the updates only; torch on one thread), the training CPU seconds (from
the model card; shared by all six cases but charged to each in full), the cost per
independent ``Q`` ``c = 2 tau x CPU/traj`` with ``tau = max(tau_int(Q), tau_1(Q))`` (the
more conservative estimate) and with training included ``c + T_train / N_ind``
(``N_ind = chains x traj / (2 tau)`` of this run). Break-even:
with ``r`` = (learned CPU/traj) / (HMC CPU/traj) the learned sampler pays (before training)
only when ``tau_int(Q) < tau_HMC / r``; the script prints that bound next to the measured
value, and the network cost per MD force evaluation relative to the plain force.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from app.analysis import gamma_method
from app.l2hmc import load_l2hmc_model
from app.registry import load_model, read_card, save_model, versions

try:  # python -m benchmarks.bench_shootout_u1
    from benchmarks.bench_l2hmc import train_model
except ImportError:  # python benchmarks/bench_shootout_u1.py
    from bench_l2hmc import train_model
from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.flows.priors import prior_for
from kernels.flows.train import TrainConfig, Trainer
from kernels.flows.u1 import u1_stout_flow
from kernels.flows.u1_sweep import init_marginal, u1_sweep_flow
from kernels.integrators import make_integrator
from kernels.l2hmc import L2HMC
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.nthmc import tune_on_few_chains
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette, topological_charge_squared
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SAMPLERS = ("hmc", "nthmc", "triv", "fm", "fm_sweep", "l2hmc")
LEARNED = ("nthmc", "triv", "l2hmc")  # trained at the training point, from the registry
NAMES = {"nthmc": "u1shoot-nthmc", "triv": "u1shoot-stout", "l2hmc": "u1shoot-l2hmc"}


def cpu() -> float:
    """Process CPU seconds."""
    return time.process_time()


def say(*a) -> None:
    print(*a, flush=True)


# ------------------------------------------------------------------ thermalisation
def thermalise(theory: U1Gauge, chains: int, n_therm: int, target: float, seed: int):
    """Plain HMC from hot, beta ramped from min(beta, 3) over 2/3 of the run, step count tuned
    over the whole run and then frozen; returns (configurations, tuned HMC)."""
    beta = theory.beta
    b0 = min(beta, 3.0)
    hmc = HMC(
        theory,
        make_integrator(theory, "omelyan", 4, 1.0),
        SiteRNG(seed),
        target_acceptance=target,
    )
    ramp = max(2 * n_therm // 3, 1)
    u = theory.hot_start(hmc.rng, 0, chains)
    for c in range(1, n_therm + 1):
        theory.beta = b0 + (beta - b0) * min(c / ramp, 1.0)
        u, _ = hmc.trajectory(u, c, tune=True)
    theory.beta = beta
    hmc.finish_tuning()
    return u, hmc


# ------------------------------------------------------------------ training (once)
def _card_train(ref: str, root) -> float:
    return float(read_card(ref, root)["train_config"].get("cpu_s", math.nan))


def _existing(root, name: str, options: dict) -> str | None:
    """The newest registry version of ``name`` trained with ``options`` (else None)."""
    for short, _path in reversed(versions(root, name)):
        ref = f"{name}@{short}"
        if read_card(ref, root)["train_config"].get("options") == options:
            return ref
    return None


def train_all(a, root) -> dict[str, str]:
    """Train (or find in the registry) the NTHMC, stout and L2HMC models at the training point."""
    grid = single_rank_grid((a.train_L, a.train_L))
    theory = U1Gauge(grid, a.train_beta)
    opts = {
        "nthmc": {
            "layers": a.nthmc_layers,
            "hidden": [8],
            "steps": a.nthmc_steps,
            "configs": a.train_configs,
            "seed": a.seed,
        },
        "triv": {"layers": 4, "steps": a.stout_steps, "batch": 16, "seed": a.seed},
        "l2hmc": {
            "layers": a.l2hmc_layers,
            "hidden": [8, 8],
            "steps": a.l2hmc_steps,
            "batch": 8,
            "seed": a.seed,
        },
    }
    refs = {k: _existing(root, NAMES[k], opts[k]) for k in LEARNED}
    if all(refs.values()):
        for k in LEARNED:
            say(f"# {k}: reusing {refs[k]} ({_card_train(refs[k], root):.0f} s CPU training)")
        return refs
    say(f"# training at L={a.train_L} beta={a.train_beta} (once; the cases load from {root})")
    t0 = cpu()
    chains = 8
    u, hmc = thermalise(theory, chains, a.train_therm, a.target, a.seed + 11)
    snaps = []
    c = a.train_therm + 1
    for _ in range(a.train_configs):
        for _ in range(5):
            u, _ = hmc.trajectory(u, c)
            c += 1
        snaps.append(u.clone())
    data = torch.cat(snaps)
    t_data = cpu() - t0
    say(f"#   plain-HMC data: {len(data)} configurations, {t_data:.1f} s CPU")
    if not refs["nthmc"]:
        t0 = cpu()
        torch.manual_seed(a.seed)
        flow = u1_nthmc_flow(grid, n_layers=a.nthmc_layers, hidden=(8,))
        n_val = max(2, len(data) // 5)
        cfg = ForceNormConfig(
            steps=a.nthmc_steps,
            batch=8,
            lr=2e-3,
            objective="force_p",
            power=2.0,
            validate_every=5,
            patience=3,
        )
        tr = ForceNormTrainer(flow, theory, data[:-n_val], cfg, validation=data[-n_val:])
        val0 = tr.validate()
        tr.train()
        t = cpu() - t0 + t_data
        say(
            f"#   nthmc: {tr.step_count} force-norm steps, validation {val0:.4g} -> "
            f"{tr.best_val:.4g}, {t:.1f} s CPU (with the data)"
        )
        refs["nthmc"] = save_model(
            flow,
            theory,
            NAMES["nthmc"],
            root,
            train_config={"options": opts["nthmc"], "cpu_s": t, "objective": "force_p"},
            description="benchmarks/bench_shootout_u1.py",
        )
    if not refs["triv"]:
        t0 = cpu()
        torch.manual_seed(a.seed)
        flow = u1_stout_flow(grid, n_layers=4)
        cfg = TrainConfig(steps=a.stout_steps, batch=16, lr=2e-2, lr_min=2e-3)
        hist = Trainer(flow, theory, cfg, rng=SiteRNG(a.seed + 1)).train() if a.stout_steps else []
        t = cpu() - t0
        eps = [f"{float(layer.eps[0].detach()):+.3f}" for layer in flow.layers]
        say(
            f"#   stout: {a.stout_steps} reverse-KL steps, eps {eps}, "
            f"KL {hist[-1]['kl'] if hist else math.nan:.2f}, {t:.1f} s CPU"
        )
        refs["triv"] = save_model(
            flow,
            theory,
            NAMES["triv"],
            root,
            train_config={"options": opts["triv"], "cpu_s": t, "objective": "reverse_kl"},
            description="benchmarks/bench_shootout_u1.py",
        )
    if not refs["l2hmc"]:
        t0 = cpu()
        args = SimpleNamespace(
            layers=a.l2hmc_layers,
            hidden=[8, 8],
            kernel_size=3,
            step_size=1.0 / a.l2hmc_layers,
            init_scale=0.1,
            seed=a.seed,
            train_steps=a.l2hmc_steps,
            train_batch=8,
            batch=chains,
            lr=2e-3,
            gamma_start=0.5,
        )
        ttheory = U1Gauge(grid, a.train_beta, dtype=torch.float32)
        model, _ = train_model(grid, "u1", ttheory, u, args, {"plaquette_weight": 0.0})
        t = cpu() - t0
        say(f"#   l2hmc: {a.l2hmc_steps} steps, {t:.1f} s CPU")
        refs["l2hmc"] = save_model(
            model,
            theory,
            NAMES["l2hmc"],
            root,
            train_config={"options": opts["l2hmc"], "cpu_s": t, "objective": "l2hmc"},
            description="benchmarks/bench_shootout_u1.py",
        )
    for k in LEARNED:
        say(f"#   saved {refs[k]}")
    return refs


# ------------------------------------------------------------------ runs
def run(step, theory: U1Gauge, x, n_traj: int, counter: int) -> dict:
    """``step(x, c) -> (x, u, acceptance, n_force)`` ``n_traj`` times; CPU of the updates."""
    q, plaq, acc, nf = [], [], [], []
    t = 0.0
    for i in range(n_traj):
        t0 = cpu()
        x, u, a_, n = step(x, counter + i)
        t += cpu() - t0
        with torch.no_grad():
            obs = U1Gauge.observables(theory, u)
        q.append(obs["Q_int"].numpy())
        plaq.append(obs["plaquette"].numpy())
        acc.append(a_)
        nf.append(n)
    return {
        "Q": np.array(q).T,  # (chains, trajectories)
        "plaq": np.array(plaq).T,
        "acc": float(np.mean(acc)),
        "n_force": float(np.mean(nf)),
        "cpu": t,
        "chains": x.shape[0] if torch.is_tensor(x) else x.u.shape[0],
        "traj": n_traj,
    }


def hmc_step(sampler, to_physical=None, flow_forces: bool = False):
    def step(x, c):
        x, rec = sampler.trajectory(x, c)
        u = x if to_physical is None else to_physical(x)
        n = rec.force_evaluations[0] if flow_forces else rec.n_force
        return x, u, float(rec.accepted.double().mean()), n

    return step


def run_transformed(theory, flow, u0, n_hmc: int, a, n_traj: int, chains: int, seed: int):
    """HMC on the flow-transformed action: step count tuned on few chains, frozen, then run.
    Returns (result, tuning CPU s, frozen step count)."""
    tt = TransformedTheory(theory, flow)
    v0 = tt.from_physical(u0[:chains])
    rng = SiteRNG(seed)
    t0 = cpu()
    tuner = HMC(tt, make_integrator(tt, "omelyan", n_hmc, 1.0), rng, target_acceptance=a.target)
    n_steps, _ = tune_on_few_chains(tuner, v0[: a.tune_chains].clone(), a.tune_traj, 5000)
    t_tune = cpu() - t0
    prod = HMC(tt, make_integrator(tt, "omelyan", n_steps, 1.0), rng)
    res = run(hmc_step(prod, tt.to_physical, flow_forces=True), theory, v0, n_traj, 1000)
    return res, t_tune, n_steps


def run_fm(theory, flow, u0, n_traj: int, seed: int) -> dict:
    fm = FlowMetropolis(theory, flow, prior_for(theory), SiteRNG(seed))

    def step(s, c):
        s, rec = fm.step(s, c)
        return s, s.u, rec.acceptance, 0

    return run(step, theory, fm.state_of(u0), n_traj, 3000)


# ------------------------------------------------------------------ analysis
def tau_of(series: np.ndarray) -> tuple[float, float]:
    """Gamma-method tau_int (>= 0.5) or inf when no chain moved."""
    if np.ptp(series, axis=1).max() == 0:
        return math.inf, math.nan
    g = gamma_method(list(series))
    return max(0.5, g.tau_int), g.tau_int_error


def analyse(res: dict, train_cpu: float, q2_exact: float = math.nan) -> dict:
    """Gamma-method tau_int, costs, and the lag-one estimate ``tau_1(Q) = 2 <Q^2>_exact /
    <(Q_{t+1} - Q_t)^2>``: the exponential autocorrelation time ``1 / (1 - rho(1))`` implied
    by the one-trajectory autocorrelation ``rho(1) = 1 - <dQ^2> / (2 <Q^2>)`` with the exact
    variance. It needs only the (well-measured) mean square charge step, so it is meaningful
    in runs far shorter than tau; for a single exponential mode (AR(1) with coefficient rho)
    it is ``1 / (1 - rho)`` against ``tau_int = (1 + rho) / (2 (1 - rho))``; with fast
    back-and-forth charge changes it is an underestimate of the slow mode."""
    q = res["Q"]
    tq, tq_e = tau_of(q)
    tp, tp_e = tau_of(res["plaq"])
    gq2 = gamma_method(list(q * q)) if np.ptp(q * q, axis=1).max() > 0 else None
    gp = gamma_method(list(res["plaq"]))
    chains, n = res["chains"], res["traj"]
    per = res["cpu"] / (chains * n)
    n_ind = chains * n / (2.0 * tq) if math.isfinite(tq) else 0.0  # as the Gamma method claims
    changes = int(np.sum(np.diff(np.round(q), axis=1) != 0))
    dq2 = float(np.mean(np.diff(q, axis=1) ** 2)) if n > 1 else 0.0
    tau_1 = 2.0 * q2_exact / dq2 if dq2 > 0 else math.inf
    # costs with the larger (more conservative) of the two estimates
    teff = tq if math.isnan(tau_1) else max(tq, tau_1)
    cost = 2.0 * teff * per
    n_eff = chains * n / (2.0 * teff) if math.isfinite(teff) else 0.0
    return {
        # fewer charge changes than half the claimed independent Q (independent draws change
        # round(Q) with probability 1 - sum_k p_k^2 > 1/2 at these volumes): the run cannot
        # resolve tau_int(Q) (nearly frozen chains), which is then an underestimate
        "resolved": changes >= 0.5 * n_ind,
        "changes": changes,
        "tau_Q": tq,
        "tau_Q_err": tq_e,
        "tau_P": tp,
        "tau_P_err": tp_e,
        "tunnel": float(np.mean(np.diff(np.round(q), axis=1) != 0)) if n > 1 else 0.0,
        "tau_1": tau_1,
        "q2": (gq2.mean, gq2.error) if gq2 is not None else (float(np.mean(q * q)), math.nan),
        "plaq": (gp.mean, gp.error),
        "cpu_traj": per,
        "cost": cost,
        "cost_train": cost + (train_cpu / n_eff if n_eff > 0 else math.inf),
        "train": train_cpu,
        "n_ind": n_eff,
        "tau": teff,
    }


def fmt(v: float, e: float | None = None, d: int = 2) -> str:
    if not math.isfinite(v):
        return "frozen"
    if e is None or not math.isfinite(e):
        return f"{v:.{d}g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.{d}f}"
    return f"{v:.{d}f}({e:.{d}f})"


HEADER = (
    "| sampler | chains x traj | acc | tau_int(Q) | tau_1(Q) | tau_int(P) | Q changes/traj (total) "
    "| <Q^2> "
    "| <plaq> "
    "| force/traj | CPU s/traj | train CPU s | cost/indep Q | + training | ratio | setup |\n"
    + "|"
    + "---|" * 16
)


def row(name: str, r: dict, base: dict, note: str) -> str:
    ratio = r["cost_train"] / base["cost"] if base["cost"] > 0 else math.nan
    mark = "" if r["resolved"] or not math.isfinite(r["tau_Q"]) else " *"
    return (
        f"| {name} | {r['chains']} x {r['traj']} | {r['acc']:.3f} | "
        f"{fmt(r['tau_Q'], r['tau_Q_err'], 1)}{mark} | {fmt(r['tau_1'], None, 1)} | "
        f"{fmt(r['tau_P'], r['tau_P_err'], 1)} | "
        f"{r['tunnel']:.4f} ({r['changes']}) | {fmt(*r['q2'])} | {fmt(*r['plaq'], 5)} | "
        f"{r['n_force']:.0f} | "
        f"{r['cpu_traj']:.3g} | {r['train']:.0f} | {r['cost']:.3g} | {r['cost_train']:.3g} | "
        f"{fmt(ratio)} | {note} |"
    )


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=32)
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--train-L", type=int, default=16)
    ap.add_argument("--train-beta", type=float, default=4.0)
    ap.add_argument("--train-only", action="store_true", help="train/save the models, no case")
    ap.add_argument("--models", default=None, help="registry root (default: a temporary one)")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    ap.add_argument("--chains", type=int, default=64, help="plain HMC chains (and thermalised)")
    ap.add_argument("--therm", type=int, default=200)
    ap.add_argument("--traj", type=int, default=2000, help="plain HMC trajectories")
    ap.add_argument("--target", type=float, default=0.8, help="HMC target acceptance")
    ap.add_argument("--learned-chains", type=int, default=4)
    ap.add_argument("--learned-traj", type=int, default=40)
    for s in SAMPLERS[1:]:
        ap.add_argument(f"--{s.replace('_', '-')}-traj", type=int, default=0)
        ap.add_argument(f"--{s.replace('_', '-')}-chains", type=int, default=0)
    ap.add_argument("--tune-chains", type=int, default=2)
    ap.add_argument("--tune-traj", type=int, default=8)
    g = ap.add_argument_group("training at (--train-L, --train-beta)")
    g.add_argument("--train-therm", type=int, default=150)
    g.add_argument("--train-configs", type=int, default=6, help="snapshots of 8 chains")
    g.add_argument("--nthmc-layers", type=int, default=8)
    g.add_argument("--nthmc-steps", type=int, default=60)
    g.add_argument("--stout-steps", type=int, default=150)
    g.add_argument("--l2hmc-layers", type=int, default=8)
    g.add_argument("--l2hmc-steps", type=int, default=200)
    g.add_argument("--fit-steps", type=int, default=2000, help="fm_sweep: 1D fit Adam steps")
    g.add_argument("--fit-polish", type=int, default=30, help="fm_sweep: 1D fit L-BFGS rounds")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="L=8 from L=4, a few updates (smoke)")
    a = ap.parse_args(argv)
    if a.quick:
        for key, val in dict(
            L=8,
            beta=3.0,
            train_L=4,
            train_beta=2.0,
            chains=4,
            therm=4,
            traj=6,
            learned_chains=2,
            learned_traj=3,
            tune_traj=2,
            train_therm=4,
            train_configs=2,
            nthmc_layers=8,
            nthmc_steps=2,
            stout_steps=2,
            l2hmc_layers=2,
            l2hmc_steps=2,
            fit_steps=20,
            fit_polish=1,
        ).items():
            if getattr(a, key) == ap.get_default(key):
                setattr(a, key, val)
    if a.L < 4 or a.L % 4 or a.train_L % 4:
        raise ValueError(f"--L and --train-L must be multiples of 4, got {a.L}, {a.train_L}")
    if a.chains < 2 or a.traj < 2 or a.learned_chains > a.chains:
        raise ValueError("need --chains >= 2, --traj >= 2 and --learned-chains <= --chains")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    tmp = None
    if a.models is None:
        tmp = tempfile.TemporaryDirectory(prefix="u1shoot-")
        a.models = tmp.name
    root = Path(a.models)
    say(
        f"# bench_shootout_u1 {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC {platform.node()} "
        f"{platform.processor() or platform.machine()} torch {torch.__version__} threads=1"
    )
    say(f"# command: {' '.join([sys.executable, *sys.argv])}")
    try:
        return _main(a, root)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _main(a, root: Path) -> dict:
    refs = train_all(a, root) if set(a.samplers) & set(LEARNED) or a.train_only else {}
    if a.train_only:
        return {}
    grid = single_rank_grid((a.L, a.L))
    theory = U1Gauge(grid, a.beta)
    q2_ex = topological_charge_squared(a.beta, (a.L, a.L))
    p_ex = mean_plaquette(a.beta, (a.L, a.L))
    say(
        f"# 2D U(1) L={a.L} beta={a.beta}: exact <Q^2> = {q2_ex:.4f}, <plaq> = {p_ex:.5f}; "
        f"{a.chains} chains thermalised {a.therm} traj (CPU = process CPU seconds, 1 thread)"
    )
    t0 = cpu()
    u0, hmc = thermalise(theory, a.chains, a.therm, a.target, a.seed)
    say(f"# thermalisation: {cpu() - t0:.1f} s CPU, HMC Omelyan steps {hmc.n_steps}")
    rows: dict[str, dict] = {}
    notes: dict[str, str] = {}

    def add(name: str, res: dict, train: float, note: str) -> None:
        rows[name] = {**res, **analyse(res, train, q2_ex)}
        notes[name] = note
        say(row(name, rows[name], rows["hmc"], note))

    res = run(hmc_step(hmc), theory, u0, a.traj, 100)
    say(HEADER)
    add("hmc", res, 0.0, f"Omelyan {hmc.n_steps} steps, tau=1")

    def size(s: str) -> tuple[int, int]:
        ch = getattr(a, f"{s}_chains") or a.learned_chains
        return min(ch, a.chains), getattr(a, f"{s}_traj") or a.learned_traj

    def trained_note(ref: str) -> str:
        card = read_card(ref, root)
        where = f"L={card['lattice'][0]} beta={card['couplings']['beta']:g}"
        if card["lattice"] != [a.train_L, a.train_L] or card["couplings"]["beta"] != a.train_beta:
            raise RuntimeError(f"card of {ref}: trained at {where}, not at the training point")
        return f"trained at {where} ({ref.split('@')[0]}), run at L={a.L} beta={a.beta:g}"

    def frozen_flow(ref: str):
        flow, _ = load_model(ref, grid, theory, root=root, dtype=torch.float64)
        return flow.requires_grad_(False)

    for name, seed in (("nthmc", a.seed + 100), ("triv", a.seed + 200)):  # trivialized HMC
        if name not in a.samplers:
            continue
        ch, n = size(name)
        flow = frozen_flow(refs[name])
        res, t_tune, n_st = run_transformed(theory, flow, u0, hmc.n_steps, a, n, ch, seed)
        t = _card_train(refs[name], root) + t_tune
        add(name, res, t, f"{n_st} steps; {trained_note(refs[name])}; tune {t_tune:.0f} s")
    if "fm" in a.samplers:
        ch, n = size("fm")
        res = run_fm(theory, frozen_flow(refs["triv"]), u0[:ch], n, a.seed + 300)
        add("fm", res, _card_train(refs["triv"], root), f"stout flow; {trained_note(refs['triv'])}")
    if "fm_sweep" in a.samplers:
        ch, n = size("fm_sweep")
        t0 = cpu()
        flow = u1_sweep_flow(grid, n_mix=16, hidden=(), transform="spline")
        kl1 = init_marginal(flow, a.beta, seed=a.seed, steps=a.fit_steps, polish=a.fit_polish)
        flow.requires_grad_(False)
        t = cpu() - t0
        res = run_fm(theory, flow, u0[:ch], n, a.seed + 400)
        note = (
            f"{len(flow.layers)} layers built at L={a.L}, 1D fit at beta={a.beta:g} "
            f"(KL/plaq {kl1:.1e}), not transferred"
        )
        add("fm_sweep", res, t, note)
    if "l2hmc" in a.samplers:
        ch, n = size("l2hmc")
        model, _ = load_l2hmc_model(refs["l2hmc"], grid, theory, root=root)
        model.requires_grad_(False)
        tau = float(sum(model.step_sizes()[1]))
        sampler = L2HMC(theory, model, SiteRNG(a.seed + 500))

        def step(x, c):
            x, rec = sampler.trajectory(x, c)
            return x, x, rec.acceptance, rec.n_force

        res = run(step, theory, u0[:ch].clone(), n, 5000)
        t = _card_train(refs["l2hmc"], root)
        add("l2hmc", res, t, f"learned tau={tau:.2f}; {trained_note(refs['l2hmc'])}")

    # break-even
    base = rows["hmc"]
    fpt = base["cpu_traj"] / max(base["n_force"], 1.0)
    say(
        f"# break-even: HMC tau(Q) {fmt(base['tau'], None, 1)} (the larger of tau_int and tau_1), "
        f"{base['cpu_traj']:.3g} s/traj ({fpt:.3g} s per plain force evaluation)"
    )
    for name, r in rows.items():
        if name == "hmc":
            continue
        ratio = r["cpu_traj"] / base["cpu_traj"]
        per_md = r["cpu_traj"] / max(r["n_force"], 1.0) / fpt
        need = base["tau"] / ratio
        say(
            f"#   {name}: CPU/traj x{ratio:.0f} of HMC (x{per_md:.0f} per MD force / proposal); "
            f"pays before training only if tau(Q) < {need:.3g}; measured "
            f"{fmt(r['tau_Q'], r['tau_Q_err'], 1)} (tau_1 {fmt(r['tau_1'], None, 1)}; HMC "
            f"{fmt(base['tau_1'], None, 1)}), <Q^2> {fmt(*r['q2'])} (exact {q2_ex:.3f})"
        )
    say(
        "# * fewer charge changes than half the claimed independent Q (chains x traj / 2 tau): "
        "tau_int(Q) not resolved by this run, an underestimate; so is the cost"
    )
    return rows


if __name__ == "__main__":
    main()
