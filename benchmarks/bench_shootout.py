"""Sampler shoot-out on the Schwinger model (issue 15 item 6, issue 16 "Benchmark").

    nice python -m benchmarks.bench_shootout --L 8 --batch 4 --therm 20 --traj 40 \
        --nthmc-steps 20 --l2hmc-steps 60 --joint-steps 60 --joint-batch 8   # docs table
    python -m benchmarks.bench_shootout --quick                              # seconds (smoke)
    nice python -m benchmarks.bench_shootout --L 16 --kappa 0.276 --batch 4 --therm 20 \
        --traj 40 --samplers hmc nthmc l2hmc        # L = 16 near kappa_c (docs table)

One run, all samplers from the same thermalised configurations, on 2D U(1) with Nf = 2 Wilson
fermions (pseudofermions, antiperiodic time) at Abbott et al.'s point beta = 2.0, kappa = 0.265:

* ``hmc``: pseudofermion HMC, Omelyan, trajectory length 1, fermion force on the outer scale
  (step count tuned to ``--target`` acceptance during thermalisation), gauge force 3 steps
  inside each outer step;
* ``nthmc``: :func:`kernels.flows.nthmc_u1.u1_nthmc_flow` trained by
  :class:`kernels.flows.force_norm.ForceNormTrainer` (objective ``force_p``) on the *gauge*
  force ``dS_G/dU`` of snapshots of the thermalised plain-HMC ensemble (the pseudofermion force
  needs a solve per configuration and cannot be differentiated twice through CG here), then HMC
  on the transformed action with :class:`kernels.samplers.nthmc.FlowSplitTheory`: the
  pseudofermion force pulled back through the flow plus the flow's log-det on the outer scale
  (step count tuned on ``--tune-chains`` chains, timed with the training), the plain gauge force
  3 steps inside; trajectory length 1;
* ``l2hmc``: a U(1) L2HMC model (:func:`benchmarks.bench_l2hmc.train_model`, ``--layers``
  layers, initial step ``1/layers`` so the initial trajectory length is 1) trained on the
  quenched theory at the same beta, then run with the full Schwinger force (pseudofermions
  refreshed per trajectory); its learned trajectory length is printed;
* ``joint``: the joint (U, phi) flow of Abbott et al.
  (:func:`kernels.flows.schwinger_joint.schwinger_joint_flow`) trained by reverse KL
  (:class:`~kernels.flows.schwinger_joint.JointTrainer`, ``--joint-steps``), then joint
  independence Metropolis (one update = one "trajectory"; no force evaluations).

Reported per sampler (cost table): acceptance, ``tau_int`` (Gamma method,
:func:`app.analysis.gamma_method`, chains as replicas, error from the Gamma method) of ``Q_int``
and of the plaquette, tunnellings (changes of ``round(Q)`` between consecutive updates, summed
over chains, and per chain-update), force evaluations and CG iterations per trajectory and
chain (all solves of the update), *process CPU* seconds per trajectory and chain (the VM is
shared, wall time is meaningless there; torch uses one thread), training CPU seconds (NTHMC:
training + step tuning; joint: its training), the cost per independent ``Q``
``c = 2 tau_int(Q) x CPU/traj`` without and with the training amortised over the independent
``Q`` of this run (``+ T_train / N_ind``, ``N_ind = chains x traj / 2 tau``), and both costs
relative to ``hmc``. A charge no chain changed is ``frozen``: ``tau_int >= traj / 2`` bounds
its cost below, and ratios against a frozen ``hmc`` are upper bounds (``<=``).
Observables/diagnostics table: plaquette, condensate ``pbp = (1/V) Re tr D^{-1}`` (stochastic,
``--pbp-noise`` noise vectors every ``--pbp-every`` updates, not timed, its CG not counted;
``tau_int(pbp)`` in trajectories), ``<Q^2>`` of ``round(Q)`` (Gamma method), rms and max of
``dH`` and ``<exp(-dH)>``, and for the MD samplers the rms and L_inf of the *outer-level* force
(HMC: pseudofermion force; NTHMC: the flow correction) at the final configurations with
freshly drawn pseudofermions. ``--start cold`` starts from the unit field (``Q = 0``), for
couplings where the charge freezes. ``tau_int`` from short runs is rough; a ``tau_int`` near
the run length is a lower bound and the ratios carry its error.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import torch

from app.analysis import gamma_method

try:  # python -m benchmarks.bench_shootout
    from benchmarks.bench_l2hmc import train_model
except ImportError:  # python benchmarks/bench_shootout.py
    from bench_l2hmc import train_model
from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.flows.schwinger_joint import JointFlowMetropolis, JointTrainer, schwinger_joint_flow
from kernels.flows.train import TrainConfig
from kernels.integrators import LevelSpec, make_integrator
from kernels.l2hmc import L2HMC
from kernels.samplers.hmc import HMC
from kernels.samplers.nthmc import FlowSplitTheory, tune_on_few_chains
from kernels.theories.schwinger import Schwinger
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SAMPLERS = ("hmc", "nthmc", "l2hmc", "joint")
GAUGE_INNER = 3


def cpu() -> float:
    """Process CPU seconds (all threads of this process)."""
    return time.process_time()


def gauge_observables(theory: U1Gauge, u: torch.Tensor) -> dict[str, np.ndarray]:
    """``Q_int`` and the plaquette (no fermion measurement: no CG in the measurement)."""
    with torch.no_grad():
        obs = U1Gauge.observables(theory, u)
    return {"Q": obs["Q_int"].numpy(), "plaq": obs["plaquette"].numpy()}


def cg_of(rec) -> float:
    """CG iterations of one update, summed over all solves, mean over chains."""
    its = [v for k, v in rec.costs.items() if "cg_iter" in k]
    return float(sum(float(torch.as_tensor(v).double().mean()) for v in its))


def run_chain(step, theory, x, n_traj: int, counter: int, pbp=None) -> dict:
    """``step(x, counter) -> (x, u, acceptance, n_force, cg, dH)`` ``n_traj`` times; CPU time of
    the updates only. ``pbp(u, counter)`` (or None) is the condensate measurement, called on the
    physical field after every ``pbp.every``-th update and *not* timed."""
    q, plaq, acc, nf, cg, dh, cond = [], [], [], [], [], [], []
    t_cpu = 0.0
    for t in range(n_traj):
        t0 = cpu()
        x, u, a, n_force, n_cg, d_h = step(x, counter + t)
        t_cpu += cpu() - t0
        obs = gauge_observables(theory, u)
        q.append(obs["Q"])
        plaq.append(obs["plaq"])
        acc.append(a)
        nf.append(n_force)
        cg.append(n_cg)
        if d_h is not None:
            dh.append(np.asarray(d_h, dtype=np.float64))
        if pbp is not None and (t + 1) % pbp.every == 0:
            cond.append(pbp(u, counter + t))
    return {
        "x": x,
        "Q": np.array(q).T,
        "plaq": np.array(plaq).T,
        "pbp": np.array(cond).T if cond else None,
        "dH": np.array(dh).T if dh else None,
        "acc": float(np.mean(acc)),
        "n_force": float(np.mean(nf)),
        "cg": float(np.mean(cg)),
        "cpu": t_cpu,
    }


class Condensate:
    """``pbp = (1/V) Re tr D^{-1}`` per chain (the sign and normalisation of
    :meth:`Schwinger.chiral_condensate`: per flavour, spin trace, hopping normalisation,
    unsubtracted), estimated with ``n_noise`` complex Gaussian noise vectors
    ``(1/(V N)) sum_j Re eta_j^+ D^{-1} eta_j`` (fresh noise per call: counter = trajectory);
    the solves are counted apart from the sampler's CG work."""

    def __init__(self, theory: Schwinger, every: int, n_noise: int, seed: int) -> None:
        if every < 1 or n_noise < 1:
            raise ValueError(f"need --pbp-every >= 1 and --pbp-noise >= 1, got {every}, {n_noise}")
        self.theory, self.every, self.n_noise = theory, int(every), int(n_noise)
        self.rng = SiteRNG(seed)

    def __call__(self, u: torch.Tensor, counter: int) -> np.ndarray:
        with torch.no_grad():
            est = self.theory.chiral_condensate(u, self.rng, counter, self.n_noise)
        return est.numpy()


