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
import tempfile
import time
from datetime import datetime, timezone

import torch
from mpi4py import MPI

from app.registry import load_model, save_model
from kernels.backends import get_backend
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
    """``n_traj`` trajectories; acceptance, dH, the per-trajectory observable changes and the
    cost per trajectory (process CPU seconds and wall seconds, whole batch)."""
    to_u = hmc.theory.to_physical if hasattr(hmc.theory, "to_physical") else (lambda x: x)
    grid = physical.grid
    u = to_u(v)
    p0, e0 = physical.observables(u)["plaquette"], flowed_energy(u, grid, flow_t)
    acc, dh, emdh, dp, de = [], [], [], [], []
    wall = cpu = 0.0
    for t in range(n_traj):
        t0, c0 = time.perf_counter(), time.process_time()
        v, rec = hmc.trajectory(v, counter + t)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        u = to_u(v)
        p1, e1 = physical.observables(u)["plaquette"], flowed_energy(u, grid, flow_t)
        acc.append(rec.accepted.double())
        dh.append(rec.dH.double())
        emdh.append(rec.exp_minus_dH.double())
        dp.append((p1 - p0).abs())
        de.append((e1 - e0).abs())
        p0, e0 = p1, e1
    cat = torch.stack
    dh_all = cat(dh)
    dp_all, de_all = cat(dp), cat(de)
    n = dp_all.numel()
    return {
        "v": v,
        "acc": float(cat(acc).mean()),
        "dH": float(dh_all.mean()),
        "rms_dH": float(dh_all.square().mean().sqrt()),
        "exp": float(cat(emdh).mean()),
        "dP": float(dp_all.mean()),
        "dP_err": float(dp_all.std()) / math.sqrt(n) if n > 1 else float("nan"),
        "dE": float(de_all.mean()),
        "dE_err": float(de_all.std()) / math.sqrt(n) if n > 1 else float("nan"),
        "plaq": float(p0.mean()),
        "wall": wall / n_traj,
        "cpu": cpu / n_traj,
    }


def thermalise(theory: SU3Gauge, u, n_therm: int, n_keep: int, seed: int, counter: int):
    """Plain HMC (Omelyan, tau = 1) from ``u``: ``n_therm`` trajectories tuning the step count
    toward acceptance 0.8, then ``n_keep`` snapshots of the batch, 2 trajectories apart.
    Returns ``(hmc, last u, snapshots, next counter, CPU seconds)``."""
    c0 = time.process_time()
    hmc = HMC(
        theory, make_integrator(theory, "omelyan", 6, 1.0), SiteRNG(seed), target_acceptance=0.8
    )
    for _ in range(n_therm):
        u, _ = hmc.trajectory(u, counter, tune=True)
        counter += 1
    hmc.finish_tuning()
    snaps = []
    for _ in range(n_keep):
        for _ in range(2):
            u, _ = hmc.trajectory(u, counter)
            counter += 1
        snaps.append(u.clone())
    return hmc, u, snaps, counter, time.process_time() - c0


