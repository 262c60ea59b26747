"""Every fast kernel backend on a distributed lattice equals single-rank ``eager`` (mpiexec).

The fused kernels pad halos (numba), exchange ghost planes (vnode) or shift real planes
(soa), so the halo handling of each backend is checked here on grids that split one and two
axes: SU(3) force, action, flow generator, clover energy and charge densities (their leaves
reach x - mu - nu) and the gradient of the action (the numba backward is analytic and must
include the staples from neighbouring ranks), U(1) (4D) force, action and gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

import kernels.backends as kb
from kernels.backends import eager
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from kernels.wilson_flow import energy_density
from parallel import ProcessGrid, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 2, 4, 4)
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],
    4: [(1, 1, 2, 2), (2, 1, 1, 2)],
}.get(SIZE, [(0, 0, 0, 0)])
FAST = [n for n in kb.available_backends() if n not in ("eager", "compiled")]
TOL = 1e-13


def check(what: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())
    err = MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)
    assert err <= TOL, f"{what}: distributed backend differs from eager by {err:.3e}"


def local(x: torch.Tensor, grid: ProcessGrid, first: int = 2) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


@pytest.fixture(params=GRIDS, ids=lambda g: f"grid{list(g)}")
def grids(request):
    g = request.param
    grid = ProcessGrid(SHAPE, grid=None if g == (0, 0, 0, 0) else g)
    saved = kb._active
    yield grid, single_rank_grid(SHAPE)
    kb._active = saved
    grid.free()


def _grad(th, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(th.action(x).sum(), x)
    return g


@pytest.mark.parametrize("name", FAST)
def test_su3_backend_distributed(grids, name):
    grid, ref_grid = grids
    dist, ref = SU3Gauge(grid, 5.7), SU3Gauge(ref_grid, 5.7)
    rng = SiteRNG(11)
    u_ref, u = ref.hot_start(rng, 0, 2), dist.hot_start(rng, 0, 2)
    kb.set_backend("eager")
    s_ref, f_ref, g_ref = ref.action(u_ref), ref.force(u_ref), _grad(ref, u_ref)
    kb.set_backend(name)
    check("action", dist.action(u), s_ref)
    check("force", dist.force(u), local(f_ref, grid))
    check("dS/dU", _grad(dist, u), local(g_ref, grid))
    z = kb.get_backend().su3_flow_generator(u, grid)
    check("flow generator", z, local(eager.flow_generator(u_ref, ref_grid), grid))
    step = kb.get_backend().su3_flow_step_rk3(u, grid, 0.05)
    check("RK3 flow step", step, local(eager.flow_step_rk3(u_ref, ref_grid, 0.05), grid))
    ref_b = kb.make_backend("eager")
    for what in ("su3_clover_density", "su3_clover_charge_density"):  # reach x - mu - nu
        got = getattr(kb.get_backend(), what)(u, grid)
        check(what, got, local(getattr(ref_b, what)(u_ref, ref_grid), grid, first=1))


@pytest.mark.parametrize("name", FAST)
def test_u1_backend_distributed(grids, name):
    grid, ref_grid = grids
    dist, ref = U1Gauge(grid, 2.3), U1Gauge(ref_grid, 2.3)
    rng = SiteRNG(12)
    t_ref, t = ref.hot_start(rng, 0, 2), dist.hot_start(rng, 0, 2)
    kb.set_backend("eager")
    s_ref, f_ref, g_ref = ref.action(t_ref), ref.force(t_ref), _grad(ref, t_ref)
    kb.set_backend(name)
    check("action", dist.action(t), s_ref)
    check("force", dist.force(t), local(f_ref, grid))
    check("dS/dtheta", _grad(dist, t), local(g_ref, grid))
    # the action is the same bits on every grid (the fused U(1) action's own exact sum), and a
    # NaN on one rank makes every rank hand over to the general exact sum together
    kb.set_backend(name)
    one = ref.action(t_ref)
    assert torch.equal(dist.action(t), one)
    if grid.cart.Get_rank() == grid.size - 1:
        t[1, 2, 0, 0, 0, 0] = float("nan")
    s = dist.action(t)
    assert s[0] == one[0] and torch.isnan(s[1])


def test_vnode_runs_split_grids_through_ghost_planes(grids, spy):
    """The vnode stencil kernels take split grids too (the links packed into the ghost layout
    of the local block, ghost planes exchanged: ``vnode._staples_on_grid``,
    ``_density_on_grid``): the distributed checks above run the vnode kernels, not a
    fallback, and agree with single-rank eager."""
    vnode = pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    grid, ref_grid = grids
    th, ref = SU3Gauge(grid, 5.7), SU3Gauge(ref_grid, 5.7)
    u_ref = ref.hot_start(SiteRNG(3), 0, 1)
    u = th.hot_start(SiteRNG(3), 0, 1)
    split = any(g > 1 for g in grid.grid)
    assert vnode._use_split(u, grid) and vnode._use(u, grid) is (not split)
    whole = spy(vnode, ("su3_ta_staples", "su3_plaquette_density", "su3_clover_density"))
    ghosts = spy(vnode.PackedMD, ("force", "density"))
    kb.set_backend("eager")
    f_ref, s_ref = ref.force(u_ref), ref.action(u_ref)
    e_ref = energy_density(u_ref, ref_grid)
    kb.set_backend("vnode")
    check("force", th.force(u), local(f_ref, grid))
    check("action", th.action(u), s_ref)
    check("clover E", energy_density(u, grid), e_ref)
    assert (len(whole), len(ghosts)) == ((0, 3) if split else (3, 0))


def test_vnode_resident_flow_on_split_grids(grids, spy, monkeypatch):
    """``wilson_flow`` with vnode on a split grid keeps the links in the ghost layout for the
    whole flow (one pack; ghost planes refilled per stage and per measurement): the same
    numbers, bit for bit, as the per-call vnode steps and densities, and single-rank eager's
    to rounding (t, clover and plaquette E, clover Q, the flowed links)."""
    vnode = pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    from kernels.groups.su_n import su_expm
    from kernels.wilson_flow import wilson_flow

    grid, ref_grid = grids
    rng = SiteRNG(5)
    th, ref = SU3Gauge(grid, 6.0), SU3Gauge(ref_grid, 6.0)
    u_ref = su_expm(0.3 * ref.random_momentum(rng, 0, 2))  # smooth: a few flow steps
    u = su_expm(0.3 * th.random_momentum(rng, 0, 2))
    kw = dict(t_max=0.06, eps=0.02, measure_every=2, topology=True, charge_times=(0.02,))
    kb.set_backend("eager")
    want = wilson_flow(u_ref, ref_grid, **kw)
    kb.set_backend("vnode")
    packs = spy(vnode.PackedMD, ("pack_links",))
    res = wilson_flow(u, grid, **kw)
    split = any(g > 1 for g in grid.grid)
    assert len(packs) == (1 if split else 0)
    monkeypatch.setattr(vnode.VnodeBackend, "su3_resident_flow", lambda *a: None)
    per_call = wilson_flow(u, grid, **kw)
    for name in ("t", "e_clover", "e_plaq", "q"):
        a, b, r = (getattr(x, name) for x in (res, per_call, want))
        assert np.array_equal(a, b), name
        err = MPI.COMM_WORLD.allreduce(float(np.abs(a - r).max()), op=MPI.MAX)
        assert err <= 1e-12, (name, err)
    assert np.array_equal(res.q_at[0.02], per_call.q_at[0.02])
    assert torch.equal(res.field, per_call.field)
    check("flowed links", res.field, local(want.field, grid))


@pytest.mark.parametrize("shape", [SHAPE, (16, 2, 4, 8)], ids=["4x2x4x4", "16x2x4x8"])
def test_vnode_resident_trajectory_on_split_grids(grids, shape):
    """An MD trajectory in the resident vnode layout on a split grid (ghost layout, ghost
    planes refilled in the packed layout before every force; 1, 2 and 4 outer planes along
    the split axes, so that with axis 0 split alone the interior computed while the faces
    travel is empty once and not once) ends where single-rank eager ends, links and momenta;
    the resident path is really taken."""
    pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    from kernels.integrators import make_integrator

    grid, ref_grid = grids
    if shape != SHAPE:
        grid = ProcessGrid(shape, grid=tuple(grid.grid))
        ref_grid = single_rank_grid(shape)
    th, ref = SU3Gauge(grid, 5.6), SU3Gauge(ref_grid, 5.6)
    u_ref, u = ref.hot_start(SiteRNG(5), 0, 2), th.hot_start(SiteRNG(5), 0, 2)
    p_ref, p = ref.random_momentum(SiteRNG(6), 0, 2), th.random_momentum(SiteRNG(6), 0, 2)
    kb.set_backend("eager")
    end = make_integrator(ref, "omelyan", 3, 0.6).integrate(u_ref, p_ref)
    kb.set_backend("vnode")
    assert th.resident_md(u, [th.force]) is not None
    res = make_integrator(th, "omelyan", 3, 0.6).integrate(u, p)
    check("links", res.field, local(end.field, grid))
    check("momenta", res.momentum, local(end.momentum, grid))
    assert not res.nonfinite.any()
    assert float((end.field - u_ref).abs().max()) > 0.1  # the trajectory moved


def test_vnode_resident_md_ghosts_are_poisoned_until_the_first_force(grids):
    """:meth:`PackedMD.enter` does not exchange (the first force refills the ghost planes):
    its ghost planes hold NaN, so a kernel that read them before a refill would give a
    non-finite result; after a force they hold the neighbours' links (the density, which
    reads them without refilling, equals single-rank eager)."""
    vnode = pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    grid, ref_grid = grids
    if not any(g > 1 for g in grid.grid):
        pytest.skip("no split axis: no ghost planes")
    th, ref = SU3Gauge(grid, 5.7), SU3Gauge(ref_grid, 5.7)
    u_ref, u = ref.hot_start(SiteRNG(4), 0, 2), th.hot_start(SiteRNG(4), 0, 2)
    p = th.random_momentum(SiteRNG(6), 0, 2)
    kb.set_backend("eager")
    d_ref = eager.EagerBackend().su3_action_density(u_ref, ref_grid, 1.0, 0.0)
    kb.set_backend("vnode")
    md = vnode.PackedMD(2, tuple(u.shape[2:-2]), 5.7 / 6, grid)
    q, _ = md.enter(u, p)
    stale = md.density(q, "plaquette")
    assert bool(torch.isnan(stale).any())  # (a local extent of 2: every site sees a ghost)
    md.force(q)
    check("density after a force", md.density(q, "plaquette"), local(d_ref, grid, 1))


def test_vnode_resident_actions_on_split_grids(grids, spy):
    """On a split grid the integrator's resident actions (``integrate(actions=True)``)
    equal ``theory.action`` of the start and end fields bit for bit, and a trajectory makes
    one ghost exchange per force and none besides: the action at the start fills the ghost
    planes the first force uses, the last force's serve the action at the end."""
    vnode = pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    from kernels.integrators import make_integrator

    grid, _ = grids
    th = SU3Gauge(grid, 5.6)
    u, p = th.hot_start(SiteRNG(8), 0, 2), th.random_momentum(SiteRNG(9), 0, 2)
    kb.set_backend("vnode")
    posts = spy(vnode.PackedMD, ("_post",))
    res = make_integrator(th, "omelyan", 3, 0.6).integrate(u, p, actions=True)
    n_post = len(posts)
    assert res.force_evaluations == [7]
    split = [d for d, g in enumerate(grid.grid) if g > 1]
    assert n_post == 7 * len(split), (n_post, split)
    assert torch.equal(res.initial_action, th.action(u))
    assert torch.equal(res.final_action, th.action(res.field))
    assert float((res.field - u).abs().max()) > 0.1