def _tau(series: np.ndarray) -> tuple[float, float]:
    if np.ptp(series, axis=1).max() == 0:  # no chain moved
        return float("inf"), float("nan")
    g = gamma_method(list(series))
    return max(0.5, g.tau_int), g.tau_int_error


def _mean(series: np.ndarray | None) -> tuple[float, float]:
    """Mean and Gamma-method error over the chains (replicas); error NaN if nothing moved."""
    if series is None or series.size == 0:
        return float("nan"), float("nan")
    if np.ptp(series, axis=1).max() == 0:
        return float(series.mean()), float("nan")
    g = gamma_method(list(series))
    return g.mean, g.error


def tunnellings(q: np.ndarray) -> int:
    """Number of changes of ``round(Q)`` between consecutive updates, summed over chains."""
    r = np.rint(q)
    return int(np.count_nonzero(r[:, 1:] != r[:, :-1]))


def analyse(res: dict, batch: int, n_traj: int, train_cpu: float, pbp_every: int = 1) -> dict:
    """tau_int, CPU per trajectory and chain, cost per independent Q (with and without
    training amortised over this run's independent Q), observables and tunnellings. A frozen
    ``Q`` (no chain changed it) has ``tau = inf``; its cost is then bounded below by
    ``tau_int >= n_traj / 2`` (``cost_lb``)."""
    tq, tq_e = _tau(res["Q"])
    tp, tp_e = _tau(res["plaq"])
    per = res["cpu"] / (n_traj * batch)
    cost = 2.0 * tq * per
    n_ind = batch * n_traj / (2.0 * tq) if math.isfinite(tq) else 0.0
    cost_t = cost + (train_cpu / n_ind if n_ind > 0 else float("inf"))
    out = {
        "tau_Q": tq,
        "tau_Q_err": tq_e,
        "tau_P": tp,
        "tau_P_err": tp_e,
        "cpu_traj": per,
        "cost": cost,
        "cost_train": cost_t,
        "cost_lb": n_traj * per if not math.isfinite(tq) else cost,
        "n_ind": n_ind,
        "train": train_cpu,
        "tunnel": tunnellings(res["Q"]),
        "tunnel_rate": tunnellings(res["Q"]) / (batch * (n_traj - 1)),
    }
    out["plaq_mean"], out["plaq_err"] = _mean(res["plaq"])
    out["Q2"], out["Q2_err"] = _mean(np.rint(res["Q"]) ** 2)
    out["pbp_mean"], out["pbp_err"] = _mean(res.get("pbp"))
    if res.get("pbp") is not None and res["pbp"].shape[1] >= 4:
        t, e = _tau(res["pbp"])  # in units of measurements
        out["tau_pbp"], out["tau_pbp_err"] = pbp_every * t, pbp_every * e
    else:
        out["tau_pbp"], out["tau_pbp_err"] = float("nan"), float("nan")
    dh = res.get("dH")
    if dh is not None and np.isfinite(dh).any():
        f = dh[np.isfinite(dh)]
        out["dH_rms"], out["dH_max"] = float(np.sqrt(np.mean(f**2))), float(np.abs(f).max())
        out["exp_mdH"] = float(np.mean(np.exp(-np.clip(f, -50, 50))))
    else:
        out["dH_rms"] = out["dH_max"] = out["exp_mdH"] = float("nan")
    return out