def evaluate(
    flow, theory: SU3Gauge, coarse: SU3Gauge, val, u_start, n_steps: int, a, counter: int
) -> None:
    """Forces on the held-out ``val`` and the three samplers from ``u_start`` (module doc,
    steps 3 and 4), printed as two tables."""
    tt = TransformedTheory(theory, flow)
    grid = theory.grid
    c0 = time.process_time()
    with torch.no_grad():
        v_val = flow.inverse(val)[0]
    its = inverse_iterations(flow)
    f_plain = theory.force(val)
    f_triv = trivialized_force(tt, v_val, create_graph=False)
    f_tgt = coarse.force(v_val)
    cpu_force = time.process_time() - c0
    lat = "x".join(str(n) for n in grid.shape)
    say(
        f"\n# {lat}: inverse F^-1 fixed-point iterations per layer: {its}; F^-1 + trivialized "
        f"force on {len(val)} held-out configurations: {cpu_force:.1f} s CPU"
    )
    say(f"\n| {lat}: force on {len(val)} held-out configurations | rms per link | L_inf |")
    say("|---|---|---|")
    rms_plain = 0.0
    for name, f in (
        (f"plain dS/dU at beta {theory.beta}", f_plain),
        ("trivialized dS~/dV (NTHMC)", f_triv),
        (f"target dS/dV at beta {coarse.beta}", f_tgt),
        ("matching residual F~ - F_target", f_triv - f_tgt),
    ):
        rms, mx = norm_stats(f.detach(), theory)
        rms_plain = rms_plain or rms
        say(f"| {name} | {rms:.3f} | {mx:.3f} |")
    say(
        f"| (identity flow: residual (1 - {coarse.beta}/{theory.beta}) dS/dU) "
        f"| {abs(1 - coarse.beta / theory.beta) * rms_plain:.3f} | |"
    )
    if a.traj <= 0:
        return
    rows = []
    b = a.seed + 10 * grid.shape[0]
    hmc_plain = HMC(theory, make_integrator(theory, "omelyan", n_steps, 1.0), SiteRNG(b + 1))
    rows.append(
        (f"HMC beta={theory.beta}", run(hmc_plain, theory, u_start, a.traj, counter, a.flow_t))
    )
    hmc_nt = HMC(tt, make_integrator(tt, "omelyan", n_steps, 1.0), SiteRNG(b + 2))
    with torch.no_grad():
        v0 = flow.inverse(u_start)[0]
    rows.append((f"NTHMC beta={theory.beta}", run(hmc_nt, theory, v0, a.traj, counter, a.flow_t)))
    hmc_c = HMC(coarse, make_integrator(coarse, "omelyan", n_steps, 1.0), SiteRNG(b + 3))
    rows.append(
        (f"HMC beta={coarse.beta} (ref)", run(hmc_c, coarse, u_start, a.traj, counter, a.flow_t))
    )
    nb = u_start.shape[0]
    say(
        f"\n| {lat} sampler ({n_steps} steps, tau=1, {a.traj} traj x {nb}) | acc | <dH> | rms dH "
        f"| <exp(-dH)> | <|dP|>/traj | <|d t^2E({a.flow_t})|>/traj | plaquette (last) "
        "| CPU s/traj | wall s/traj |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        say(
            f"| {name} | {r['acc']:.3f} | {r['dH']:.4f} | {r['rms_dH']:.4f} | {r['exp']:.3f} "
            f"| {r['dP']:.5f}({r['dP_err']:.5f}) | {r['dE']:.5f}({r['dE_err']:.5f}) "
            f"| {r['plaq']:.4f} | {r['cpu']:.3f} | {r['wall']:.3f} |"
        )
    ratio = rows[1][1]["cpu"] / max(rows[0][1]["cpu"], 1e-12)
    say(f"\n# {lat}: NTHMC trajectory cost: {ratio:.0f}x plain HMC in CPU time (same step count)")


