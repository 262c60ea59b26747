"""NTHMC U(1) flows (kernels.flows.nthmc_u1) and force-norm training (kernels.flows.force_norm)
on 1, 2, 4 ranks equal one rank (float64, 1e-12): flow output, log-det and inverse (with its
iteration counts), both training objectives' loss and all-reduced parameter gradients (also
with two replica groups), one Adam step with validation, the trivialized force and one
trivialized-HMC trajectory. 8x8 lattice: on the 4-rank grids an axis has local extent 2,
so the rectangles' shifts by two cross ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer
from kernels.flows.nthmc_u1 import inverse_iterations, u1_nthmc_flow
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, allgather_field, allreduce_gradients, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (8, 8)
GRIDS = {1: [[1, 1]], 2: [[2, 1], [1, 2]], 4: [[4, 1], [2, 2], [1, 4]]}[SIZE]
TOL = 1e-12
REF = single_rank_grid(SHAPE)


@pytest.fixture(params=GRIDS, ids=lambda g: "g" + "x".join(map(str, g)))
def grid(request):
    return ProcessGrid(SHAPE, request.param)


def _flow(grid):
    torch.manual_seed(13)  # same init on every rank and for both grids
    flow = u1_nthmc_flow(grid, hidden=(4,), identity_init=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(2.0)
    return flow


def _global(batch: int = 4, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-4.0, 4.0, size=(batch, 2) + SHAPE)


def _local(full: np.ndarray, grid) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(full[(slice(None),) * 2 + grid.local_slices()]))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err = float((a - b).detach().abs().max()) if a.numel() else 0.0
    assert err <= TOL * max(1.0, float(b.detach().abs().max())), err


def _grads(module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def test_flow_forward_inverse_logdet(grid):
    full = _global()
    flow, ref = _flow(grid), _flow(REF)
    u, ld = flow(_local(full, grid))
    u_ref, ld_ref = ref(torch.from_numpy(full))
    _close(allgather_field(u, grid, 2), u_ref)
    _close(ld, ld_ref)
    v, ldi = flow.inverse(u)
    v_ref, ldi_ref = ref.inverse(u_ref)
    _close(allgather_field(v, grid, 2), torch.from_numpy(full))
    _close(ldi, ldi_ref)
    its = inverse_iterations(flow)
    # Newton runs element-wise: the count (max over the domain group) is grid-independent
    assert its == inverse_iterations(ref)
    assert len(set(MPI.COMM_WORLD.allgather(tuple(its)))) == 1


@pytest.mark.parametrize("objective", ["force_p", "force_linf"])
def test_training_loss_gradients_step(grid, objective):
    full = _global(6)
    cfg = dict(objective=objective, power=3.0, kappa=1.5, batch=2, lr=1e-2, validate_every=1)
    tr = ForceNormTrainer(
        _flow(grid),
        U1Gauge(grid, 2.0),
        _local(full[:4], grid),
        ForceNormConfig(**cfg),
        validation=_local(full[4:], grid),
    )
    ref = ForceNormTrainer(
        _flow(REF),
        U1Gauge(REF, 2.0),
        torch.from_numpy(full[:4]),
        ForceNormConfig(**cfg),
        validation=torch.from_numpy(full[4:]),
    )
    for t in (tr, ref):
        t.flow.zero_grad()
        loss, _ = t.loss(t.batch_at(0))
        loss.backward()
        allreduce_gradients(t.flow, t.grid)
        t.loss0 = float(loss.detach())
    assert math.isclose(tr.loss0, ref.loss0, rel_tol=TOL)
    _close(_grads(tr.flow), _grads(ref.flow))
    for _ in range(2):
        m, m_ref = tr.step(), ref.step()
        for key in ("loss", "force_rms", "val_loss"):
            assert math.isclose(m[key], m_ref[key], rel_tol=1e-11, abs_tol=1e-12), key
    for a, b in zip(tr.flow.parameters(), ref.flow.parameters()):
        _close(a.detach(), b.detach())


def test_training_gradients_with_two_replica_groups():
    if SIZE < 2:
        pytest.skip("needs 2 or 4 ranks")
    grid = ProcessGrid(SHAPE, None, replicas=2)
    full = _global(4)
    mine = full[2 * grid.replica : 2 * grid.replica + 2]
    cfg = ForceNormConfig(batch=2, validate_every=0)
    tr = ForceNormTrainer(_flow(grid), U1Gauge(grid, 2.0), _local(mine, grid), cfg)
    ref = ForceNormTrainer(
        _flow(REF), U1Gauge(REF, 2.0), torch.from_numpy(full), ForceNormConfig(batch=4)
    )
    for t in (tr, ref):
        t.flow.zero_grad()
        t.loss(t.batch_at(0))[0].backward()
        allreduce_gradients(t.flow, t.grid)
    _close(_grads(tr.flow), _grads(ref.flow))


def test_trivialized_force_and_trajectory(grid):
    full = _global(2)
    tt = TransformedTheory(U1Gauge(grid, 2.0), _flow(grid))
    tt_ref = TransformedTheory(U1Gauge(REF, 2.0), _flow(REF))
    f = tt.force(_local(full, grid))
    _close(allgather_field(f, grid, 2), tt_ref.force(torch.from_numpy(full)))
    out = []
    for theory in (tt, tt_ref):
        rng = SiteRNG(8)
        hmc = HMC(theory, make_integrator(theory, "leapfrog", 2, 0.3), rng)
        v0 = theory.hot_start(rng, 0, 2)
        v1, rec = hmc.trajectory(v0, 1)
        out.append((allgather_field(v1, theory.grid, 2), rec))
    _close(out[0][0], out[1][0])
    _close(out[0][1].dH, out[1][1].dH)
    assert torch.equal(out[0][1].accepted, out[1][1].accepted)
