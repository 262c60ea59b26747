"""Plain HMC vs NTHMC (force-norm-trained gauge-covariant transformation) on 2D U(1).

    python benchmarks/bench_nthmc.py --L 16 --beta 4                 # train at L, run at L
    python benchmarks/bench_nthmc.py --L 32 --beta 6 --train-L 16    # train at 16, transfer
    python benchmarks/bench_nthmc.py --quick                          # L = 8, a minute
    mpiexec -n 2 python benchmarks/bench_nthmc.py --L 16              # lattice over 2 ranks
    python -m benchmarks.bench_nthmc --theory schwinger --L 8 --beta 2 --kappa 0.265
                                 # HMC vs NTHMC trained on the gauge / full force
                                 # (main_schwinger below)

Per case, in one run with ``--batch`` chains each (Omelyan, trajectory length 1):

1. plain HMC from a hot start: ``--therm`` trajectories with dual-averaging step-size tuning
   toward ``--target`` acceptance, then ``--traj`` trajectories; configurations along the
   thermalised part (and, with ``--train-L`` != ``--L``, of a separate run at the training
   size) are the training set (the last ``--val`` of them held out for validation);
2. training (timed): :class:`kernels.flows.force_norm.ForceNormTrainer` (``--objective``,
   ``--train-steps``, early stopping with ``--patience``) of
   :func:`kernels.flows.nthmc_u1.u1_nthmc_flow` (``--layers``, ``--hidden``), rebuilt at ``L``
   with the trained weights when trained at another size;
3. force evidence on the held-out configurations: rms and maximum per link of the plain force
   ``dS/dU`` at ``U`` and of the trivialized force ``dS~/dV`` at ``V = F^{-1}(U)``;
4. NTHMC (``HMC(TransformedTheory(theory, flow))``) from ``V = F^{-1}(U)`` of plain HMC's last
   configurations: step size tuned on ``--tune-chains`` chains for ``--tune-traj``
   trajectories (:func:`kernels.samplers.nthmc.tune_on_few_chains`, timed), frozen, then
   ``--traj-nthmc`` trajectories of all chains. With ``--mts-inner M`` the action is split
   (:class:`kernels.samplers.nthmc.FlowSplitTheory`): the flow correction on the outer time
   scale (tuned step count), the plain gauge force ``M`` times per outer step inside.

Reported per sampler: acceptance, ``<dH>``, ``tau_int`` of ``Q_int`` and of the plaquette
(Gamma method, :func:`app.analysis.gamma_method`, chains as replicas), ``Q_int`` changes
(tunnelling events per chain and trajectory), force evaluations (``nFlow``: those through the
flow) and wall time per trajectory (whole batch), and the cost per independent ``Q``:
``2 tau_int(Q) x wall per trajectory per chain``. Break-even: NTHMC pays after
``N* = T_train / (c_HMC - c_NTHMC)`` independent configurations when ``c_NTHMC < c_HMC``,
never otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch
from mpi4py import MPI

from app.analysis import gamma_method
from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer, trivialized_force
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.nthmc import FlowSplitTheory, tune_on_few_chains
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette, topological_charge_squared
from parallel import ProcessGrid, global_max, global_sum
from parallel.rng import SiteRNG

ROOT = MPI.COMM_WORLD.Get_rank() == 0


def force_norm_config(a: argparse.Namespace) -> ForceNormConfig:
    """The force-norm training settings of the command line (every NTHMC row trains alike)."""
    return ForceNormConfig(
        steps=a.train_steps,
        batch=a.train_batch,
        lr=a.lr,
        objective=a.objective,
        power=a.power,
        validate_every=5,
        patience=a.patience,
    )


def say(*a) -> None:
    if ROOT:
        print(*a, flush=True)


def force_stats(f: torch.Tensor, grid) -> tuple[float, float]:
    """(rms, max) of ``|f|`` per link over all chains and the whole lattice."""
    sq = global_sum(float(f.square().sum()), grid)
    n = f.numel() * grid.size
    mx = global_max(float(f.abs().max()), grid)
    return math.sqrt(sq / n), float(mx)


def run_hmc(hmc: HMC, theory, v, n_traj: int, counter: int, physical) -> dict:
    """``n_traj`` trajectories; per-chain series of ``Q_int`` and the plaquette."""
    q, plaq, acc, dh, nf, nflow = [], [], [], [], [], []
    t0 = time.perf_counter()
    for t in range(n_traj):
        v, rec = hmc.trajectory(v, counter + t)
        obs = physical.observables(hmc.to_physical(v))
        q.append(obs["Q_int"].numpy())
        plaq.append(obs["plaquette"].numpy())
        acc.append(float(rec.accepted.double().mean()))
        dh.append(float(rec.dH.double().mean()))
        nf.append(rec.n_force)
        nflow.append(rec.force_evaluations[0] if hasattr(theory, "flow") else 0)
    wall = (time.perf_counter() - t0) / n_traj
    return {
        "v": v,
        "Q": np.array(q).T,
        "plaq": np.array(plaq).T,
        "acc": float(np.mean(acc)),
        "dH": float(np.mean(dh)),
        "n_force": float(np.mean(nf)),
        "n_flow": float(np.mean(nflow)),
        "wall": wall,
        "n_steps": hmc.n_steps,
    }


def analyse(res: dict, batch: int) -> dict:
    q, p = res["Q"], res["plaq"]
    gq = gamma_method(list(q)) if np.ptp(q) > 0 else None
    gp = gamma_method(list(p))
    g2 = gamma_method(list(q * q)) if np.ptp(q) > 0 else None
    tunnel = float(np.mean(np.abs(np.diff(q, axis=1)) > 0.5))
    tau_q = gq.tau_int if gq is not None else float("inf")
    per_chain = res["wall"] / batch
    return {
        "tau_Q": tau_q,
        "tau_Q_err": gq.tau_int_error if gq is not None else float("nan"),
        "tau_plaq": gp.tau_int,
        "plaq": (gp.mean, gp.error),
        "Q2": (g2.mean, g2.error) if g2 is not None else (float(np.mean(q * q)), float("nan")),
        "tunnel": tunnel,
        "cost": 2.0 * tau_q * per_chain,
    }


def plain_configs(theory, batch, n_therm, n_keep, every, target, seed, counter=1):
    """Thermalised plain-HMC configurations ``(n_keep * batch, ...)`` and the tuned HMC."""
    rng = SiteRNG(seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 4, 1.0), rng, target_acceptance=target)
    u = theory.hot_start(rng, 0, batch)
    for t in range(n_therm):
        u, _ = hmc.trajectory(u, counter + t, tune=True)
    hmc.finish_tuning()
    kept = []
    c = counter + n_therm
    for _k in range(n_keep):
        for _ in range(every):
            u, _ = hmc.trajectory(u, c)
            c += 1
        kept.append(u.clone())
    return torch.cat(kept), hmc, u, c


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--train-L", type=int, default=None, help="train at this size (default L)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--therm", type=int, default=50)
    ap.add_argument("--traj", type=int, default=400, help="plain HMC trajectories")
    ap.add_argument("--traj-nthmc", type=int, default=60)
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--train-configs", type=int, default=6, help="snapshots of the batch")
    ap.add_argument("--val", type=int, default=8, help="held-out configurations")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--objective", default="force_p", choices=["force_p", "force_linf"])
    ap.add_argument("--power", type=float, default=2.0)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, nargs="*", default=[8])
    ap.add_argument("--tune-chains", type=int, default=2)
    ap.add_argument("--tune-traj", type=int, default=12)
    ap.add_argument("--mts-inner", type=int, default=0, help="plain-force steps per outer step")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--theory",
        default="u1",
        choices=["u1", "schwinger"],
        help="schwinger: HMC vs NTHMC trained on the gauge force vs on the full force",
    )
    ap.add_argument("--kappa", type=float, default=0.265, help="schwinger: hopping parameter")
    ap.add_argument(
        "--n-steps", type=int, default=0, help="schwinger: fixed step count (0: HMC's tuned)"
    )
    a = ap.parse_args(argv)
    if a.theory == "schwinger":
        main_schwinger(a)
        return
    if a.quick:  # small lattice; explicit options still override the counts below
        a.L, a.beta = 8, 3.0
        for key, val in dict(
            therm=20,
            traj=60,
            traj_nthmc=10,
            train_steps=10,
            batch=4,
            train_configs=3,
            val=4,
            tune_traj=4,
        ).items():
            if getattr(a, key) == ap.get_default(key):
                setattr(a, key, val)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(a.seed)
    train_L = a.train_L or a.L
    grid = ProcessGrid((a.L, a.L))
    theory = U1Gauge(grid, a.beta)
    say(
        f"# bench_nthmc  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.node()}  "
        f"{platform.processor() or platform.machine()}  ranks={MPI.COMM_WORLD.Get_size()}  "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  torch {torch.__version__}"
    )
    say(
        f"# 2D U(1) L={a.L} beta={a.beta}  train at L={train_L}  batch={a.batch}  "
        f"objective={a.objective} p={a.power}  layers={a.layers} hidden={a.hidden}"
    )

    # 1. plain HMC (+ training data at L)
    t0 = time.perf_counter()
    data, hmc, u, c = plain_configs(theory, a.batch, a.therm, a.train_configs, 5, a.target, a.seed)
    say(
        f"# plain HMC thermalised + {a.train_configs * 5} traj for data: "
        f"{time.perf_counter() - t0:.1f} s, n_steps={hmc.n_steps}"
    )
    plain = run_hmc(hmc, theory, u, a.traj, c, theory)
    if train_L != a.L:
        tgrid = ProcessGrid((train_L, train_L))
        ttheory = U1Gauge(tgrid, a.beta)
        data, _, _, _ = plain_configs(
            ttheory, a.batch, a.therm, a.train_configs, 5, a.target, a.seed + 7
        )
    else:
        tgrid, ttheory = grid, theory
    n_val = min(a.val, len(data) // 2)
    train_set, val_set = data[:-n_val], data[-n_val:]

    # 2. training
    flow_t = u1_nthmc_flow(tgrid, n_layers=a.layers, hidden=tuple(a.hidden))
    cfg = force_norm_config(a)
    tr = ForceNormTrainer(flow_t, ttheory, train_set, cfg, validation=val_set)
    val0 = tr.validate()
    tr.train()
    t_train = tr.train_time
    say(
        f"# training: {tr.step_count} steps, {t_train:.1f} s, validation loss {val0:.4g} -> "
        f"{tr.best_val:.4g} (best step {tr.best_step}, stopped early: {tr.stopped_early})"
    )
    flow = flow_t if train_L == a.L else flow_t.rebuild_for(grid)
    tt = TransformedTheory(theory, flow)

    # 3. force evidence on held-out configurations at L
    held = plain["v"]
    f_plain = theory.force(held)
    v_held = tt.from_physical(held)
    f_triv = trivialized_force(tt, v_held, create_graph=False)
    rp, mp = force_stats(f_plain, grid)
    rt, mt = force_stats(f_triv, grid)
    say(
        f"# force per link on {len(held)} held-out configs: plain rms {rp:.3f} max {mp:.3f}; "
        f"trivialized rms {rt:.3f} max {mt:.3f}"
    )

    # 4. NTHMC: tune on few chains, freeze, run
    rng = SiteRNG(a.seed + 100)
    if a.mts_inner:
        tt = FlowSplitTheory(theory, flow)

        def integrator(n: int):
            levels = [LevelSpec(("flow_correction",), n), LevelSpec(("gauge_plain",), a.mts_inner)]
            return make_integrator(tt, "omelyan", trajectory_length=1.0, levels=levels)

        start = max(1, hmc.n_steps // a.mts_inner)
    else:

        def integrator(n: int):
            return make_integrator(tt, "omelyan", n, 1.0)

        start = hmc.n_steps
    nt = HMC(tt, integrator(start), rng, target_acceptance=a.target)
    t0 = time.perf_counter()
    n_steps, _ = tune_on_few_chains(nt, v_held[: a.tune_chains].clone(), a.tune_traj, 1)
    t_tune = time.perf_counter() - t0
    say(
        f"# NTHMC step size tuned on {a.tune_chains} chains x {a.tune_traj} traj: "
        f"n_steps={n_steps} ({t_tune:.1f} s)"
    )
    prod = HMC(tt, integrator(n_steps), rng)
    ntres = run_hmc(prod, tt, v_held, a.traj_nthmc, 1000, theory)

    # table
    exact_p = mean_plaquette(a.beta, (a.L, a.L))
    exact_q2 = topological_charge_squared(a.beta, (a.L, a.L))
    say(f"# exact: plaquette {exact_p:.5f}  <Q^2> {exact_q2:.4f}")
    hdr = (
        f"{'sampler':8s} {'traj':>5s} {'n_st':>4s} {'acc':>5s} {'<dH>':>7s} "
        f"{'tau_Q':>12s} {'tau_P':>6s} {'tunnel':>7s} {'plaq':>17s} {'Q^2':>14s} "
        f"{'nF/tr':>6s} {'nFlow':>5s} {'s/traj':>8s} {'cost/indepQ':>11s}"
    )
    say(hdr)
    rows = {}
    for name, res, n in (("hmc", plain, a.traj), ("nthmc", ntres, a.traj_nthmc)):
        an = analyse(res, a.batch)
        rows[name] = an
        say(
            f"{name:8s} {n:5d} {res['n_steps']:4d} {res['acc']:5.3f} {res['dH']:7.4f} "
            f"{an['tau_Q']:6.2f}({an['tau_Q_err']:4.2f}) {an['tau_plaq']:6.2f} "
            f"{an['tunnel']:7.4f} {an['plaq'][0]:.5f}({an['plaq'][1]:.5f}) "
            f"{an['Q2'][0]:6.3f}({an['Q2'][1]:.3f}) {res['n_force']:6.1f} {res['n_flow']:5.1f} "
            f"{res['wall']:8.4f} {an['cost']:11.4g}"
        )
    c_h, c_n = rows["hmc"]["cost"], rows["nthmc"]["cost"]
    ratio = c_n / c_h if c_h > 0 else float("nan")
    per_traj = ntres["wall"] / plain["wall"]
    say(f"# NTHMC/HMC: wall per trajectory x{per_traj:.0f}, cost per independent Q x{ratio:.3g}")
    if math.isfinite(c_n) and c_n < c_h:
        say(
            f"# break-even after {(t_train + t_tune) / (c_h - c_n):.0f} independent Q "
            f"(training {t_train:.0f} s + tuning {t_tune:.0f} s)"
        )
    else:
        say(
            f"# no break-even: NTHMC costs more per independent Q even without its training "
            f"({t_train:.0f} s) and tuning ({t_tune:.0f} s)"
        )


def schwinger_force_parts(theory, flow, u: torch.Tensor, rng, counter: int) -> dict:
    """rms and max per link of the trivialized force at ``V = F^{-1}(U)`` (``flow`` None: the
    plain force at ``U``), split into the gauge part (with the log-det) and the pseudofermion
    part, pseudofermions drawn at ``U``."""
    from kernels.flows.pullback import pullback_force

    theory.refresh(u, rng, counter)
    gauge = theory.term_force(["gauge"])
    ferm = theory.term_force([t.name for t in theory.pseudofermion_terms()])
    if flow is None:
        fg, ff = gauge(u), ferm(u)
    else:
        with torch.no_grad():
            v = flow.inverse(u)[0]
        fg = pullback_force(flow, theory, v, gauge, with_logdet=True)
        ff = pullback_force(flow, theory, v, ferm, with_logdet=False)
    out = {}
    for name, f in (("gauge", fg), ("fermion", ff), ("total", fg + ff)):
        out[name] = force_stats(f, theory.grid)
    return out


def fermion_force_noise(theory, u: torch.Tensor, rng, n_draws: int) -> tuple[float, float]:
    """Plain pseudofermion force at ``U`` over ``n_draws`` heatbath draws: rms per link of its
    smooth part ``E_chi F_pf`` (bias-corrected: ``<m^2> - var / n``) and of the draw-to-draw
    fluctuation (the part no deterministic transformation of ``U`` can follow)."""
    ferm = theory.term_force([t.name for t in theory.pseudofermion_terms()])
    fs = []
    for k in range(n_draws):
        theory.refresh(u, rng, 5000 + k)
        fs.append(ferm(u))
    f = torch.stack(fs)
    var = f.var(dim=0, unbiased=True)
    smooth2 = f.mean(dim=0).square() - var / n_draws
    n = f[0].numel() * theory.grid.size
    sm = global_sum(float(smooth2.sum()), theory.grid) / n
    return math.sqrt(max(sm, 0.0)), math.sqrt(global_sum(float(var.sum()), theory.grid) / n)


def run_schwinger(hmc: HMC, theory, v, n_traj: int, counter: int) -> dict:
    """``n_traj`` trajectories: acceptance, dH, CG iterations, process CPU time, Q series."""
    q, plaq, acc, dh, emdh, cg = [], [], [], [], [], []
    t0 = time.process_time()
    for t in range(n_traj):
        v, rec = hmc.trajectory(v, counter + t)
        with torch.no_grad():
            u = hmc.to_physical(v)
            q.append(theory.topological_charge_int(u).numpy())
            plaq.append(torch.cos(theory.plaquette_angles(u)).mean(dim=(1, 2, 3)).numpy())
        acc.append(float(rec.accepted.double().mean()))
        dh.append(rec.dH.double().numpy())
        emdh.append(float(rec.exp_minus_dH.double().mean()))
        cg.append(sum(float(c.double().mean()) for k, c in rec.costs.items() if "cg_iter" in k))
    cpu = (time.process_time() - t0) / n_traj
    dh = np.concatenate(dh)
    return {
        "v": v,
        "Q": np.array(q).T,
        "plaq": np.array(plaq).T,
        "acc": float(np.mean(acc)),
        "dH": float(np.mean(dh)),
        "dH_rms": float(np.sqrt(np.mean(dh * dh))),
        "dH_med": float(np.median(np.abs(dh))),
        "dH_max": float(np.max(dh)),
        "emdh": float(np.mean(emdh)),
        "cg": float(np.mean(cg)),
        "cpu": cpu,
    }


def main_schwinger(a) -> None:
    """``--theory schwinger``: plain HMC vs NTHMC trained on the gauge force only vs NTHMC
    trained on the full force (gauge + pseudofermion + log-det), same training budget, all at
    one fixed step count (HMC's tuned one, or ``--n-steps``). Times are process CPU seconds."""
    from kernels.flows.force_norm_fermions import schwinger_force_norm_trainer
    from kernels.theories.schwinger import Schwinger

    torch.set_default_dtype(torch.float64)
    grid = ProcessGrid((a.L, a.L))
    theory = Schwinger(grid, a.beta, a.kappa, cg_tol=1e-10, pion=False)
    say(
        f"# bench_nthmc --theory schwinger  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  "
        f"{platform.node()}  ranks={MPI.COMM_WORLD.Get_size()}  torch {torch.__version__}"
    )
    say(
        f"# Schwinger L={a.L} beta={a.beta} kappa={a.kappa}  batch={a.batch}  "
        f"objective={a.objective} p={a.power}  layers={a.layers} hidden={a.hidden}  "
        f"train steps={a.train_steps} batch={a.train_batch} lr={a.lr}"
    )
    t0 = time.process_time()
    data, hmc, u, c = plain_configs(theory, a.batch, a.therm, a.train_configs, 2, a.target, a.seed)
    say(
        f"# plain HMC thermalised ({a.therm} tuned traj) + {a.train_configs * 2} traj for data: "
        f"{time.process_time() - t0:.1f} s CPU, tuned n_steps={hmc.n_steps}"
    )
    n_steps = a.n_steps or hmc.n_steps
    n_val = min(a.val, len(data) // 2)
    train_set, val_set = data[:-n_val], data[-n_val:]

    flows, train_info = {"hmc": None}, {}
    for name, fermions in (("nthmc_gauge", False), ("nthmc_full", True)):
        torch.manual_seed(a.seed)
        flow = u1_nthmc_flow(grid, n_layers=a.layers, hidden=tuple(a.hidden))
        cfg = force_norm_config(a)
        tr = schwinger_force_norm_trainer(
            flow, theory, train_set, cfg, val_set, fermions=fermions, seed=a.seed + 50
        )
        t0 = time.process_time()
        tr.train()
        cpu = time.process_time() - t0
        flows[name] = flow
        cg_it = tr.physical.stats.iterations
        train_info[name] = (cpu, tr.step_count, tr.initial_val, tr.best_val, cg_it)
        say(
            f"# {name}: {tr.step_count} steps, {cpu:.1f} s CPU, own validation objective "
            f"{tr.initial_val:.4g} -> {tr.best_val:.4g} (best step {tr.best_step}), "
            f"CG iterations {cg_it}"
        )

    # force evidence on held-out configurations (plain HMC's current ones), phi drawn at U
    frng = SiteRNG(a.seed + 300)
    say("# force per link on held-out configs (rms / max); gauge part includes the log-det")
    say(f"{'model':12s} {'gauge':>15s} {'fermion':>15s} {'total':>15s}")
    for name, flow in flows.items():
        parts = schwinger_force_parts(theory, flow, u, frng, 1)
        say(
            f"{name:12s} "
            + " ".join(
                f"{parts[k][0]:7.3f}/{parts[k][1]:7.3f}" for k in ("gauge", "fermion", "total")
            )
        )

    sm, noise = fermion_force_noise(theory, u, frng, 8)
    say(
        f"# plain fermion force at U over 8 pseudofermion draws: smooth part (E_chi F) rms "
        f"{sm:.3f}, draw-to-draw fluctuation rms {noise:.3f}"
    )

    # sampling at one fixed step count
    say(
        f"# sampling: omelyan, tau=1, {n_steps} steps (fixed), "
        f"{a.traj_nthmc} traj x {a.batch} chains"
    )
    hdr = (
        f"{'sampler':12s} {'acc':>5s} {'<dH>':>8s} {'rms dH':>7s} {'med|dH|':>7s} {'max dH':>7s} "
        f"{'<e^-dH>':>7s} "
        f"{'CG/traj':>8s} {'CPU s/traj/chain':>16s} {'tau_Q':>12s} {'tau_P':>6s} "
        f"{'plaq':>17s} {'train CPU s':>11s}"
    )
    say(hdr)
    for name, flow in flows.items():
        tt = theory if flow is None else TransformedTheory(theory, flow)
        rng = SiteRNG(a.seed + 100)
        sampler = HMC(tt, make_integrator(tt, "omelyan", n_steps, 1.0), rng)
        v0 = u.clone() if flow is None else tt.from_physical(u.clone())
        res = run_schwinger(sampler, theory, v0, a.traj_nthmc, 2000)
        an = analyse({**res, "wall": res["cpu"]}, a.batch)
        tcpu = train_info.get(name, (0.0,))[0]
        say(
            f"{name:12s} {res['acc']:5.3f} {res['dH']:8.4f} {res['dH_rms']:7.3f} "
            f"{res['dH_med']:7.3f} {res['dH_max']:7.1f} "
            f"{res['emdh']:7.3f} {res['cg']:8.0f} {res['cpu'] / a.batch:16.3f} "
            f"{an['tau_Q']:6.2f}({an['tau_Q_err']:4.2f}) {an['tau_plaq']:6.2f} "
            f"{an['plaq'][0]:.5f}({an['plaq'][1]:.5f}) {tcpu:11.1f}"
        )
    say(f"# total process CPU time {time.process_time():.0f} s")


if __name__ == "__main__":
    main()
