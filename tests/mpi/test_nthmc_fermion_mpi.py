"""NTHMC trained on the full Schwinger force (kernels/flows/force_norm_fermions.py) and the
differentiable solve (kernels/fermions/implicit.py) on 1, 2, 4 ranks equal one rank (float64):
the implicit solve and its theta-gradient, and the full-force loss (gauge + pseudofermion +
log-det; pseudofermions from the site-keyed heatbath) with its all-reduced parameter
gradients. The grids split the antiperiodic t axis (``[1, 2]``, ``[1, 4]``, ``[2, 2]``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.fermions.implicit import normal_solve
from kernels.flows.force_norm import ForceNormConfig
from kernels.flows.force_norm_fermions import schwinger_force_norm_trainer
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.theories.schwinger import Schwinger
from parallel import ProcessGrid, allgather_field, allreduce_gradients, single_rank_grid

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 8)
GRIDS = {1: [[1, 1]], 2: [[1, 2], [2, 1]], 4: [[1, 4], [2, 2]]}[SIZE]
TOL = 1e-10
REF = single_rank_grid(SHAPE)


@pytest.fixture(params=GRIDS, ids=lambda g: "g" + "x".join(map(str, g)))
def grid(request):
    return ProcessGrid(SHAPE, request.param)


def _global(batch: int = 1, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(batch, 2) + SHAPE)


def _local(full: np.ndarray, grid) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(full[(slice(None),) * 2 + grid.local_slices()]))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err = float((a - b).detach().abs().max())
    assert err <= TOL * max(1.0, float(b.detach().abs().max())), err


def test_normal_solve_and_gradient(grid):
    full = _global()
    rhs_full = np.random.default_rng(9).normal(size=(1, 2) + SHAPE) * (1 + 1j)
    out = []
    for g in (grid, REF):
        th = _local(full, g).requires_grad_(True)
        rhs = _local(rhs_full, g)
        x = normal_solve(th, rhs, 0.24, g, tol=1e-12)
        w = _local(np.cos(np.arange(rhs_full.size)).reshape(rhs_full.shape), g)
        from parallel import global_sum

        loss = global_sum((w * x).real.sum(dim=(1, 2, 3)), g).sum()
        (gr,) = torch.autograd.grad(loss, th)
        out.append((allgather_field(x.detach(), g, 2), allgather_field(gr, g, 2)))
    _close(out[0][0], out[1][0])
    _close(out[0][1], out[1][1])


def _trainer(grid, configs):
    torch.manual_seed(13)
    flow = u1_nthmc_flow(grid, n_layers=4, hidden=(2,), identity_init=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(2.0)
    th = Schwinger(grid, 2.0, 0.24, cg_tol=1e-12, pion=False)
    cfg = ForceNormConfig(steps=1, batch=1, validate_every=0)
    return schwinger_force_norm_trainer(flow, th, configs, cfg, seed=3)


def test_full_force_loss_and_gradients(grid):
    full = _global()
    res = []
    for g in (grid, REF):
        tr = _trainer(g, _local(full, g))
        configs = tr.batch_at(0)  # draws the pseudofermions (counter 1)
        loss, _ = tr.loss(configs)
        tr.flow.zero_grad()
        loss.backward()
        allreduce_gradients(tr.flow, g)
        grads = torch.cat([p.grad.reshape(-1) for p in tr.flow.parameters()])
        res.append((loss.detach(), grads))
    _close(res[0][0], res[1][0])
    _close(res[0][1], res[1][1])
    assert float(res[1][1].abs().max()) > 0
