"""SU(3) flows on a distributed 4D lattice equal the single-rank result (run under mpiexec).

Every rank builds the same flow (same weights) on ``single_rank_grid`` (the reference) and on
the distributed grid, draws the same global links with the site-keyed RNG, and compares the
flow output and log-det, the inverse, the trivialized force (autograd through the halo
exchanges and the log-det all-reduce), the force-matching loss and its parameter gradients
(double backward through the distributed flow, then ``allreduce_gradients``), and the
parallel-transport convolution, to 1e-12. (The trainer's Adam step is not repeated here: its
first call costs seconds of imports per rank; its inputs, loss and gradients are checked.)
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from kernels.flows.base import Composition
from kernels.flows.force_matching import force_matching_loss
from kernels.flows.su3 import SU3StoutLayer
from kernels.flows.su3_fused import set_stout_kernel, uses_fused
from kernels.flows.transport import ParallelTransportConv
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge
from parallel import ProcessGrid, allreduce_gradients, single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 2, 2, 4)
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(2, 1, 1, 1), (1, 1, 1, 2)],
    4: [(2, 1, 1, 2), (1, 1, 1, 4)],
}.get(SIZE, [(0, 0, 0, 0)])
TOL = 1e-12


def check(what: str, got: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> None:
    """Assert ``got == ref`` to TOL relative to max(scale, |ref|), on every rank at once."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    scale = max(scale, ref.abs().max().item())
    err = (got - ref).abs().max().item() / scale
    err = MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)
    assert err <= TOL, f"{what}: distributed differs from single rank by {err:.3e}"


def local(x: torch.Tensor, grid: ProcessGrid, first: int = 2) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


@pytest.fixture(params=GRIDS, ids=lambda g: f"grid{list(g)}")
def grids(request):
    g = request.param
    grid = ProcessGrid(SHAPE, grid=None if g == (0, 0, 0, 0) else g)
    yield grid, single_rank_grid(SHAPE)
    grid.free()


def _flow(grid) -> Composition:
    """Three layers: a 3^4 convolution (halo exchange in the coefficient network) and two
    pointwise ones, over several directions and both parities; strong coefficients."""
    torch.manual_seed(7)
    spec = [(0, 0, 3), (3, 1, 1), (1, 1, 1)]
    layers = [
        SU3StoutLayer(grid, mu, par, hidden=(2,), kernel_size=k, rho_max=0.9) for mu, par, k in spec
    ]
    flow = Composition(grid, layers)
    with torch.no_grad():
        for layer in flow.layers:
            layer.net.net[-1].bias.add_(1.0)
    return flow


def _pair(grid, ref_grid, beta=2.0):
    dist, ref = SU3Gauge(grid, beta, action="iwasaki"), SU3Gauge(ref_grid, beta, action="iwasaki")
    fd, fr = _flow(grid), _flow(ref_grid)
    fd.load_state_dict(fr.state_dict())
    return dist, ref, fd, fr


def test_flow_forward_inverse_and_log_det(grids):
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


def test_trivialized_force_and_action(grids):
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    td, tr = TransformedTheory(dist, fd), TransformedTheory(ref, fr)
    rng = SiteRNG(32)
    v_ref, v = ref.hot_start(rng, 0, 2), dist.hot_start(rng, 0, 2)
    check("trivialized action", td.action(v).detach(), tr.action(v_ref).detach())
    check("trivialized force", td.force(v), local(tr.force(v_ref), grid))


def test_force_matching_loss_gradients(grids):
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    td, tr = TransformedTheory(dist, fd), TransformedTheory(ref, fr)
    rng = SiteRNG(33)
    v_ref, v = ref.hot_start(rng, 0, 1), dist.hot_start(rng, 0, 1)
    loss_ref, f_ref = force_matching_loss(tr, v_ref)
    loss, f = force_matching_loss(td, v)
    check("force-matching loss", loss.detach(), loss_ref.detach())
    check("force", f.detach(), local(f_ref.detach(), grid))
    loss_ref.backward()
    loss.backward()
    allreduce_gradients(fd, grid)
    for (name, p), q in zip(fd.named_parameters(), fr.parameters(), strict=True):
        check(f"loss gradient {name}", p.grad, q.grad, scale=1e-3)


def test_fused_core_equals_eager_reference(grids):
    """The fused numba layer core (default where numba is installed) on the distributed grid
    equals the eager core on one rank: flow output, log-det and trivialized force."""
    pytest.importorskip("numba")
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    td, tr = TransformedTheory(dist, fd), TransformedTheory(ref, fr)
    rng = SiteRNG(34)
    v_ref, v = ref.hot_start(rng, 0, 2), dist.hot_start(rng, 0, 2)
    set_stout_kernel("eager")
    try:
        with torch.no_grad():
            y_ref, ld_ref = fr(v_ref)
        f_ref = tr.force(v_ref)
    finally:
        set_stout_kernel(None)
    assert uses_fused(v)
    with torch.no_grad():
        y, ld = fd(v)
    check("fused flow output", y, local(y_ref, grid))
    check("fused log-det", ld, ld_ref)
    check("fused trivialized force", td.force(v), local(f_ref, grid))


