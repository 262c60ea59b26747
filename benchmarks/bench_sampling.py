"""Sampling efficiency: plain HMC vs trivialized HMC vs the flow's independence Metropolis.

    python benchmarks/bench_sampling.py --quick                    # a few minutes on one core
    python benchmarks/bench_sampling.py --cases phi4               # Albandea et al.'s L = 12
    python benchmarks/bench_sampling.py --cases u1 --u1-beta 4 --save-model bench-u1-b4
    python benchmarks/bench_sampling.py --cases u1 --u1-beta 6 --init bench-u1-b4
    python benchmarks/bench_sampling.py --cases u1 --u1-beta 6 --model bench-u1-b6
    mpiexec -n 2 python benchmarks/bench_sampling.py               # lattice split over ranks

Cases (issue 4):

* ``phi4``: 2D phi^4, ``lambda = 0.5``, ``L = 12, beta = 0.616`` or (``--phi4-L 18``)
  ``L = 18, beta = 0.641`` (correlation length ``~ L/4``; Albandea et al., arXiv:2211.12806);
  flow = the 37-parameter minimal preset (``--phi4-flow minimal``) or ``--layers`` affine
  coupling pairs with ``--hidden`` CNN channels (``--phi4-flow affine``);
  observables ``M``, ``|M|``, ``V M^2`` and the susceptibility ``chi = V (<M^2> - <|M|>^2)``;
* ``u1``: 2D U(1), ``L = --u1-L`` (16), ``beta = --u1-beta`` (4; ``--quick``: ``L = 8``,
  ``beta = 3``), flow = ``--layers`` gauge-equivariant NCP plaquette couplings (mixtures of
  ``--n-mix``, CNN channels ``--hidden``); observables the geometric charge ``Q_int``,
  ``Q_int^2`` and the plaquette, printed next to their exact values
  (:mod:`kernels.theories.u1_exact`), and the flow's exact KL divergence (exact ``log Z``).

For each case, in one run: the flow is trained by reverse KL from the prior (timed; optionally
warm-started from a registry model with ``--init``, trained in ``--train-dtype`` and copied to
float64 for sampling), or loaded with ``--model`` (the training time is then read from the
model card). Then, with ``--batch`` chains each: plain HMC and trivialized HMC
(``HMC(TransformedTheory(theory, flow))``) thermalise with step-size tuning toward
``--target`` acceptance at trajectory length ``tau = 1`` (Omelyan; at most ``--max-steps``
steps) and run ``--traj`` trajectories (trivialized: ``--therm-triv`` / ``--traj-triv`` if
given; ``--steps-triv`` fixes its step count instead of tuning it). Trivialized HMC starts
from ``V = F^{-1}(U)`` of plain HMC's last configurations and the flow's independence
Metropolis (``fm``) from those configurations themselves (no start-up
bias from a hot start), running ``--traj`` steps. Errors and
``tau_int`` come from the Gamma method (app.analysis.gamma_method, chains as replicas; derived
observables with pyerrors). The cost per independent configuration is
``2 tau_int x (wall time per update per chain)`` (the batch's update time divided by the
number of chains); training is a one-off cost and is listed separately.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime

import numpy as np
import torch
from mpi4py import MPI

from app.analysis import gamma_method
from app.registry import load_model, read_card, save_model
from kernels.flows import phi4_minimal_flow, u1_ncp_flow
from kernels.flows.metrics import ess_from_log_weights, kl_estimate, replica_mean
from kernels.flows.phi4 import phi4_affine_flow
from kernels.flows.priors import prior_for
from kernels.flows.train import TrainConfig, Trainer
from kernels.flows.u1_sweep import init_marginal, u1_sweep_flow
from kernels.integrators import make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import (
    log_partition_function,
    mean_plaquette,
    topological_charge_squared,
)
from parallel import ProcessGrid
from parallel.rng import SiteRNG

ROOT = MPI.COMM_WORLD.Get_rank() == 0
#: Albandea et al.'s couplings at lambda = 0.5 (correlation length ~ L / 4)
PHI4_BETA = {12: 0.616, 18: 0.641}
SAMPLERS = {"hmc": "plain HMC", "triv": "trivialized HMC", "fm": "flow Metropolis"}


def say(*a) -> None:
    if ROOT:
        print(*a, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def hidden_of(text: str) -> tuple[int, ...]:
    """``"8,8"`` -> ``(8, 8)``; ``"none"`` -> ``()`` (no hidden layer)."""
    if text.strip().lower() == "none":
        return ()
    return tuple(int(h) for h in text.split(",") if h.strip())


# ------------------------------------------------------------------ cases
def make_case(name: str, args, dtype: torch.dtype):
    """``(theory, flow builder(grid, dtype name), TrainConfig, observables, derived)``."""
    q = args.quick
    if name == "phi4":
        grid = ProcessGrid((args.phi4_L, args.phi4_L))
        beta = PHI4_BETA[args.phi4_L]
        theory = Phi4(grid, beta=beta, lam=0.5, dtype=dtype, device=args.device)
        if args.phi4_flow == "minimal":

            def build(g, dt):
                return phi4_minimal_flow(g, dtype=dt)
        else:

            def build(g, dt):
                return phi4_affine_flow(
                    g, n_pairs=args.layers or 2, hidden=hidden_of(args.hidden or "8"), dtype=dt
                )

        train = TrainConfig(
            steps=args.train_steps if args.train_steps >= 0 else (1000 if q else 5000),
            batch=args.train_batch or 64,
            lr=args.lr or 1e-2,
            lr_min=(args.lr or 1e-2) / 100,
        )
        return theory, build, train, ["M", "abs_M", "V_M2"], "chi"
    if name == "u1":
        shape = (8, 8) if q else (args.u1_L, args.u1_L)
        beta = 3.0 if q else args.u1_beta
        grid = ProcessGrid(shape)
        theory = U1Gauge(grid, beta=beta, dtype=dtype, device=args.device)
        layers = args.layers or (8 if q else 16)
        hidden = hidden_of(args.hidden or ("4" if q else "8,8"))
        n_mix = args.n_mix or (2 if q else 4)

        def build(g, dt):
            if args.u1_flow == "sweep":
                return u1_sweep_flow(
                    g, n_mix=n_mix, hidden=hidden, transform=args.transform, dtype=dt
                )
            return u1_ncp_flow(
                g, n_layers=layers, n_mix=n_mix, hidden=hidden, transform=args.transform, dtype=dt
            )

        steps = args.train_steps if args.train_steps >= 0 else (200 if q else 3000)
        train = TrainConfig(
            steps=steps,
            batch=args.train_batch or (32 if q else 64),
            lr=args.lr or (3e-3 if q else 1e-3),
            lr_min=(args.lr or 1e-3) / 30,
            anneal_steps=args.anneal_steps if args.anneal_steps >= 0 else (50 if q else 0),
            anneal_start=1.0,
        )
        return theory, build, train, ["Q_int", "Q2", "plaquette"], None
    raise ValueError(f"unknown case {name!r}")


# ------------------------------------------------------------------ flow
def trained_flow(name, args):
    """Train or load the flow: ``(theory, flow, info, observables, derived)``, float64."""
    tdt = getattr(torch, args.train_dtype)
    theory_t, build, tcfg, observables, derived = make_case(name, args, tdt)
    theory, *_ = make_case(name, args, torch.float64)
    grid = theory.grid
    say(f"\n## case {name}: lattice {list(grid.shape)} {theory.params} ({grid.describe()})")
    info = {"train_time": 0.0, "steps": 0, "kl": math.nan, "ess": math.nan}
    if args.model:
        flow, card = load_model(args.model, grid, theory, root=args.models, dtype=torch.float64)
        info["train_time"] = float(card["train_config"].get("wall_time_total_s", math.nan))
        info["steps"] = int(card["train_config"].get("steps_total", 0))
        say(f"flow {args.model}: {card['architecture']}, {flow.n_parameters()} parameters")
    else:
        flow = build(grid, args.train_dtype).to(args.device)
        if args.init:
            init, card = load_model(args.init, grid, theory, root=args.models, dtype=tdt)
            flow.load_state_dict(init.state_dict())
            info["train_time"] = float(card["train_config"].get("wall_time_total_s", 0.0))
            info["steps"] = int(card["train_config"].get("steps_total", 0))
            say(f"warm start from {args.init} ({info['steps']} steps, {info['train_time']:.0f} s)")
        say(f"flow {flow.architecture['builder']} {flow.architecture['kwargs']}")
        say(f"   {flow.n_parameters()} parameters; training {tcfg.steps} x {tcfg.batch} draws")
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        if args.u1_flow == "sweep" and name == "u1" and not args.init:
            kl1 = init_marginal(flow, args.init_beta or theory.beta, seed=args.seed)
            info["train_time"] += MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            say(
                f"   single-plaquette init (beta {args.init_beta or theory.beta:g}): "
                f"KL per plaquette {kl1:.4f}"
            )
        trainer = Trainer(flow, theory_t, tcfg, rng=SiteRNG(args.seed + 1))
        every = max(1, tcfg.steps // 8)

        def report(m: dict) -> None:
            if m["step"] % every == 0 or m["step"] == tcfg.steps - 1:
                say(
                    f"   step {m['step']:5d}  loss {m['loss']:9.3f}  KL {m['kl']:7.3f}  "
                    f"ESS {m['ess']:.3f}  lr {m['lr']:.2e}"
                )

        t0 = time.perf_counter()
        history = trainer.train(callback=report) if tcfg.steps else []
        dt = MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        info["train_time"] += dt
        info["steps"] += tcfg.steps
        flow = flow.to(torch.float64)
        if args.save_model:
            cfg = asdict(tcfg) | {
                "wall_time_s": dt,
                "wall_time_total_s": info["train_time"],
                "steps_total": info["steps"],
                "init": args.init or None,
                "train_dtype": args.train_dtype,
            }
            ref = save_model(
                flow,
                theory,
                args.save_model,
                root=args.models,
                history=history,
                train_config=cfg,
                description="benchmarks/bench_sampling.py",
            )
            say(f"saved {ref}")
    flow.eval()
    ev = Trainer(flow, theory, TrainConfig(steps=0, batch=64), rng=SiteRNG(args.seed + 5))
    log_w = ev.log_weights(args.eval_batch)
    info["kl"] = kl_estimate(log_w, grid)
    info["ess"] = ess_from_log_weights(log_w, grid)
    exact = ""
    if name == "u1" and grid.ndim == 2:
        log_z = log_partition_function(theory.beta, grid.shape)
        info["kl_exact"] = log_z - replica_mean(float(log_w.mean()), grid)
        exact = f", exact KL {info['kl_exact']:.2f} (log Z from the character expansion)"
    say(
        f"flow: {flow.n_parameters()} parameters, {info['steps']} training steps in "
        f"{info['train_time']:.0f} s; on {args.eval_batch} fresh draws: reverse-KL estimate "
        f"{info['kl']:.3f}{exact}, ESS {info['ess']:.4f}"
    )
    return theory, flow, info, observables, derived


# ------------------------------------------------------------------ runs
def _collect(series, theory, field, observables):
    obs = theory.observables(field)
    for k in observables:
        series[k].append(obs[k].detach().cpu().numpy())


def run_hmc(
    theory,
    batch,
    n_therm,
    n_traj,
    target,
    seed,
    observables,
    start=None,
    max_steps=10_000,
    fixed_steps=0,
):
    """HMC (or trivialized HMC on a TransformedTheory); chains start from the physical
    configurations ``start`` (mapped to ``V = F^{-1}(U)`` for trivialized HMC) when given,
    else hot. ``fixed_steps > 0``: that many Omelyan steps, no step-size tuning."""
    grid = theory.grid
    rng = SiteRNG(seed)
    hmc = HMC(
        theory,
        make_integrator(theory, "omelyan", fixed_steps or 4, 1.0),
        rng,
        target_acceptance=target,
        max_steps=max_steps,
    )
    off = grid.replica * batch
    if start is None:
        field = theory.hot_start(rng, 0, batch, off)
    elif isinstance(theory, TransformedTheory):
        field = theory.from_physical(start)
    else:
        field = start.clone()
    tune_until = 0 if fixed_steps else (3 * n_therm) // 4
    for t in range(1, n_therm + 1):
        field, _ = hmc.trajectory(field, t, off, tune=t <= tune_until)
        if t == tune_until:
            hmc.finish_tuning()
    series = {k: [] for k in observables}
    times, acc, exp_mdh = [], [], []
    for t in range(n_therm + 1, n_therm + n_traj + 1):
        field, rec = hmc.trajectory(field, t, off)
        times.append(MPI.COMM_WORLD.allreduce(rec.wall_time, op=MPI.MAX))
        acc.append(rec.acceptance)
        exp_mdh.extend(rec.exp_minus_dH.double().cpu().tolist())
        _collect(series, theory, field, observables)
    return {
        "data": {k: np.array(v).T for k, v in series.items()},  # (chains, trajectories)
        "s_per_update": float(np.median(times)) / batch,
        "acceptance": float(np.mean(acc)),
        "exp_mdh": f"{np.mean(exp_mdh):.3f} +- {np.std(exp_mdh) / math.sqrt(len(exp_mdh)):.3f}",
        "n_steps": str(hmc.n_steps),
        "nonfinite": hmc.n_nonfinite_total,
        "final": field,
    }


def run_fm(theory, flow, batch, n_therm, n_traj, seed, observables, start=None):
    """Independence Metropolis; chains start from ``start`` (equilibrium configurations, e.g.
    plain HMC's last ones) when given, else from flow draws (biased when acceptance is low)."""
    grid = theory.grid
    fm = FlowMetropolis(theory, flow, prior_for(theory), SiteRNG(seed))
    off = grid.replica * batch
    state = fm.initial_state(0, batch, off) if start is None else fm.state_of(start)
    for t in range(1, n_therm + 1):
        state, _ = fm.step(state, t, off)
    series = {k: [] for k in observables}
    times, acc = [], []
    for t in range(n_therm + 1, n_therm + n_traj + 1):
        state, rec = fm.step(state, t, off)
        times.append(MPI.COMM_WORLD.allreduce(rec.wall_time, op=MPI.MAX))
        acc.append(rec.acceptance)
        _collect(series, theory, state.u, observables)
    return {
        "data": {k: np.array(v).T for k, v in series.items()},
        "s_per_update": float(np.median(times)) / batch,
        "acceptance": float(np.mean(acc)),
        "exp_mdh": "-",
        "n_steps": "-",
        "nonfinite": 0,
    }


def chi_analysis(data, volume):
    """Susceptibility ``V (<M^2> - <|M|>^2)`` with pyerrors (chains as replicas)."""
    import pyerrors as pe

    names = [f"ens|r{i}" for i in range(data["V_M2"].shape[0])]
    vm2 = pe.Obs(list(data["V_M2"]), names)
    absm = pe.Obs(list(data["abs_M"]), names)
    chi = vm2 - volume * absm * absm
    chi.gamma_method(S=1.5)
    tau = chi.e_tauint.get("ens", math.nan)
    dtau = chi.e_dtauint.get("ens", math.nan)
    return chi.value, chi.dvalue, tau, dtau


def analyse(res, observables, derived, volume):
    out = {}
    for k in observables:
        g = gamma_method(list(res["data"][k]))
        out[k] = (g.mean, g.error, g.tau_int, g.tau_int_error)
    if derived == "chi":
        out["chi"] = chi_analysis(res["data"], volume)
    return out


def table(title, results, rows, info, exact):
    """One markdown table: a column per sampler."""
    say("")
    say(title)
    names = list(results)
    say("| | " + " | ".join(SAMPLERS[n] for n in names) + " |")
    say("|---|" + "---|" * len(names))

    def line(label, cells):
        say(f"| {label} | " + " | ".join(cells) + " |")

    line("acceptance", [f"{results[n]['acceptance']:.3f}" for n in names])
    line("<exp(-dH)>", [results[n]["exp_mdh"] for n in names])
    line("Omelyan steps (tau = 1)", [results[n]["n_steps"] for n in names])
    line("s / update / chain", [f"{results[n]['s_per_update']:.2e}" for n in names])
    line("non-finite trajectories", [str(results[n]["nonfinite"]) for n in names])
    for k in rows[names[0]]:
        label = f"<{k}>" + (f" (exact {exact[k]:.5g})" if k in exact else "")
        line(label, [f"{rows[n][k][0]:.5g} +- {rows[n][k][1]:.2g}" for n in names])
        line(f"tau_int({k})", [f"{rows[n][k][2]:.2f} +- {rows[n][k][3]:.2f}" for n in names])
        line(
            f"cost / indep. cfg ({k}) [s]",
            [f"{2 * rows[n][k][2] * results[n]['s_per_update']:.2e}" for n in names],
        )
    if info is None:
        return
    say(
        f"\nflow training (one-off): {info['steps']} steps, {info['train_time']:.0f} s; "
        f"ESS {info['ess']:.4f}, reverse-KL estimate {info['kl']:.3f}"
        + (f", exact KL {info['kl_exact']:.2f}" if "kl_exact" in info else "")
    )


def bench_case(name, args):
    if args.samplers == ["hmc"]:  # no flow needed
        theory, _, _, observables, derived = make_case(name, args, torch.float64)
        flow, info = None, None
        say(f"\n## case {name}: lattice {list(theory.grid.shape)} {theory.params}")
    else:
        theory, flow, info, observables, derived = trained_flow(name, args)
    grid = theory.grid
    n_therm = args.therm or (40 if args.quick else 200)
    n_traj = args.traj or (200 if args.quick else 2000)
    results = {}
    t0 = time.perf_counter()

    def done(key: str) -> None:
        r = results[key]
        say(
            f"   {SAMPLERS[key]}: acceptance {r['acceptance']:.3f}, steps {r['n_steps']}, "
            f"{r['s_per_update']:.2e} s / update / chain ({time.perf_counter() - t0:.0f} s)"
        )

    if "hmc" in args.samplers:
        results["hmc"] = run_hmc(
            theory,
            args.batch,
            n_therm,
            n_traj,
            args.target,
            args.seed + 3,
            observables,
            max_steps=args.max_steps,
        )
        done("hmc")
    if "triv" in args.samplers:
        results["triv"] = run_hmc(
            TransformedTheory(theory, flow),
            args.batch,
            args.therm_triv or n_therm,
            args.traj_triv or n_traj,
            args.target,
            args.seed + 4,
            observables,
            start=results["hmc"]["final"] if "hmc" in results else None,
            max_steps=args.max_steps,
            fixed_steps=args.steps_triv,
        )
        done("triv")
    if "fm" in args.samplers:
        start = results["hmc"]["final"] if "hmc" in results else None
        results["fm"] = run_fm(
            theory, flow, args.batch, n_therm, n_traj, args.seed + 2, observables, start
        )
        done("fm")
    rows = {n: analyse(r, observables, derived, grid.volume) for n, r in results.items()}
    title = (
        f"### {name} {list(grid.shape)} {theory.params}: {args.batch} chains x {n_traj} "
        + (f"({args.traj_triv} trivialized) " if args.traj_triv else "")
        + (f"(trivialized thermalisation {args.therm_triv}) " if args.therm_triv else "")
        + f"updates (after {n_therm} thermalisation; HMC tuned to acceptance {args.target})"
    )
    exact = {}
    if name == "u1" and grid.ndim == 2:
        exact = {
            "Q_int": 0.0,
            "Q2": topological_charge_squared(theory.beta, grid.shape),
            "plaquette": mean_plaquette(theory.beta, grid.shape),
        }
    table(title, results, rows, info, exact)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["phi4", "u1"], choices=["phi4", "u1"])
    ap.add_argument("--quick", action="store_true", help="short training and runs (minutes)")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--batch", type=int, default=16, help="chains per replica")
    ap.add_argument("--traj", type=int, default=0, help="measured updates per chain")
    ap.add_argument("--traj-triv", type=int, default=0, help="trivialized HMC (default --traj)")
    ap.add_argument("--therm", type=int, default=0, help="thermalisation updates per chain")
    ap.add_argument(
        "--therm-triv", type=int, default=0, help="trivialized HMC thermalisation (default --therm)"
    )
    ap.add_argument(
        "--steps-triv",
        type=int,
        default=0,
        help="trivialized HMC: this many Omelyan steps, no tuning (0: tuned)",
    )
    ap.add_argument(
        "--max-steps",
        type=int,
        default=10_000,
        help="cap on the tuned Omelyan step count (both HMCs)",
    )
    ap.add_argument("--target", type=float, default=0.9, help="HMC target acceptance")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: default)")
    g = ap.add_argument_group("flow and training (defaults depend on the case)")
    g.add_argument("--phi4-L", type=int, default=12, choices=sorted(PHI4_BETA))
    g.add_argument("--phi4-flow", choices=["minimal", "affine"], default="minimal")
    g.add_argument("--u1-L", type=int, default=16)
    g.add_argument("--u1-beta", type=float, default=4.0)
    g.add_argument(
        "--u1-flow",
        choices=["ncp", "sweep"],
        default="ncp",
        help="u1: translation-invariant couplings (u1_ncp_flow) or the 2D sweep order "
        "with single-plaquette init (u1_sweep_flow)",
    )
    g.add_argument(
        "--init-beta",
        type=float,
        default=0.0,
        help="u1 sweep: fit the single-plaquette map at this beta (0: the theory's); a smaller "
        "value gives a partially trivializing flow",
    )
    g.add_argument("--transform", choices=["ncp", "spline"], default="ncp", help="u1 couplings")
    g.add_argument("--layers", type=int, default=0, help="phi4: coupling pairs; u1: NCP layers")
    g.add_argument("--hidden", default="", help="CNN hidden channels, e.g. 8,8, or none")
    g.add_argument("--n-mix", type=int, default=0, help="u1: NCP mixture components")
    g.add_argument("--train-steps", type=int, default=-1, help="-1: the case default")
    g.add_argument("--train-batch", type=int, default=0)
    g.add_argument("--lr", type=float, default=0.0)
    g.add_argument("--anneal-steps", type=int, default=-1, help="u1: beta annealing from 1")
    g.add_argument("--train-dtype", choices=["float32", "float64"], default="float64")
    g.add_argument("--eval-batch", type=int, default=512, help="draws for the final KL/ESS")
    g.add_argument("--models", default=None, help="registry root (default $TRIVHMC_MODELS)")
    g.add_argument("--model", default="", help="registry reference: load instead of training")
    g.add_argument("--init", default="", help="registry reference: warm start the training")
    g.add_argument("--save-model", default="", help="registry name for the trained flow")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    say(f"# bench_sampling  {datetime.now().isoformat(timespec='seconds')}")
    say(f"# machine: {platform.node()}  {cpu_model()}  ({os.cpu_count()} cpus)")
    say(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads/rank, "
        f"{MPI.COMM_WORLD.Get_size()} MPI rank(s), device {args.device}"
    )
    say(f"# command: {' '.join([sys.executable, *sys.argv])}")
    if args.model:
        read_card(args.model, args.models)  # fail early on a bad reference
    for name in args.cases:
        bench_case(name, args)


if __name__ == "__main__":
    main()