def force_stats(theory, names: list[str], x: torch.Tensor, counter: int, seed: int) -> dict:
    """rms and L_inf (max over links) of the force of the ``names`` terms of ``theory`` at the
    fields ``x`` (auxiliary fields freshly drawn there), mean over chains; not timed."""
    theory.refresh(x, SiteRNG(seed), counter)
    f = theory.term_force(names)(x).detach().flatten(1)
    return {
        "F_rms": float(f.pow(2).mean(dim=1).sqrt().mean()),
        "F_max": float(f.abs().amax(dim=1).mean()),
    }


def hmc_levels(n_outer: int) -> list[LevelSpec]:
    return [LevelSpec(("fermion",), n_outer), LevelSpec(("gauge",), GAUGE_INNER)]


def thermalise(theory: Schwinger, a) -> tuple[torch.Tensor, HMC, torch.Tensor]:
    """Plain HMC from hot, step count tuned; returns (configs, tuned HMC, training snapshots)."""
    integ = make_integrator(theory, "omelyan", trajectory_length=1.0, levels=hmc_levels(4))
    hmc = HMC(theory, integ, SiteRNG(a.seed), target_acceptance=a.target)
    u = theory.hot_start(hmc.rng, 0, a.batch) if a.start == "hot" else theory.cold_start(a.batch)
    for c in range(1, a.therm + 1):
        u, _ = hmc.trajectory(u, c, tune=True)
    hmc.finish_tuning()
    snaps = []
    c = a.therm + 1
    for _ in range(a.train_configs):
        for _ in range(3):
            u, _ = hmc.trajectory(u, c)
            c += 1
        snaps.append(u.clone())
    return u, hmc, torch.cat(snaps)


