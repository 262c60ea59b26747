"""Sampling efficiency: plain HMC vs trivialized HMC (and the flow's independence Metropolis).

    python benchmarks/bench_sampling.py --quick          # a few minutes on a laptop core
    python benchmarks/bench_sampling.py                  # longer runs (default)
    python benchmarks/bench_sampling.py --cases phi4     # one case
    mpiexec -n 2 python benchmarks/bench_sampling.py     # lattice split over ranks

Cases (issue 4):

* ``phi4``: 2D phi^4, ``L = 12``, ``beta = 0.616``, ``lambda = 0.5`` (correlation length
  ``~ L/4``; Albandea et al., arXiv:2211.12806), flow = the 37-parameter minimal preset;
  observables ``M``, ``|M|``, ``V M^2`` and the susceptibility ``chi = V (<M^2> - <|M|>^2)``;
* ``u1``: 2D U(1), ``L = 16``, ``beta = 4`` (``--quick``: ``L = 8``, ``beta = 3``), flow =
  gauge-equivariant NCP couplings; observables the geometric charge ``Q_int``, ``Q_int^2``
  and the plaquette.

For each case, in one run: the flow is trained (reverse KL from the prior, timed); plain HMC
and trivialized HMC (``HMC(TransformedTheory(theory, flow))``) each thermalise with step-size
tuning toward ``--target`` acceptance at trajectory length ``tau = 1``, then run ``--traj``
trajectories of ``--batch`` chains. Errors and ``tau_int`` come from the Gamma method
(app.analysis.gamma_method, chains as replicas; derived observables with pyerrors). The
cost per independent configuration is ``2 tau_int x (wall time per trajectory per chain)``
(the batch's trajectory time divided by the number of chains). Flow-Metropolis acceptance and
the flow's ESS are printed for reference.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from datetime import datetime

import numpy as np
import torch
from mpi4py import MPI

from app.analysis import gamma_method
from kernels.flows import phi4_minimal_flow, u1_ncp_flow
from kernels.flows.priors import prior_for
from kernels.flows.train import TrainConfig, Trainer
from kernels.integrators import make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid
from parallel.rng import SiteRNG

ROOT = MPI.COMM_WORLD.Get_rank() == 0


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


# ------------------------------------------------------------------ cases
def make_case(name: str, quick: bool, device: str):
    if name == "phi4":
        grid = ProcessGrid((12, 12))
        theory = Phi4(grid, beta=0.616, lam=0.5, device=device)
        flow = phi4_minimal_flow(grid).to(device)
        train = TrainConfig(steps=1000 if quick else 5000, batch=64, lr=1e-2, lr_min=1e-4)
        return theory, flow, train, ["M", "abs_M", "V_M2"], "chi"
    if name == "u1":
        shape, beta = ((8, 8), 3.0) if quick else ((16, 16), 4.0)
        grid = ProcessGrid(shape)
        theory = U1Gauge(grid, beta=beta, device=device)
        if quick:
            flow = u1_ncp_flow(grid, n_layers=8, n_mix=2, hidden=(4,))
        else:
            flow = u1_ncp_flow(grid, n_layers=16, n_mix=4, hidden=(8, 8))
        flow = flow.to(device)
        train = TrainConfig(
            steps=200 if quick else 3000,
            batch=32 if quick else 64,
            lr=3e-3,
            lr_min=1e-4,
            anneal_steps=50 if quick else 1000,
            anneal_start=1.0,
        )
        return theory, flow, train, ["Q_int", "Q2", "plaquette"], None
    raise ValueError(f"unknown case {name!r}")


# ------------------------------------------------------------------ runs
def run_hmc(theory, batch, n_therm, n_traj, target, seed, observables):
    grid = theory.grid
    rng = SiteRNG(seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 4, 1.0), rng, target_acceptance=target)
    off = grid.replica * batch
    field = theory.hot_start(rng, 0, batch, off)
    for t in range(1, n_therm + 1):
        field, _ = hmc.trajectory(field, t, off, tune=t <= (3 * n_therm) // 4)
        if t == (3 * n_therm) // 4:
            hmc.finish_tuning()
    series = {k: [] for k in observables}
    times, acc, exp_mdh = [], [], []
    for t in range(n_therm + 1, n_therm + n_traj + 1):
        field, rec = hmc.trajectory(field, t, off)
        times.append(MPI.COMM_WORLD.allreduce(rec.wall_time, op=MPI.MAX))
        acc.append(rec.acceptance)
        exp_mdh.extend(rec.exp_minus_dH.double().cpu().tolist())
        obs = theory.observables(field)
        for k in observables:
            series[k].append(obs[k].detach().cpu().numpy())
    data = {k: np.array(v).T for k, v in series.items()}  # (chains, trajectories)
    return {
        "data": data,
        "s_per_traj": float(np.median(times)),
        "s_per_traj_chain": float(np.median(times)) / batch,
        "acceptance": float(np.mean(acc)),
        "exp_mdh": float(np.mean(exp_mdh)),
        "exp_mdh_err": float(np.std(exp_mdh) / math.sqrt(len(exp_mdh))),
        "n_steps": hmc.n_steps,
        "nonfinite": hmc.n_nonfinite_total,
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


def table(title, rows_a, rows_b, res_a, res_b, train_time, fm):
    say("")
    say(title)
    w = 26
    say(f"{'':28}{'plain HMC':>{w}}{'trivialized HMC':>{w}}")

    def line(label, a, b):
        say(f"{label:28}{a:>{w}}{b:>{w}}")

    line("acceptance", f"{res_a['acceptance']:.3f}", f"{res_b['acceptance']:.3f}")
    line(
        "<exp(-dH)>",
        f"{res_a['exp_mdh']:.3f} +- {res_a['exp_mdh_err']:.3f}",
        f"{res_b['exp_mdh']:.3f} +- {res_b['exp_mdh_err']:.3f}",
    )
    line("Omelyan steps (tau = 1)", str(res_a["n_steps"]), str(res_b["n_steps"]))
    line("s / trajectory (batch)", f"{res_a['s_per_traj']:.4f}", f"{res_b['s_per_traj']:.4f}")
    line(
        "s / trajectory / chain",
        f"{res_a['s_per_traj_chain']:.5f}",
        f"{res_b['s_per_traj_chain']:.5f}",
    )
    line("training time [s]", "-", f"{train_time:.1f}")
    line("non-finite trajectories", str(res_a["nonfinite"]), str(res_b["nonfinite"]))
    for k in rows_a:
        ma, ea, ta, dta = rows_a[k]
        mb, eb, tb, dtb = rows_b[k]
        line(f"<{k}>", f"{ma:.5g} +- {ea:.2g}", f"{mb:.5g} +- {eb:.2g}")
        line(f"tau_int({k})", f"{ta:.2f} +- {dta:.2f}", f"{tb:.2f} +- {dtb:.2f}")
        ca = 2 * ta * res_a["s_per_traj_chain"]
        cb = 2 * tb * res_b["s_per_traj_chain"]
        line(f"cost/indep. cfg({k}) [s]", f"{ca:.4f}", f"{cb:.4f}")
    say(
        f"flow: ESS {fm['ess']:.3f}, reverse-KL estimate {fm['kl']:.3f}, "
        f"independence-Metropolis acceptance {fm['acc']:.3f} ({fm['n']} proposals)"
    )


def bench_case(name, args):
    theory, flow, tcfg, observables, derived = make_case(name, args.quick, args.device)
    grid = theory.grid
    say(f"\n## case {name}: lattice {list(grid.shape)} {theory.params} ({grid.describe()})")
    say(f"flow {flow.architecture['builder']} {flow.architecture['kwargs']}")
    say(f"   {flow.n_parameters()} parameters; training {tcfg.steps} steps x {tcfg.batch} draws")
    torch.manual_seed(args.seed)
    trainer = Trainer(flow, theory, tcfg, rng=SiteRNG(args.seed + 1))
    t0 = time.perf_counter()
    every = max(1, tcfg.steps // 6)

    def report(m: dict) -> None:
        if m["step"] % every == 0 or m["step"] == tcfg.steps - 1:
            say(
                f"   step {m['step']:5d}  loss {m['loss']:9.3f}  KL {m['kl']:7.3f}  "
                f"ESS {m['ess']:.3f}"
            )

    trainer.train(callback=report)
    train_time = MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    kl, ess = trainer.evaluate(512)
    flow.eval()
    # independence Metropolis with the trained flow (reference)
    fm = FlowMetropolis(theory, flow, prior_for(theory), SiteRNG(args.seed + 2))
    state = fm.initial_state(0, args.batch, grid.replica * args.batch)
    for t in range(1, 51):
        state, _ = fm.step(state, t, grid.replica * args.batch)
    fmi = {"ess": ess, "kl": kl, "acc": fm.acceptance, "n": fm.n_proposed}

    n_therm, n_traj = (40, args.traj or 200) if args.quick else (200, args.traj or 2000)
    plain = run_hmc(theory, args.batch, n_therm, n_traj, args.target, args.seed + 3, observables)
    triv = run_hmc(
        TransformedTheory(theory, flow),
        args.batch,
        n_therm,
        n_traj,
        args.target,
        args.seed + 4,
        observables,
    )
    rows_a = analyse(plain, observables, derived, grid.volume)
    rows_b = analyse(triv, observables, derived, grid.volume)
    title = (
        f"### {name} {list(grid.shape)} {theory.params}: {args.batch} chains x {n_traj} "
        f"trajectories (after {n_therm} thermalisation, tuned to acceptance {args.target})"
    )
    table(title, rows_a, rows_b, plain, triv, train_time, fmi)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["phi4", "u1"])
    ap.add_argument("--quick", action="store_true", help="short training and runs (minutes)")
    ap.add_argument("--batch", type=int, default=16, help="chains per replica")
    ap.add_argument("--traj", type=int, default=0, help="measured trajectories per chain")
    ap.add_argument("--target", type=float, default=0.9, help="target acceptance")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    say(f"# bench_sampling  {datetime.now().isoformat(timespec='seconds')}")
    say(f"# machine: {platform.node()}  {cpu_model()}  ({os.cpu_count()} cpus)")
    say(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads/rank, "
        f"{MPI.COMM_WORLD.Get_size()} MPI rank(s), device {args.device}"
    )
    say(f"# command: {' '.join([sys.executable, *sys.argv])}")
    for name in args.cases:
        bench_case(name, args)


if __name__ == "__main__":
    main()
