"""SU(3) NTHMC evidence: force matching to a coarser beta, then trivialized HMC vs plain HMC.

    python benchmarks/bench_nthmc_su3.py --L 4 --beta 6.0 --target-beta 5.7
    python benchmarks/bench_nthmc_su3.py --quick          # L = 4, short, a few minutes

One run, Wilson action, ``--batch`` chains, Omelyan, trajectory length 1:

1. plain HMC at ``beta`` from a hot start, ``--therm`` trajectories with step-count tuning
   toward acceptance 0.8, then snapshots of the batch every 2 trajectories: ``--train-configs``
   for training, ``--val`` for validation (held out);
2. training (timed): :class:`kernels.flows.force_norm.ForceNormTrainer` with target
   :class:`kernels.flows.force_matching.CouplingTarget` (plain force at ``--target-beta``) of
   :func:`kernels.flows.nthmc_su3.su3_nthmc_flow` (``--layers``, ``--hidden``, ``--kernel``),
   ``|F~(V) - F_target(V)|^2`` at ``V = F^{-1}(U)``, early stopping (``--patience``);
3. forces on the held-out configurations, per link ``|f| = sqrt(sum_a f_a^2)``: rms and
   maximum (L_inf) of the plain force at ``U``, of the trivialized force at ``V = F^{-1}(U)``
   and of the target force at ``V``, and the matching residual;
4. ``--traj`` trajectories each, all at the *same* step count (plain HMC's tuned one) and
   trajectory length, from plain HMC's last configurations: plain HMC at ``beta``, NTHMC
   (``HMC(TransformedTheory(theory, flow))``, from ``V = F^{-1}(U)``) at ``beta``, and, for
   reference, plain HMC at ``target_beta`` (what the matched flow imitates).

Reported per sampler: acceptance, ``<dH>``, ``rms dH``, ``<exp(-dH)>``, the mean change per
trajectory of the physical plaquette ``|dP|`` and of the Wilson-flow energy ``|d t^2 E(t)|`` at
flow time ``--flow-t`` (clover, :mod:`kernels.wilson_flow`; the seed talk's "small dH while
large dE" is NTHMC moving the smooth, long-distance part of the field further per trajectory
at the same dH), and the wall time per trajectory (whole batch).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import datetime, timezone

import torch
from mpi4py import MPI

from kernels.flows.force_matching import CouplingTarget, variable_norms
from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer, trivialized_force
from kernels.flows.nthmc_su3 import inverse_iterations, su3_nthmc_flow
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge
from kernels.wilson_flow import energy_density, flow_step_rk3
from parallel import ProcessGrid, global_max, global_sum
from parallel.rng import SiteRNG

ROOT = MPI.COMM_WORLD.Get_rank() == 0


def say(*a) -> None:
    if ROOT:
        print(*a, flush=True)


def norm_stats(f: torch.Tensor, theory) -> tuple[float, float]:
    """(rms, max) over links and chains of ``|f|`` per link."""
    a = variable_norms(f, theory)
    sq = global_sum(float(a.square().sum()), theory.grid)
    n = a.numel() * theory.grid.size
    return math.sqrt(sq / n), float(global_max(float(a.max()), theory.grid))


def flowed_energy(u: torch.Tensor, grid, t: float, eps: float = 0.05) -> torch.Tensor:
    """``t^2 E_clover(t)`` per chain after Wilson flow to ``t`` (RK3, step ``eps``)."""
    n = max(1, round(t / eps))
    with torch.no_grad():
        for _ in range(n):
            u = flow_step_rk3(u, grid, t / n)
        return t * t * energy_density(u, grid)


def run(hmc: HMC, physical: SU3Gauge, v, n_traj: int, counter: int, flow_t: float) -> dict:
    """``n_traj`` trajectories; acceptance, dH and the per-trajectory observable changes."""
    to_u = hmc.theory.to_physical if hasattr(hmc.theory, "to_physical") else (lambda x: x)
    grid = physical.grid
    u = to_u(v)
    p0, e0 = physical.observables(u)["plaquette"], flowed_energy(u, grid, flow_t)
    acc, dh, emdh, dp, de = [], [], [], [], []
    wall = 0.0
    for t in range(n_traj):
        t0 = time.perf_counter()
        v, rec = hmc.trajectory(v, counter + t)
        wall += time.perf_counter() - t0
        u = to_u(v)
        p1, e1 = physical.observables(u)["plaquette"], flowed_energy(u, grid, flow_t)
        acc.append(rec.accepted.double())
        dh.append(rec.dH.double())
        emdh.append(rec.exp_minus_dH.double())
        dp.append((p1 - p0).abs())
        de.append((e1 - e0).abs())
        p0, e0 = p1, e1
    wall /= n_traj
    cat = torch.stack
    dh_all = cat(dh)
    return {
        "v": v,
        "acc": float(cat(acc).mean()),
        "dH": float(dh_all.mean()),
        "rms_dH": float(dh_all.square().mean().sqrt()),
        "exp": float(cat(emdh).mean()),
        "dP": float(cat(dp).mean()),
        "dE": float(cat(de).mean()),
        "plaq": float(p0.mean()),
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=4)
    ap.add_argument("--beta", type=float, default=6.0)
    ap.add_argument("--target-beta", type=float, default=5.7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--therm", type=int, default=40)
    ap.add_argument("--traj", type=int, default=20, help="trajectories per sampler")
    ap.add_argument("--train-configs", type=int, default=8, help="snapshots of the batch")
    ap.add_argument("--val", type=int, default=2, help="held-out snapshots of the batch")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, nargs="*", default=[4])
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--flow-t", type=float, default=0.5, help="Wilson-flow time of dE")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        for key, val in dict(
            therm=15, traj=6, train_configs=3, val=1, train_steps=6, batch=2, train_batch=2
        ).items():
            if getattr(a, key) == ap.get_default(key):
                setattr(a, key, val)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(a.seed)
    grid = ProcessGrid((a.L,) * 4)
    theory = SU3Gauge(grid, a.beta)
    coarse = SU3Gauge(grid, a.target_beta)
    say(
        f"# bench_nthmc_su3  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.node()}  "
        f"{platform.processor() or platform.machine()}  ranks={MPI.COMM_WORLD.Get_size()}  "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  torch {torch.__version__}"
    )
    say(
        f"# SU(3) Wilson L={a.L}^4 beta={a.beta} -> target beta={a.target_beta}  "
        f"batch={a.batch}  layers={a.layers} hidden={a.hidden} kernel={a.kernel}^4"
    )

    # 1. plain HMC: thermalise with step-count tuning, then snapshots for training
    t0 = time.perf_counter()
    rng = SiteRNG(a.seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 6, 1.0), rng, target_acceptance=0.8)
    u = theory.hot_start(rng, 0, a.batch)
    c = 1
    for _ in range(a.therm):
        u, _ = hmc.trajectory(u, c, tune=True)
        c += 1
    hmc.finish_tuning()
    snaps = []
    for _ in range(a.train_configs + a.val):
        for _ in range(2):
            u, _ = hmc.trajectory(u, c)
            c += 1
        snaps.append(u.clone())
    train = torch.cat(snaps[: a.train_configs])
    val = torch.cat(snaps[a.train_configs :])
    n_steps = hmc.n_steps
    say(
        f"# plain HMC: {a.therm} tuned + {2 * len(snaps)} traj in {time.perf_counter() - t0:.0f} s;"
        f" tuned steps {n_steps}; plaquette {float(theory.observables(u)['plaquette'].mean()):.4f}"
    )

    # 2. force matching
    flow = su3_nthmc_flow(grid, a.layers, a.hidden, a.kernel)
    cfg = ForceNormConfig(
        steps=a.train_steps,
        batch=a.train_batch,
        lr=a.lr,
        validate_every=max(1, a.train_steps // 10),
        patience=a.patience,
    )
    trainer = ForceNormTrainer(
        flow, theory, train, cfg, validation=val, target=CouplingTarget(theory, coarse)
    )
    before = trainer.validate()
    trainer.train()
    after = trainer.validate()
    s = trainer.summary()
    say(
        f"# training: {trainer.step_count} steps ({flow.n_parameters()} parameters) in "
        f"{s['train_time']:.0f} s ({s['train_time'] / max(1, trainer.step_count):.1f} s/step); "
        f"validation |F~ - F_target|^2: {before:.4g} -> {after:.4g} (best step {s['best_step']})"
    )

    # 3. forces on the held-out configurations
    tt = TransformedTheory(theory, flow)
    with torch.no_grad():
        v_val = flow.inverse(val)[0]
    say(f"# inverse F^-1 fixed-point iterations per layer: {inverse_iterations(flow)}")
    f_plain = theory.force(val)
    f_triv = trivialized_force(tt, v_val, create_graph=False)
    f_tgt = coarse.force(v_val)
    say("\n| force on held-out configurations | rms per link | L_inf |")
    say("|---|---|---|")
    for name, f, th in (
        (f"plain dS/dU at beta {a.beta}", f_plain, theory),
        ("trivialized dS~/dV (NTHMC)", f_triv, theory),
        (f"target dS/dV at beta {a.target_beta}", f_tgt, theory),
        ("matching residual F~ - F_target", f_triv - f_tgt, theory),
    ):
        rms, mx = norm_stats(f.detach(), th)
        say(f"| {name} | {rms:.3f} | {mx:.3f} |")

    # 4. samplers at equal step count and trajectory length
    u_start = u
    rows = []
    hmc_plain = HMC(theory, make_integrator(theory, "omelyan", n_steps, 1.0), SiteRNG(a.seed + 1))
    rows.append((f"HMC beta={a.beta}", run(hmc_plain, theory, u_start, a.traj, c, a.flow_t)))
    hmc_nt = HMC(tt, make_integrator(tt, "omelyan", n_steps, 1.0), SiteRNG(a.seed + 2))
    with torch.no_grad():
        v0 = flow.inverse(u_start)[0]
    rows.append((f"NTHMC beta={a.beta}", run(hmc_nt, theory, v0, a.traj, c, a.flow_t)))
    hmc_c = HMC(coarse, make_integrator(coarse, "omelyan", n_steps, 1.0), SiteRNG(a.seed + 3))
    rows.append(
        (f"HMC beta={a.target_beta} (ref)", run(hmc_c, coarse, u_start, a.traj, c, a.flow_t))
    )

    say(
        f"\n| sampler ({n_steps} steps, tau=1, {a.traj} traj x {a.batch}) | acc | <dH> | rms dH "
        f"| <exp(-dH)> | <|dP|>/traj | <|d t^2E({a.flow_t})|>/traj | plaquette (last) "
        "| s/traj |"
    )
    say("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        say(
            f"| {name} | {r['acc']:.3f} | {r['dH']:.4f} | {r['rms_dH']:.4f} | {r['exp']:.3f} "
            f"| {r['dP']:.5f} | {r['dE']:.5f} | {r['plaq']:.4f} | {r['wall']:.3f} |"
        )
    ratio = rows[1][1]["wall"] / max(rows[0][1]["wall"], 1e-12)
    say(f"\n# NTHMC trajectory cost: {ratio:.0f}x plain HMC (same step count)")


if __name__ == "__main__":
    main()