def tile(u: torch.Tensor, factor: int, batch: int) -> torch.Tensor:
    """``batch`` chains of the configurations ``u`` (cycled) repeated ``factor`` times along
    every axis: an exact equilibrium-like start on the ``factor``-times larger lattice (every
    plaquette is one of the small lattice; one rank only)."""
    idx = torch.arange(batch) % u.shape[0]
    nd = u.shape[1]
    return u[idx].repeat(1, 1, *([factor] * nd), 1, 1).contiguous()


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
    ap.add_argument(
        "--transfer-L",
        type=int,
        default=0,
        help="also run the model, without retraining, at "
        "this L (a multiple of --L): registry round trip, tiled start, forces and samplers",
    )
    ap.add_argument("--transfer-batch", type=int, default=2)
    ap.add_argument("--transfer-therm", type=int, default=10)
    ap.add_argument("--transfer-val", type=int, default=1, help="held-out snapshots there")
    ap.add_argument("--transfer-traj", type=int, default=5)
    ap.add_argument("--registry", default=None, help="model registry (default: a temp dir)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        for key, val in dict(
            therm=15, traj=6, train_configs=3, val=1, train_steps=6, batch=2, train_batch=2
        ).items():
            if getattr(a, key) == ap.get_default(key):
                setattr(a, key, val)
    if a.transfer_L and (a.transfer_L % a.L or a.transfer_L <= a.L):
        ap.error(f"--transfer-L {a.transfer_L} must be a multiple > 1 of --L {a.L}")
    if a.transfer_L and MPI.COMM_WORLD.Get_size() > 1:
        ap.error("--transfer-L tiles the small lattice's configurations: run it on one rank")
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(a.seed)
    grid = ProcessGrid((a.L,) * 4)
    theory = SU3Gauge(grid, a.beta)
    coarse = SU3Gauge(grid, a.target_beta)
    say(
        f"# bench_nthmc_su3  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.node()}  "
        f"{platform.processor() or platform.machine()}  ranks={MPI.COMM_WORLD.Get_size()}  "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  torch {torch.__version__}  "
        f"kernels={get_backend().name}"
    )
    say(
        f"# SU(3) Wilson L={a.L}^4 beta={a.beta} -> target beta={a.target_beta}  "
        f"batch={a.batch}  layers={a.layers} hidden={a.hidden} kernel={a.kernel}^4"
    )

    # 1. plain HMC: thermalise with step-count tuning, then snapshots for training
    u = theory.hot_start(SiteRNG(a.seed), 0, a.batch)
    hmc, u, snaps, c, cpu = thermalise(theory, u, a.therm, a.train_configs + a.val, a.seed, 1)
    train = torch.cat(snaps[: a.train_configs])
    val = torch.cat(snaps[a.train_configs :])
    n_steps = hmc.n_steps
    say(
        f"# plain HMC: {a.therm} tuned + {2 * len(snaps)} traj in {cpu:.1f} s CPU;"
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
    c0 = time.process_time()
    trainer.train()
    cpu_train = time.process_time() - c0
    after = trainer.validate()
    s = trainer.summary()
    say(
        f"# training: {trainer.step_count} steps ({flow.n_parameters()} parameters) in "
        f"{cpu_train:.0f} s CPU ({cpu_train / max(1, trainer.step_count):.1f} s CPU/step, "
        f"{s['train_time']:.0f} s wall); validation |F~ - F_target|^2: "
        f"{trainer.initial_val:.4g} -> {after:.4g} (best step {s['best_step']})"
    )

    # 3. + 4. forces on the held-out configurations, samplers at equal step count
    evaluate(flow, theory, coarse, val, u, n_steps, a, c)
    if not a.transfer_L:
        return

    # 5. transfer: the model through the registry, rebuilt at transfer_L without retraining
    tmp = None
    root = a.registry
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
    ref = save_model(
        flow,
        theory,
        "nthmc_su3_bench",
        root=root,
        train_config={"objective": "force_matching", "target_beta": a.target_beta, **s},
    )
    g2 = ProcessGrid((a.transfer_L,) * 4)
    th2, co2 = SU3Gauge(g2, a.beta), SU3Gauge(g2, a.target_beta)
    flow2, card = load_model(ref, g2, th2, root=root)
    for p in flow2.parameters():
        p.requires_grad_(False)
    say(
        f"\n# transfer: model {ref} (card: trained on lattice {card['lattice']} at "
        f"{card['couplings']}, target_beta {card['train_config']['target_beta']}) rebuilt on "
        f"{list(g2.shape)} without retraining"
    )
    u2 = tile(u, a.transfer_L // a.L, a.transfer_batch)
    hmc2, u2, snaps2, c2, cpu2 = thermalise(
        th2, u2, a.transfer_therm, a.transfer_val, a.seed + 100, 1
    )
    say(
        f"# plain HMC at {a.transfer_L}^4 from the tiled {a.L}^4 configurations: "
        f"{a.transfer_therm} tuned + {2 * a.transfer_val} traj in {cpu2:.1f} s CPU; tuned steps "
        f"{hmc2.n_steps}; plaquette {float(th2.observables(u2)['plaquette'].mean()):.4f}"
    )
    a2 = argparse.Namespace(**{**vars(a), "traj": a.transfer_traj})
    evaluate(flow2, th2, co2, torch.cat(snaps2), u2, hmc2.n_steps, a2, c2)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
