"""SU(3) NTHMC layers (kernels.flows.nthmc_su3) on 1, 2, 4 ranks equal one rank (1e-12).

Every rank builds the same flow (same weights) on ``single_rank_grid`` (the reference) and on
the distributed grid, draws the same global links with the site-keyed RNG and compares: flow
output, log-det, inverse and its iteration counts, the trivialized force, and the
force-matching loss with its all-reduced parameter gradients (double backward through the
3^4 convolutions and loop shifts across ranks). 4x2x2x4 lattice: the grids split x and the
time axis down to local extent 1 (shifts by two in the rectangles cross two ranks).
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from kernels.flows.force_matching import CouplingTarget, force_matching_loss
from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer
from kernels.flows.nthmc_su3 import inverse_iterations, su3_nthmc_flow
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge
from parallel import ProcessGrid, allreduce_gradients, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 2, 2, 4)
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(2, 1, 1, 1), (1, 1, 1, 2)],
    4: [(2, 1, 1, 2), (1, 1, 1, 4), (4, 1, 1, 1)],
}[SIZE]
TOL = 1e-12


def check(what: str, got: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> None:
    """``got == ref`` to TOL relative to max(scale, |ref|), on every rank at once."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    scale = max(scale, ref.abs().max().item())
    err = (got - ref).abs().max().item() / scale if got.numel() else 0.0
    err = MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)
    assert err <= TOL, f"{what}: distributed differs from single rank by {err:.3e}"


def local(x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    return x[(slice(None),) * 2 + grid.local_slices()].contiguous()


@pytest.fixture(params=GRIDS, ids=lambda g: "g" + "x".join(map(str, g)))
def grids(request):
    grid = ProcessGrid(SHAPE, grid=request.param)
    yield grid, single_rank_grid(SHAPE)
    grid.free()


def _flow(grid):
    torch.manual_seed(7)
    flow = su3_nthmc_flow(grid, n_layers=3, hidden=(2,), identity_init=False)
    with torch.no_grad():
        for layer in flow.layers:
            layer.net.net[-1].bias.add_(0.5)
    return flow


def _pair(grid, ref_grid):
    dist, ref = SU3Gauge(grid, 2.0, action="iwasaki"), SU3Gauge(ref_grid, 2.0, action="iwasaki")
    fd, fr = _flow(grid), _flow(ref_grid)
    fd.load_state_dict(fr.state_dict())
    return dist, ref, fd, fr


def test_forward_inverse_log_det_iterations(grids):
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    rng = SiteRNG(31)
    u_ref, u = ref.hot_start(rng, 0, 2), dist.hot_start(rng, 0, 2)
    with torch.no_grad():
        y_ref, ld_ref = fr(u_ref)
        y, ld = fd(u)
        check("flow output", y, local(y_ref, grid))
        check("log-det", ld, ld_ref)
        x_ref, ldi_ref = fr.inverse(y_ref)
        x, ldi = fd.inverse(y)
    check("inverse", x, local(x_ref, grid))
    check("inverse log-det", ldi, ldi_ref)
    check("roundtrip", x, u, scale=1e2)  # 1e-10 absolute
    its = inverse_iterations(fd)
    assert len(set(MPI.COMM_WORLD.allgather(tuple(its)))) == 1
    assert all(i >= 2 for i in its)


def test_force_and_loss_gradients(grids):
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    td, tr = TransformedTheory(dist, fd), TransformedTheory(ref, fr)
    rng = SiteRNG(33)
    v_ref, v = ref.hot_start(rng, 0, 1), dist.hot_start(rng, 0, 1)
    check("trivialized force", td.force(v), local(tr.force(v_ref), grid))
    loss_ref, _ = force_matching_loss(tr, v_ref)
    loss, _ = force_matching_loss(td, v)
    check("loss", loss.detach(), loss_ref.detach())
    loss_ref.backward()
    loss.backward()
    allreduce_gradients(fd, grid)
    for (name, p), q in zip(fd.named_parameters(), fr.parameters(), strict=True):
        check(f"loss gradient {name}", p.grad, q.grad, scale=1e-3)


def test_force_matching_to_coarser_beta(grids):
    """Exact gradient through the implicit inverse and the target force at beta 1.5."""
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    rng = SiteRNG(34)
    u_ref, u = ref.hot_start(rng, 0, 1), dist.hot_start(rng, 0, 1)
    cfg = ForceNormConfig(batch=1, objective="force_linf", kappa=1.0, validate_every=0)
    trainers = []
    for th, flow, cfgs in ((dist, fd, u), (ref, fr, u_ref)):
        target = CouplingTarget(th, SU3Gauge(th.grid, 1.5, action="iwasaki"))
        trainers.append(ForceNormTrainer(flow, th, cfgs, cfg, target=target))
    losses = []
    for t in trainers:
        t.flow.zero_grad()
        loss, _ = t.loss(t.batch_at(0))
        loss.backward()
        allreduce_gradients(t.flow, t.grid)
        losses.append(loss.detach())
    check("matching loss", losses[0], losses[1])
    for (name, p), q in zip(fd.named_parameters(), fr.parameters(), strict=True):
        check(f"matching gradient {name}", p.grad, q.grad, scale=1e-3)