def hmc_step(sampler: HMC, to_physical=None):
    def step(x, c):
        x, rec = sampler.trajectory(x, c)
        u = x if to_physical is None else to_physical(x)
        acc = float(rec.accepted.double().mean())
        return x, u, acc, rec.n_force, cg_of(rec), rec.dH.detach().numpy()

    return step


def run_nthmc(theory, grid, u0, snaps, n_hmc, a, pbp):
    """Train (CPU-timed), tune, run NTHMC; returns (result, training CPU, outer steps)."""
    t0 = cpu()
    torch.manual_seed(a.seed)
    flow = u1_nthmc_flow(grid, n_layers=a.nthmc_layers, hidden=(8,))
    quenched = U1Gauge(grid, a.beta)
    n_val = max(1, len(snaps) // 4)
    cfg = ForceNormConfig(
        steps=a.nthmc_steps,
        batch=min(a.batch, len(snaps) - n_val),
        lr=2e-3,
        objective="force_p",
        power=2.0,
        validate_every=5,
        patience=3,
    )
    tr = ForceNormTrainer(flow, quenched, snaps[:-n_val], cfg, validation=snaps[-n_val:])
    tr.train()
    tt = FlowSplitTheory(theory, flow)

    def integrator(n: int):
        levels = [LevelSpec(("flow_correction",), n), LevelSpec(("gauge_plain",), GAUGE_INNER)]
        return make_integrator(tt, "omelyan", trajectory_length=1.0, levels=levels)

    v0 = tt.from_physical(u0)
    rng = SiteRNG(a.seed + 100)
    tuner = HMC(tt, integrator(n_hmc), rng, target_acceptance=a.target)
    n_steps, _ = tune_on_few_chains(tuner, v0[: a.tune_chains].clone(), a.tune_traj, 5000)
    train_cpu = cpu() - t0
    prod = HMC(tt, integrator(n_steps), rng)
    res = run_chain(hmc_step(prod, tt.to_physical), theory, v0, a.traj, 1000, pbp)
    res.update(force_stats(tt, ["flow_correction"], res["x"], 10**6, a.seed + 40))
    return res, train_cpu, n_steps, tr.step_count


def run_l2hmc(theory, grid, u0, a, pbp):
    """U(1) L2HMC trained on the quenched theory, run on the Schwinger model."""
    args = SimpleNamespace(
        layers=a.l2hmc_layers,
        hidden=[8, 8],
        kernel_size=3,
        step_size=1.0 / a.l2hmc_layers,
        init_scale=0.1,
        seed=a.seed,
        train_steps=a.l2hmc_steps,
        train_batch=a.batch,
        batch=a.batch,
        lr=2e-3,
        gamma_start=0.5,
    )
    t0 = cpu()
    ttheory = U1Gauge(grid, beta=a.beta, dtype=torch.float32)
    model64, _ = train_model(grid, "u1", ttheory, u0, args, {"plaquette_weight": 0.0})
    train_cpu = cpu() - t0
    tau = float(sum(model64.step_sizes()[1]))
    sampler = L2HMC(theory, model64, SiteRNG(a.seed + 2))

    def step(x, c):
        x, rec = sampler.trajectory(x, c)
        return x, x, float(rec.acceptance), rec.n_force, cg_of(rec), rec.dH.detach().numpy()

    return run_chain(step, theory, u0, a.traj, 2000, pbp), train_cpu, tau


def run_joint(theory, grid, u0, a, pbp):
    """Joint (U, phi) flow trained by reverse KL, then joint independence Metropolis."""
    t0 = cpu()
    torch.manual_seed(a.seed)
    gauge = {
        "builder": "kernels.flows.u1:u1_ncp_flow",
        "kwargs": {"n_layers": 8, "hidden": [8, 8], "n_mix": 2},
    }
    jflow = schwinger_joint_flow(grid, gauge, pf_layers=4, pf_hidden=8, init_kappa=a.kappa)
    cfg = TrainConfig(steps=a.joint_steps, batch=a.joint_batch, lr=3e-3)
    JointTrainer(jflow, theory, cfg, rng=SiteRNG(a.seed + 6)).train()
    jflow.requires_grad_(False)
    train_cpu = cpu() - t0
    jm = JointFlowMetropolis(theory, jflow, SiteRNG(a.seed + 7))

    def step(s, c):
        before = jm.cg.iterations
        s, rec = jm.step(s, c)
        n_cg = (jm.cg.iterations - before) / a.batch
        return s, s.u, float(rec.accepted.double().mean()), 0, n_cg, None

    return run_chain(step, theory, jm.state_of(u0), a.traj, 3000, pbp), train_cpu


def fmt(v: float, e: float | None = None, d: int = 2) -> str:
    if not math.isfinite(v):
        return "frozen" if v > 0 else "-"
    return f"{v:.{d}f}" if e is None or not math.isfinite(e) else f"{v:.{d}f}({e:.{d}f})"


def _ratio(r: dict, base: dict, key: str) -> str:
    """``r[key] / base cost``; against a frozen ``hmc`` (cost bounded below) an upper bound."""
    if math.isfinite(base["cost"]) and base["cost"] > 0:
        return fmt(r[key] / base["cost"])
    if not math.isfinite(r[key]):
        return "-"
    return f"<= {r[key] / base['cost_lb']:.2f}"


def print_row(name: str, r: dict, base: dict, note: str) -> None:
    """One row of the cost table; ratios against ``base`` (plain HMC)."""
    tau = fmt(r["tau_Q"], r["tau_Q_err"])
    cost = fmt(r["cost"], None, 3)
    if not math.isfinite(r["tau_Q"]):
        tau = f"frozen (>= {r['cost_lb'] / (2 * r['cpu_traj']):.0f})"
        cost = f">= {r['cost_lb']:.3g}"
    print(
        f"| {name} | {r['acc']:.3f} | {tau} | "
        f"{fmt(r['tau_P'], r['tau_P_err'])} | {r['tunnel']} ({r['tunnel_rate']:.3f}) | "
        f"{r['n_force']:.0f} | {r['cg']:.0f} | "
        f"{r['cpu_traj']:.3f} | {r['train']:.0f} | {cost} | "
        f"{fmt(r['cost_train'], None, 3)} | {_ratio(r, base, 'cost')} | "
        f"{_ratio(r, base, 'cost_train')} | {note} |",
        flush=True,
    )
    if r is not base:
        print(
            f"# {name}/hmc: CPU per trajectory x{r['cpu_traj'] / base['cpu_traj']:.2f}, "
            f"tau_int(Q) x{r['tau_Q'] / base['tau_Q']:.2f}",
            flush=True,
        )


def physics_row(name: str, r: dict) -> str:
    """One row of the observables / diagnostics table."""
    fr = f"{r['F_rms']:.3g} / {r['F_max']:.3g}" if "F_rms" in r else "-"
    return (
        f"| {name} | {fmt(r['plaq_mean'], r['plaq_err'], 4)} | "
        f"{fmt(r['pbp_mean'], r['pbp_err'], 4)} | {fmt(r['tau_pbp'], r['tau_pbp_err'])} | "
        f"{fmt(r['Q2'], r['Q2_err'])} | {r['tunnel']} | {fmt(r['dH_rms'])} | "
        f"{fmt(r['dH_max'])} | {fmt(r['exp_mdH'])} | {fr} |"
    )


HEADER = (
    "| sampler | acc | tau_int(Q) | tau_int(P) | tunnellings (per traj) | force/traj | "
    "CG/traj | CPU s/traj | train CPU s | cost/indep Q | + training | ratio | "
    "ratio + training | setup |\n" + "|" + "---|" * 14
)
PHYS_HEADER = (
    "| sampler | plaquette | pbp | tau_int(pbp) | <Q^2> | tunnellings | dH rms | "
    "max abs(dH) | <exp(-dH)> | outer force rms / L_inf |\n" + "|" + "---|" * 10
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--kappa", type=float, default=0.265)
    ap.add_argument("--batch", type=int, default=8, help="chains")
    ap.add_argument("--start", choices=("hot", "cold"), default="hot")
    ap.add_argument("--therm", type=int, default=30)
    ap.add_argument("--traj", type=int, default=60, help="measured updates per chain")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--train-configs", type=int, default=4, help="snapshots of the batch")
    ap.add_argument("--nthmc-layers", type=int, default=4)
    ap.add_argument("--nthmc-steps", type=int, default=30)
    ap.add_argument("--tune-chains", type=int, default=2)
    ap.add_argument("--tune-traj", type=int, default=8)
    ap.add_argument("--l2hmc-layers", type=int, default=8)
    ap.add_argument("--l2hmc-steps", type=int, default=100)
    ap.add_argument("--joint-steps", type=int, default=100)
    ap.add_argument("--joint-batch", type=int, default=16)
    ap.add_argument("--pbp-every", type=int, default=2, help="condensate every N updates")
    ap.add_argument("--pbp-noise", type=int, default=4, help="noise vectors per condensate")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    ap.add_argument("--save", default=None, help="write the raw series to this .npz")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="L=4, a few updates (smoke test)")
    a = ap.parse_args(argv)
    if a.quick:
        for key, val in dict(
            L=4,
            batch=2,
            therm=2,
            traj=4,
            train_configs=2,
            nthmc_layers=2,
            nthmc_steps=2,
            tune_traj=2,
            l2hmc_layers=2,
            l2hmc_steps=2,
            joint_steps=2,
            joint_batch=2,
            pbp_every=1,
            pbp_noise=1,
        ).items():
            if getattr(a, key) == ap.get_default(key):
                setattr(a, key, val)
    if a.L < 2 or a.L % 2 or a.batch < 2 or a.traj < 2:
        raise ValueError("need an even L >= 2, --batch >= 2 and --traj >= 2")
    if "hmc" not in a.samplers:
        a.samplers = ["hmc", *a.samplers]
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    grid = single_rank_grid((a.L, a.L))
    theory = Schwinger(grid, a.beta, a.kappa, cg_tol=1e-10, cg_max_iter=5000)
    pbp = Condensate(theory, a.pbp_every, a.pbp_noise, a.seed + 30)
    print(
        f"# bench_shootout {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC {platform.node()} "
        f"{platform.processor() or platform.machine()} torch {torch.__version__} threads=1"
    )
    print(
        f"# Schwinger L={a.L} beta={a.beta} kappa={a.kappa} chains={a.batch} start={a.start} "
        f"therm={a.therm} traj={a.traj} pbp every {a.pbp_every} x {a.pbp_noise} noise "
        f"(CPU = process CPU seconds)",
        flush=True,
    )
    t0 = cpu()
    u0, hmc, snaps = thermalise(theory, a)
    q0 = np.rint(gauge_observables(theory, u0)["Q"]).astype(int).tolist()
    print(
        f"# thermalisation + snapshots: {cpu() - t0:.0f} s CPU, HMC outer steps {hmc.n_steps}, "
        f"start charges {q0}",
        flush=True,
    )
    rows: dict[str, dict] = {}
    notes: dict[str, str] = {}

    def done(name: str, res: dict, t_tr: float, note: str) -> None:
        rows[name] = {**res, **analyse(res, a.batch, a.traj, t_tr, a.pbp_every)}
        notes[name] = note
        print_row(name, rows[name], rows["hmc"], note)
        print(f"# {physics_row(name, rows[name])}", flush=True)

    res = run_chain(hmc_step(hmc), theory, u0, a.traj, 500, pbp)
    res.update(force_stats(theory, ["fermion"], res["x"], 10**6, a.seed + 40))
    rows["hmc"] = {}
    print(HEADER, flush=True)
    rows["hmc"] = {**res, **analyse(res, a.batch, a.traj, 0.0, a.pbp_every)}
    done("hmc", res, 0.0, f"tau=1, {hmc.n_steps} outer x {GAUGE_INNER} gauge")
    if "nthmc" in a.samplers:
        res, t_tr, n_st, n_tr = run_nthmc(theory, grid, u0, snaps, hmc.n_steps, a, pbp)
        done("nthmc", res, t_tr, f"tau=1, {n_st} outer x {GAUGE_INNER} gauge, {n_tr} train steps")
    if "l2hmc" in a.samplers:
        res, t_tr, tau = run_l2hmc(theory, grid, u0, a, pbp)
        done("l2hmc", res, t_tr, f"tau={tau:.2f} learned, {a.l2hmc_layers} layers")
    if "joint" in a.samplers:
        res, t_tr = run_joint(theory, grid, u0, a, pbp)
        done("joint", res, t_tr, f"independence Metropolis, {a.joint_steps} train steps")
    print(PHYS_HEADER)
    for name, r in rows.items():
        print(physics_row(name, r))
    if a.save:
        series = {
            f"{n}_{k}": r[k]
            for n, r in rows.items()
            for k in ("Q", "plaq", "pbp", "dH")
            if r.get(k) is not None
        }
        np.savez(a.save, **series)
    return rows


if __name__ == "__main__":
    main()
