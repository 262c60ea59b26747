"""L2HMC on a distributed lattice equals the single-rank run (launched with 1, 2 and 4 ranks).

Every rank builds the same model (weights copied from one reference model) on its block of a
distributed :class:`ProcessGrid` and on the whole lattice (``single_rank_grid``) and compares
(U(1), phi^4, SU(3) 4x2x2x4, and the Schwinger model driven by a U(1) model with grids that
split the antiperiodic time axis; CG iteration counts must be equal too):
one sampler trajectory (proposal, dH, log|J|, decisions, dQ, new field), the training loss,
the all-reduced parameter gradients and the weights and chains after training steps (1e-12).
Errors are max-reduced over all ranks before asserting, so all ranks fail together.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from kernels.l2hmc import L2HMC, L2HMCTrainConfig, L2HMCTrainer, build_l2hmc_model
from kernels.l2hmc.sampler import PURPOSE_DIRECTION, directions
from kernels.l2hmc.train import train_momentum
from kernels.theories.phi4 import Phi4
from kernels.theories.schwinger import Schwinger
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, allreduce_gradients, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
TOL = 1e-12
SEED = 1357
BATCH = 4

GRIDS_2D = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (2, 2), (1, 4)]}[SIZE]
GRIDS_4D = {1: [(1, 1, 1, 1)], 2: [(1, 1, 1, 2), (2, 1, 1, 1)], 4: [(2, 1, 1, 2)]}[SIZE]
SHAPES = {"u1": (4, 8), "phi4": (8, 4), "su3": (4, 2, 2, 4), "schwinger": (4, 8)}
CASES = [(name, g) for name in ("u1", "phi4") for g in GRIDS_2D]
CASES += [("su3", g) for g in GRIDS_4D]
# the Schwinger model (pseudofermions, antiperiodic t split over ranks) driven by a U(1) model
TRAJ_CASES = CASES + [("schwinger", g) for g in GRIDS_2D]


def make_theory(name, grid):
    if name == "su3":
        return SU3Gauge(grid, beta=5.0)
    if name == "schwinger":
        return Schwinger(grid, beta=2.0, kappa=0.2, cg_tol=1e-12)
    return U1Gauge(grid, beta=1.5) if name == "u1" else Phi4(grid, beta=0.3, lam=0.5)


def worst(err: float) -> float:
    return MPI.COMM_WORLD.allreduce(float(err), op=MPI.MAX)


def check(what, got, ref, tol=TOL):
    assert got.shape == ref.shape, f"{what}: {tuple(got.shape)} != {tuple(ref.shape)}"
    err = worst((got - ref).abs().max().item() if ref.numel() else 0.0)
    assert err <= tol, f"{what}: distributed differs from single rank by {err:.3e}"


def same(what, got, ref):
    assert worst(0.0 if torch.equal(got, ref) else 1.0) == 0.0, f"{what}: {got} != {ref}"


def local(x, grid, first):
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


def pair(name, g):
    grid = ProcessGrid(SHAPES[name], grid=g)
    dist, ref = make_theory(name, grid), make_theory(name, single_rank_grid(SHAPES[name]))
    torch.manual_seed(7)
    model_theory = "u1" if name == "schwinger" else name
    m_ref = build_l2hmc_model(ref.grid, model_theory, n_layers=2, hidden=(4,), step_size=0.2)
    m_dist = build_l2hmc_model(grid, model_theory, n_layers=2, hidden=(4,), step_size=0.2)
    m_dist.load_state_dict(m_ref.state_dict())
    return dist, ref, m_dist, m_ref


@pytest.mark.parametrize("case", TRAJ_CASES, ids=lambda c: f"{c[0]}-grid{list(c[1])}")
def test_trajectory_matches_single_rank(case):
    name, g = case
    dist, ref, m_dist, m_ref = pair(name, g)
    rng = SiteRNG(SEED)
    x_d, x_r = dist.hot_start(rng, 0, BATCH), ref.hot_start(rng, 0, BATCH)
    s_d, s_r = L2HMC(dist, m_dist, rng), L2HMC(ref, m_ref, rng)
    moved = False
    for counter in (1, 2):
        x_d, r_d = s_d.trajectory(x_d, counter)
        x_r, r_r = s_r.trajectory(x_r, counter)
        check(f"{name} dH", r_d.dH, r_r.dH)
        check(f"{name} log|J|", r_d.log_jacobian, r_r.log_jacobian)
        same(f"{name} accepted", r_d.accepted, r_r.accepted)
        for key, val in r_r.extra.items():
            check(f"{name} {key}", r_d.extra[key], val)
        for key, val in r_r.costs.items():
            same(f"{name} {key}", r_d.costs[key], val)
        check(f"{name} field", x_d, local(x_r, dist.grid, dist.first))
        moved = moved or bool(r_r.accepted.any())
    assert moved
    # both directions occurred
    d = torch.cat([directions(rng, PURPOSE_DIRECTION, c, BATCH, 0) for c in (1, 2)])
    assert (d > 0).any() and (d < 0).any()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-grid{list(c[1])}")
def test_loss_gradients_and_training_match_single_rank(case):
    name, g = case
    dist, ref, m_dist, m_ref = pair(name, g)
    cfg = L2HMCTrainConfig(
        steps=2,
        batch=BATCH,
        lr=1e-2,
        gamma_start=0.5,
        charge_weight=1.0 if name == "u1" else 0.0,
        plaquette_weight=0.5 if name in ("u1", "su3") else 0.0,
        field_weight=1.0 if name == "phi4" else 0.0,
    )
    rng = SiteRNG(SEED)
    t_d, t_r = L2HMCTrainer(m_dist, dist, rng, cfg), L2HMCTrainer(m_ref, ref, rng, cfg)
    check("start", t_d.chains, local(t_r.chains, dist.grid, dist.first))
    # loss and all-reduced gradients of one batch
    v_r = train_momentum(ref, rng, 5, BATCH, 0)
    v_d = local(v_r, dist.grid, dist.first)
    d = torch.tensor([1.0, -1.0, -1.0, 1.0])
    for model, trainer, v in ((m_dist, t_d, v_d), (m_ref, t_r, v_r)):
        model.zero_grad()
        loss, _ = trainer.loss(trainer.chains, v, d, 0.7)
        loss.backward()
        allreduce_gradients(model, trainer.theory.grid)
        trainer._loss = loss.detach()
    check("loss", t_d._loss, t_r._loss)
    for (k, p_d), p_r in zip(m_dist.named_parameters(), m_ref.parameters()):
        check(f"grad {k}", p_d.grad, p_r.grad)
    assert max(float(p.grad.abs().max()) for p in m_ref.parameters()) > 0
    # training steps: metrics, weights and carried-over chains
    for _ in range(cfg.steps):
        md, mr = t_d.step(), t_r.step()
        for key in ("loss", "acceptance", "log_jacobian"):
            assert abs(md[key] - mr[key]) <= 1e-11 * max(1.0, abs(mr[key])), key
    # Adam divides by sqrt(<g^2>): the last-bit differences of the gradients (parameter
    # gradients are fast float sums, their order depends on the grid) enter the steps of
    # parameters with tiny gradients relatively; seen up to 8e-12 for SU(3) on 4 ranks
    for (k, p_d), p_r in zip(m_dist.named_parameters(), m_ref.parameters()):
        check(f"trained {k}", p_d.detach(), p_r.detach(), tol=1e-10)
    check("chains", t_d.chains, local(t_r.chains, dist.grid, dist.first))
