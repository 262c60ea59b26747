"""Schwinger model samplers side by side: pseudofermion HMC (with and without Hasenbusch)
against flow samplers, at Abbott et al.'s point (arXiv:2207.08945) beta = 2.0, kappa = 0.265,
L = 8 by default. Prints one table:

* ``hmc``: pseudofermion HMC, fermion force outside (``--hmc-steps``, default 4), gauge
  inside (3 per drift); the thermalisation uses it too;
* ``hmc_hasenbusch``: the same with one Hasenbusch kappa (``--hasenbusch``), three levels
  (``--hb-steps`` outer steps, default 4; the Hasenbusch term 2 per drift);
* ``flow_metropolis``: a U(1) NCP gauge flow trained by reverse KL on the exact-determinant
  marginal ``exp(-S_G) det(D^+ D)`` (dense log-det, :mod:`kernels.flows.schwinger_marginal`),
  then independence Metropolis (training time is counted in the cost);
* ``trivialized_hmc``: HMC with pseudofermions on ``S(F(V)) - log det`` with that flow
  (``--triv-steps`` outer fermion steps, default 16: the pulled-back forces are stiffer);
* ``joint_metropolis``: the joint (U, phi) flow of Abbott et al. (U(1) NCP gauge flow +
  conditional pseudofermion flow, :mod:`kernels.flows.schwinger_joint`) trained by reverse KL
  on the joint density (one CG per sample, ``--train-steps``/``--train-batch``), then joint
  independence Metropolis (CG: one solve per proposal; training CG not in the column).

Columns: acceptance, CG iterations per trajectory and chain (sampler only; the condensate
measurement is extra), seconds per step and chain, tau_int (Gamma method, app/analysis.py,
all chains as replicas) of the geometric charge Q_int, the plaquette and the condensate pbp,
and the cost per independent configuration ``2 tau_int(max) x (step time) + training / N_ind``
in seconds per chain. Thermalised chains start from the end of a plain HMC thermalisation.

Usage: ``python benchmarks/bench_schwinger.py --L 8 --chains 16 --traj 100 --therm 20``
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from app.analysis import gamma_method
from kernels.flows import u1_ncp_flow
from kernels.flows.priors import UniformAnglePrior
from kernels.flows.schwinger_joint import JointFlowMetropolis, JointTrainer, schwinger_joint_flow
from kernels.flows.schwinger_marginal import SchwingerMarginal
from kernels.flows.train import TrainConfig, Trainer
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.schwinger import Schwinger
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def measure(th: Schwinger, u: torch.Tensor, traj: int) -> dict[str, np.ndarray]:
    th.noise_counter = traj
    with torch.no_grad():
        obs = th.observables(u)
    return {k: obs[k].numpy() for k in ("plaquette", "Q_int", "pbp")}


def hmc_levels(th: Schwinger, steps_f: int, steps_g: int, extra: str | None = None):
    names = [t.name for t in th.pseudofermion_terms()]
    if len(names) == 1:
        return [LevelSpec(("fermion",), steps_f), LevelSpec(("gauge",), steps_g)]
    return [
        LevelSpec(("fermion",), steps_f),
        LevelSpec(tuple(n for n in names if n != "fermion"), 2),
        LevelSpec(("gauge",), steps_g),
    ]


def run_chain(step, u0, th, n_traj, cg_of=None):
    """Run ``step(u, counter) -> (u, accepted, cg)``; returns series and timings."""
    u = u0
    series: dict[str, list] = {"plaquette": [], "Q_int": [], "pbp": []}
    acc, cg, t_step = [], [], 0.0
    for c in range(1, n_traj + 1):
        t0 = time.perf_counter()
        u, a, n_cg = step(u, c)
        t_step += time.perf_counter() - t0
        acc.append(float(np.mean(a)))
        cg.append(n_cg)
        for k, v in measure(th, u, 10_000 + c).items():
            series[k].append(v)
    return {k: np.array(v).T for k, v in series.items()}, float(np.mean(acc)), cg, t_step


def summarise(name, series, acc, cg, t_step, chains, n_traj, train_time=0.0):
    res = {k: gamma_method(list(v)) for k, v in series.items()}
    tau = max(
        max(0.5, r.tau_int) if math.isfinite(r.tau_int) else float("inf") for r in res.values()
    )
    per_step = t_step / (n_traj * chains)
    n_ind = chains * n_traj / (2 * tau)
    cost = 2 * tau * per_step + (train_time / n_ind if n_ind > 0 else float("inf"))
    row = f"{name:17s} {acc:6.3f} {np.mean(cg):9.0f} {per_step:8.3f}"
    for k in ("Q_int", "plaquette", "pbp"):
        r = res[k]
        row += f" {r.tau_int:7.2f}"
    row += f" {res['plaquette'].mean:8.4f}({1e4 * res['plaquette'].error:3.0f})"
    row += f" {res['pbp'].mean:7.4f}({1e4 * res['pbp'].error:3.0f})"
    row += f" {train_time:7.0f} {cost:9.3f}"
    print(row, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, default=8)
    p.add_argument("--beta", type=float, default=2.0)
    p.add_argument("--kappa", type=float, default=0.265)
    p.add_argument("--hasenbusch", type=float, default=0.24)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--traj", type=int, default=100)
    p.add_argument("--therm", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument(
        "--samplers",
        default="hmc,hmc_hasenbusch,flow_metropolis,trivialized_hmc,joint_metropolis",
    )
    p.add_argument("--joint-lr", type=float, default=3e-3)
    p.add_argument("--hmc-steps", type=int, default=4, help="outer (fermion) steps of hmc")
    p.add_argument("--hb-steps", type=int, default=4, help="outer steps of hmc_hasenbusch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--triv-steps", type=int, default=16, help="outer steps of trivialized HMC")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    shape = (args.L, args.L)
    grid = single_rank_grid(shape)
    th = Schwinger(grid, args.beta, args.kappa, n_noise=1, cg_max_iter=10_000)
    print(
        f"# bench_schwinger: beta={args.beta} kappa={args.kappa} L={args.L} chains={args.chains} "
        f"traj={args.traj} therm={args.therm} | {platform.node()} {platform.processor()} "
        f"torch {torch.__version__} threads={args.threads} {time.strftime('%Y-%m-%d %H:%M')}"
    )
    # common thermalised start: plain HMC from hot
    levels = hmc_levels(th, args.hmc_steps, 3)
    hmc = HMC(th, make_integrator(th, "omelyan", levels=levels), SiteRNG(1))
    u = th.hot_start(hmc.rng, 0, args.chains)
    t0 = time.perf_counter()
    for c in range(1, args.therm + 1):
        u, _ = hmc.trajectory(u, 100_000 + c)
    print(f"# thermalisation: {time.perf_counter() - t0:.0f} s")
    print(
        f"{'sampler':17s} {'acc':>6s} {'CG/traj':>9s} {'s/step':>8s} {'tauQ':>7s} "
        f"{'tauP':>7s} {'taupbp':>7s} {'plaquette':>13s} {'pbp':>12s} {'train_s':>7s} "
        f"{'s/indep':>9s}"
    )
    u_therm = u
    wanted = args.samplers.split(",")

    def hmc_step(sampler):
        def step(u, c):
            u, rec = sampler.trajectory(u, c)
            n = sum(float(v.double().mean()) for k, v in rec.costs.items() if "cg_iter" in k)
            return u, rec.accepted.numpy(), n

        return step

    for name in ("hmc", "hmc_hasenbusch"):
        if name not in wanted:
            continue
        hb = [args.hasenbusch] if name == "hmc_hasenbusch" else []
        t = Schwinger(grid, args.beta, args.kappa, hasenbusch=hb, n_noise=1, cg_max_iter=10_000)
        outer = args.hb_steps if hb else args.hmc_steps
        s = HMC(t, make_integrator(t, "omelyan", levels=hmc_levels(t, outer, 3)), SiteRNG(2))
        out = run_chain(hmc_step(s), u_therm, th, args.traj)
        summarise(name, *out, args.chains, args.traj)

    flow, train_time = None, 0.0
    if "flow_metropolis" in wanted or "trivialized_hmc" in wanted:
        marg = SchwingerMarginal(th)
        prior = UniformAnglePrior(grid, (2,))
        torch.manual_seed(0)
        flow = u1_ncp_flow(grid, n_layers=8, hidden=(8, 8), n_mix=2)
        cfg = TrainConfig(steps=args.train_steps, batch=args.train_batch, lr=3e-3)
        t0 = time.perf_counter()
        hist = Trainer(flow, marg, cfg, prior=prior, rng=SiteRNG(3)).train()
        train_time = time.perf_counter() - t0
        print(f"# flow training: {train_time:.0f} s, final ESS {hist[-1]['ess']:.3f}")
    if "flow_metropolis" in wanted:
        fm = FlowMetropolis(SchwingerMarginal(th), flow, prior, SiteRNG(4))
        state = {"s": fm.state_of(u_therm)}

        def fm_step(u, c):
            st, rec = fm.step(state["s"], c)
            state["s"] = st
            return st.u, rec.accepted.numpy(), 0.0

        out = run_chain(fm_step, u_therm, th, args.traj)
        summarise("flow_metropolis", *out, args.chains, args.traj, train_time)
    if "trivialized_hmc" in wanted:
        t = Schwinger(grid, args.beta, args.kappa, n_noise=1, cg_max_iter=10_000)
        tt = TransformedTheory(t, flow)
        levels = [LevelSpec(("fermion",), args.triv_steps), LevelSpec(("gauge", "logdet"), 3)]
        s = HMC(tt, make_integrator(tt, "omelyan", levels=levels), SiteRNG(5))
        v = {"v": tt.from_physical(u_therm)}

        def tr_step(u, c):
            v["v"], rec = s.trajectory(v["v"], c)
            n = sum(float(x.double().mean()) for k, x in rec.costs.items() if "cg_iter" in k)
            return tt.to_physical(v["v"]), rec.accepted.numpy(), n

        out = run_chain(tr_step, u_therm, th, args.traj)
        summarise("trivialized_hmc", *out, args.chains, args.traj, train_time)

    if "joint_metropolis" in wanted:
        torch.manual_seed(0)
        gauge = {
            "builder": "kernels.flows.u1:u1_ncp_flow",
            "kwargs": {"n_layers": 8, "hidden": [8, 8], "n_mix": 2},
        }
        jflow = schwinger_joint_flow(grid, gauge, pf_layers=4, pf_hidden=8, init_kappa=args.kappa)
        cfg = TrainConfig(steps=args.train_steps, batch=args.train_batch, lr=args.joint_lr)
        trainer = JointTrainer(jflow, th, cfg, rng=SiteRNG(6))
        t0 = time.perf_counter()
        hist = trainer.train()
        joint_time = time.perf_counter() - t0
        jflow.requires_grad_(False)
        print(
            f"# joint flow training: {joint_time:.0f} s, final ESS {hist[-1]['ess']:.3f}, "
            f"CG iterations per training sample {trainer.cg.iterations / trainer.cg.solves:.0f}"
        )
        jm = JointFlowMetropolis(th, jflow, SiteRNG(7))
        jstate = {"s": jm.state_of(u_therm)}

        def jm_step(u, c):
            before = jm.cg.iterations
            st, rec = jm.step(jstate["s"], c)
            jstate["s"] = st
            return st.u, rec.accepted.numpy(), (jm.cg.iterations - before) / args.chains

        out = run_chain(jm_step, u_therm, th, args.traj)
        summarise("joint_metropolis", *out, args.chains, args.traj, joint_time)


if __name__ == "__main__":
    main()