def test_fused_force_with_backward_slabs_equals_eager_reference():
    """Axis 0 of extent 8 split over all ranks: the fused loops' backward runs in slabs (4 on
    one rank, 2 on each of two, 1 on each of four: su3_fused.backward_slabs) and the
    trivialized force equals the eager force on one rank."""
    pytest.importorskip("numba")
    if SIZE not in (1, 2, 4):
        pytest.skip("1, 2 or 4 ranks")
    shape = (8, 2, 2, 2)
    grid = ProcessGrid(shape, grid=(SIZE, 1, 1, 1))
    ref_grid = single_rank_grid(shape)
    try:
        dist, ref = SU3Gauge(grid, 2.0), SU3Gauge(ref_grid, 2.0)
        fd, fr = _flow(grid), _flow(ref_grid)
        fd.load_state_dict(fr.state_dict())
        want = {1: 4, 2: 2, 4: 1}[SIZE]
        assert all(len(layer._slabs) == want + 1 for layer in fd.layers)
        td, tr = TransformedTheory(dist, fd), TransformedTheory(ref, fr)
        v_ref, v = ref.hot_start(SiteRNG(35), 0, 2), dist.hot_start(SiteRNG(35), 0, 2)
        set_stout_kernel("eager")
        try:
            f_ref = tr.force(v_ref)
        finally:
            set_stout_kernel(None)
        assert uses_fused(v)
        check("trivialized force (slabs)", td.force(v), local(f_ref, grid))
    finally:
        grid.free()


@pytest.mark.parametrize("rep", ["fundamental", "adjoint"])
def test_parallel_transport_conv(grids, rep):
    grid, ref_grid = grids
    torch.manual_seed(3)
    bc = [1, 1, 1, -1]
    ld = ParallelTransportConv(grid, 2, 2, representation=rep, bc=bc)
    lr = ParallelTransportConv(ref_grid, 2, 2, representation=rep, bc=bc)
    ld.load_state_dict(lr.state_dict())
    rng = SiteRNG(35)
    u_ref, u = (
        SU3Gauge(ref_grid, 1.0).hot_start(rng, 0, 2),
        SU3Gauge(grid, 1.0).hot_start(rng, 0, 2),
    )
    trail = (3, 2) if rep == "fundamental" else (3, 3, 2)
    xr = rng.normal(ref_grid, PURPOSE_USER, 7, 2, lead=(2,), trail=trail)
    xd = rng.normal(grid, PURPOSE_USER, 7, 2, lead=(2,), trail=trail)
    psi_ref = torch.complex(xr[..., 0], xr[..., 1]).requires_grad_(True)
    psi = torch.complex(xd[..., 0], xd[..., 1]).requires_grad_(True)
    out_ref, out = lr(psi_ref, u_ref), ld(psi, u)
    check("transport conv", out.detach(), local(out_ref.detach(), grid))
    # gradient w.r.t. the input (adjoint shifts across ranks)
    out_ref.abs().square().sum().backward()
    out.abs().square().sum().backward()
    check("transport conv input gradient", psi.grad, local(psi_ref.grad, grid))


@pytest.mark.parametrize("stout", ["eager", "auto"])
def test_a_nan_link_on_one_rank_spoils_only_its_chain(grids, stout):
    """A NaN link of chain 1 at a site one rank owns: the trivialized action and force of
    chain 0 are the clean single-rank ones on every rank, chain 1's action is NaN
    everywhere, and nothing raises (eigh of the NaN matrix stopped the whole run before
    session 19)."""
    grid, ref_grid = grids
    dist, ref, fd, fr = _pair(grid, ref_grid)
    td, tr = TransformedTheory(dist, fd), TransformedTheory(ref, fr)
    v_ref = ref.hot_start(SiteRNG(33), 0, 2)
    bad_ref = v_ref.clone()
    bad_ref[1, 2, 3, 1, 0, 2, 1, 1] = complex(float("nan"), 0.0)
    set_stout_kernel(stout)
    try:
        action, force = td.action(local(bad_ref, grid)).detach(), td.force(local(bad_ref, grid))
        clean_action, clean_force = tr.action(v_ref).detach(), tr.force(v_ref)
    finally:
        set_stout_kernel(None)
    check("clean chain's action", action[:1], clean_action[:1])
    check("clean chain's force", force[:1], local(clean_force, grid)[:1])
    assert bool(torch.isnan(action[1]))
