"""The virtual-node SU(3) kernels (kernels/backends/vnode.py): layout, dispatch, fallback.

Agreement of every kernel with ``eager`` (1e-13) and the distributed fallback run in
tests/test_backends.py and tests/mpi/test_backends_mpi.py (``vnode`` is a registered
backend); here: the packing is a bijection with the documented site <-> (outer site, lane)
map, the backend takes the vnode path exactly where the lattice fits and agrees with eager
there and on the fallback, the force is the numerical Lie derivative of the vnode action,
and the package imports without numba.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import kernels.backends as kb
from kernels.backends import eager
from kernels.groups.su_n import project_ta, su_expm
from kernels.theories.su3 import SU3Gauge
from kernels.wilson_flow import (
    energy_density,
    plaquette_energy_density,
    topological_charge,
    wilson_flow,
)
from parallel import single_rank_grid
from parallel.rng import SiteRNG

vnode = pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)

TOL = 1e-13


def _links(shape, batch=2, seed=5):
    grid = single_rank_grid(shape)
    return grid, SU3Gauge(grid, 6.0).hot_start(SiteRNG(seed), 0, batch)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def test_site_map_and_pack_roundtrip():
    """Site ``x_d = o_d + h_d b_d`` sits at outer ``o`` (row-major in ``h``), lane
    ``sum_d b_d 2^d``, component ``c`` at ``[o, c W + l]``; unpack inverts pack exactly."""
    shape = (4, 2, 6, 8)
    grid, u = _links(shape)
    q = vnode.pack(u)
    h = [n // 2 for n in shape]
    vo = int(np.prod(h))
    assert q.shape[0] >= 2 * 4 * vo and q.shape[1] == 18 * 16
    rng = np.random.default_rng(0)
    for _ in range(20):
        b, mu, x = rng.integers(2), rng.integers(4), [rng.integers(n) for n in shape]
        o = np.ravel_multi_index([xd % hd for xd, hd in zip(x, h)], h)
        lane = sum((xd // hd) << d for d, (xd, hd) in enumerate(zip(x, h)))
        blk = q[(b * 4 + mu) * vo + o].reshape(18, 16)[:, lane]
        want = torch.view_as_real(u[(b, mu, *x)]).reshape(18).numpy()
        assert np.array_equal(blk, want)
    assert torch.equal(vnode.unpack(q, 2, 4, shape), u)
    assert not u.is_contiguous()  # hot start: strided 3x3 storage, read in place
    assert np.array_equal(vnode.pack(u.contiguous())[: 2 * 4 * vo], q[: 2 * 4 * vo])
    d = np.arange(2 * vo * 16, dtype=np.float64)
    dens = vnode.unpack_density(d, 2, shape)
    assert sorted(dens.reshape(-1).tolist()) == d.tolist()


@pytest.mark.parametrize("split", [(0,), (1, 3), (0, 1, 2, 3)])
def test_ghost_layout_pack_and_tables(split):
    """``pack(sites=GhostLayout.site)`` keeps every owned site where the unsplit layout has it,
    zero on the ghost rows, and ``unpack`` returns the links exactly. The ghost layout's
    neighbour tables, followed from an owned site (one hop, and the two-hop corners of the
    stencils), reach the lattice neighbour: an owned site (lane permuted by the mask) when
    it is inside the block, else a ghost site whose lane holds that neighbour by the rule
    of :class:`GhostLayout` (checked here against coordinates)."""
    shape = (4, 2, 6, 2)
    grid, u = _links(shape)
    lay = vnode.GhostLayout(shape, split)
    q = vnode.pack(u, sites=lay.site, out=np.empty((lay.nrows(2), vnode.LB)))
    ref = vnode.pack(u)
    vo, vs = lay.vo, lay.vs
    assert vo == int(np.prod(shape)) // 16 and vs > vo
    blocks = q[: 2 * 4 * vs].reshape(8, vs, -1)
    assert np.array_equal(blocks[:, :vo], ref[: 8 * vo].reshape(8, vo, -1))
    assert not blocks[:, vo:].any()
    assert torch.equal(vnode.unpack(q, 2, 4, shape, lay.site), u)
    nbr0, msk0 = vnode.tables(shape)
    h = np.array(shape) // 2
    # coordinates of (outer site, lane) of the extended layout, ghosts included
    lo = np.array([-1 if d in split else 0 for d in range(4)])
    ext = tuple(int(h[d] + 2 * (d in split)) for d in range(4))
    oc = np.stack(np.unravel_index(np.arange(int(np.prod(ext))), ext), 1) + lo
    owned = np.all((oc >= 0) & (oc < h), 1)
    oc = oc[np.concatenate([np.flatnonzero(owned), np.flatnonzero(~owned)])]
    bits = (np.arange(16)[:, None] >> np.arange(4)[None, :]) & 1

    def site(o, lane):  # the lattice coordinates that (o, lane) stands for (ghost rule)
        return oc[o] + bits[lane] * h

    for d in range(4):
        for s, step in enumerate((1, -1)):
            if d not in split:
                assert np.array_equal(lay.nbr[:vo, d, s], nbr0[:, d, s])
                assert np.array_equal(lay.msk[:vo, d, s], msk0[:, d, s])
            for o in range(vo):
                for lane in range(16):
                    want = site(o, lane)
                    want[d] += step
                    if d not in split:
                        want[d] %= shape[d]
                    o2, m2 = lay.nbr[o, d, s], lay.msk[o, d, s]
                    assert np.array_equal(site(o2, lane ^ m2), want)
                    for e in range(4):  # a second hop along another axis (staple corners)
                        if e == d:
                            continue
                        for t, st in enumerate((1, -1)):
                            w2 = want.copy()
                            w2[e] += st
                            if e not in split:
                                w2[e] %= shape[e]
                            o3 = lay.nbr[o2, e, t]
                            m3 = m2 ^ lay.msk[o2, e, t]
                            assert np.array_equal(site(o3, lane ^ m3), w2)


def test_half_lanes_are_the_lanes_with_the_bit():
    """``half_lanes(a, d, bit)``: the lanes of each component whose bit ``d`` is ``bit``, in
    increasing lane order (a view)."""
    a = np.arange(2 * vnode.LB, dtype=float).reshape(2, vnode.LB)
    lanes = np.arange(vnode.W)
    for d in range(4):
        for bit in (0, 1):
            h = vnode.half_lanes(a, d, bit)
            assert h.base is not None and h.shape[:2] == (2, 18)
            keep = lanes[((lanes >> d) & 1) == bit]
            want = a.reshape(2, 18, vnode.W)[:, :, keep]
            np.testing.assert_array_equal(h.reshape(2, 18, vnode.W // 2), want)


def test_ghost_fill_takes_each_lane_from_its_source():
    """``ghost_fill`` (one generated body per lane bit and side) against its definition:
    lane ``l`` of a ghost block is lane ``l ^ m`` of the owned block next to it where bit
    ``m`` of ``l`` equals ``own_if_set``, else of the neighbour's block, of which only the
    used half of the lanes arrives (``half_lanes``); on strided arrays as ``PackedMD``
    passes them (a column slice of the link blocks); a mask of two bits is refused."""
    rng = np.random.default_rng(2)
    own = rng.standard_normal((6, 5, vnode.LB))[::2]
    full = rng.standard_normal((3, 5, vnode.LB))  # the neighbour rank's plane
    lanes = np.arange(vnode.W)
    for d, m in enumerate((1, 2, 4, 8)):
        for own_if_set in (False, True):
            remote = np.ascontiguousarray(vnode.half_lanes(full, d, int(own_if_set)))
            remote = remote.reshape(3, 5, vnode.LB // 2)
            g = np.zeros((3, 5, vnode.LB))
            vnode.kernels().ghost_fill(g, own, remote, m, own_if_set)
            src = np.where(((lanes & m) != 0) == own_if_set, 0, 1)  # 0: own, 1: remote
            both = np.stack([own, full]).reshape(2, 3, 5, 18, vnode.W)
            want = both[src, :, :, :, lanes ^ m]  # (W, 3, 5, 18)
            np.testing.assert_array_equal(g.reshape(3, 5, 18, vnode.W), want.transpose(1, 2, 3, 0))
    with pytest.raises(ValueError, match="single lane bit"):
        vnode.kernels().ghost_fill(g, own, remote, 3, True)


def test_neighbour_tables_are_the_lattice_shift():
    """``nbr``/``msk`` move every (outer site, lane) to the site ``x +- e_d`` (periodic)."""
    shape = (2, 4, 6, 4)
    site = vnode.site_table(shape)
    nbr, msk = vnode.tables(shape)
    coords = np.stack(np.unravel_index(site, shape), -1)  # (vo, W, 4)
    for d in range(4):
        for s, step in enumerate((1, -1)):
            want = coords.copy()
            want[..., d] = (want[..., d] + step) % shape[d]
            lanes = np.arange(16)[None, :] ^ msk[:, d, s][:, None]
            got = coords[nbr[:, d, s][:, None], lanes]
            assert np.array_equal(got, want), (d, step)


@pytest.mark.parametrize(
    "local, grid_dims, ok",
    [
        ((4, 4, 2, 6), (1, 1, 1, 1), True),
        ((8, 8, 8, 8), (1, 1, 1, 1), True),
        ((3, 4, 4, 4), (1, 1, 1, 1), False),  # odd extent
        ((4, 4, 4, 4), (1, 1, 1, 2), False),  # split axis
        ((4, 4), (1, 1), False),  # not 4D
    ],
)
def test_fits(local, grid_dims, ok):
    assert vnode.fits(local, grid_dims) is ok


@pytest.mark.parametrize("shape, used", [((4, 4, 2, 6), True), ((3, 4, 2, 2), False)])
def test_backend_dispatch_and_fallback(spy, shape, used):
    """The vnode kernels run where the lattice fits and not elsewhere; both agree with eager
    (force, staples, flow generator, action density, action)."""
    grid, u = _links(shape, batch=3)
    calls = spy(vnode, ("su3_ta_staples", "su3_plaquette_density", "expm_mul"))
    b = kb.make_backend("vnode")
    assert _err(b.su3_force(u, grid, 5.5, 1.0, 0.0), eager.gauge_force(u, grid, 5.5)) <= TOL
    assert _err(b.su3_staple_sum(u, grid, 1.0, 0.0), eager.staple_sum(u, grid, 1.0, 0.0)) <= TOL
    assert _err(b.su3_flow_generator(u, grid), eager.flow_generator(u, grid)) <= TOL
    dens = eager.su3_action_density(u, grid, 1.0, 0.0)
    assert _err(b.su3_action_density(u, grid, 1.0, 0.0), dens) <= TOL
    s_ref = eager.su3_action_local(u, grid, 1.0, 0.0)
    assert _err(b.su3_action_local(u, grid, 1.0, 0.0), s_ref) <= TOL
    x = 0.3 * SU3Gauge(grid, 6.0).random_momentum(SiteRNG(2), 0, 3)
    assert _err(b.su3_expm_mul(x, u), su_expm(x) @ u) <= TOL
    assert len(calls) == (6 if used else 0)  # 5 SU(3) kernels, 1 exponential


@pytest.mark.parametrize("shape, used", [((4, 4, 2, 6), True), ((3, 4, 2, 2), False)])
def test_clover_densities_match_eager(spy, shape, used):
    """The vnode clover kernel (four leaves per plane, G = TA(sum) / 4) gives the eager
    ``clover_field_strength`` energy density and charge density; the Wilson-flow
    observables through the backend seam follow."""
    grid, u = _links(shape, batch=3, seed=5)
    calls = spy(vnode, ("su3_clover_density",))
    b, e = kb.make_backend("vnode"), kb.make_backend("eager")
    for what in ("su3_clover_density", "su3_clover_charge_density"):
        assert _err(getattr(b, what)(u, grid), getattr(e, what)(u, grid)) <= TOL, what
    assert len(calls) == (2 if used else 0)
    refs = [f(u, grid) for f in (energy_density, plaquette_energy_density)]
    kb.set_backend("vnode")
    try:
        got = [f(u, grid) for f in (energy_density, plaquette_energy_density)]
    finally:
        kb.set_backend("eager")
    for g, r in zip(got, refs, strict=True):
        assert _err(g, r) <= TOL
    kb.set_backend("vnode")
    try:
        q = topological_charge(u, grid)
    finally:
        kb.set_backend("eager")
    assert _err(q, topological_charge(u, grid)) <= TOL


def test_force_is_the_lie_derivative_of_the_vnode_action():
    """``d/dt S(exp(tX) U) = -2 Re Tr(X F)`` with S and F both from the vnode kernels."""
    grid, u = _links((2, 4, 2, 2), batch=2, seed=7)
    th = SU3Gauge(grid, 5.8)
    kb.set_backend("vnode")
    try:
        f = th.force(u)
        x = th.random_momentum(SiteRNG(9), 0, 2)

        def d(h):
            return (th.action(su_expm(h * x) @ u) - th.action(su_expm(-h * x) @ u)) / (2 * h)

        num = (4 * d(5e-4) - d(1e-3)) / 3
    finally:
        kb.set_backend("eager")
    ana = -2 * torch.einsum("b...ij,b...ji->b", x, f).real
    assert torch.allclose(num, ana, rtol=1e-8, atol=1e-8)


def test_action_backward_is_the_analytic_force():
    """The vnode action's autograd (custom Function, backward = vnode staples) equals eager's
    gradient; a second derivative (create_graph) goes through eager."""
    grid, u = _links((2, 2, 4, 2), batch=2, seed=4)
    th = SU3Gauge(grid, 5.7)
    w = torch.randn(u.shape, dtype=u.dtype, generator=torch.Generator().manual_seed(1))
    out = {}
    for which in ("eager", "vnode"):
        kb.set_backend(which)
        x = u.clone().requires_grad_(True)
        (g0,) = torch.autograd.grad(th.action(x).sum(), x)  # backward: vnode staples
        (g,) = torch.autograd.grad(th.action(x).sum(), x, create_graph=True)
        (hh,) = torch.autograd.grad((g.real * w.real + g.imag * w.imag).sum(), x)
        out[which] = (g0, g.detach(), hh)
    kb.set_backend("eager")
    for a, b in zip(out["vnode"], out["eager"]):
        assert _err(a, b) <= TOL


def test_import_without_numba():
    """Without numba the package, the eager path and the backend registry still work; the
    numba and vnode backends are reported unavailable with the reason."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import kernels.backends as kb\n"
        "from kernels.theories.su3 import SU3Gauge\n"
        "from parallel import single_rank_grid\n"
        "from parallel.rng import SiteRNG\n"
        "assert 'vnode' not in kb.available_backends() and 'numba' not in kb.available_backends()\n"
        "try:\n"
        "    kb.set_backend('vnode')\n"
        "except kb.BackendError as e:\n"
        "    assert 'optional dependency' in str(e)\n"
        "else:\n"
        "    raise SystemExit('vnode selected without numba')\n"
        "th = SU3Gauge(single_rank_grid((2, 2, 2, 2)), 6.0)\n"
        "u = th.hot_start(SiteRNG(1), 0, 1)\n"
        "assert th.force(u).shape == u.shape\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("eps", [0.1, 3.0])  # 3.0: |eps P| > 1 in every lane: squarings
def test_packed_exponential(eps):
    """``exp(X) V`` per link and lane in the vnode layout equals eager's ``su_expm(X) V``."""
    shape = (2, 4, 2, 2)
    grid, u = _links(shape, batch=2, seed=6)
    x = eps * SU3Gauge(grid, 6.0).random_momentum(SiteRNG(4), 1, 2)
    n = 2 * 4 * int(np.prod(shape)) // vnode.W
    w = vnode.expm_mul_packed(np.ascontiguousarray(vnode.pack(x)[:n]), vnode.pack(u), 2, shape)
    assert _err(vnode.unpack(w, 2, 4, shape), su_expm(x) @ u) <= TOL


def test_packed_outputs_in_place_and_overlap_refused():
    """``exp(X) V`` into a given output equals the fresh array and refuses an output that
    overlaps ``V`` or ``X``; the RK3 step with a spare buffer (what ``PackedFlow.step`` does:
    the input links are overwritten) equals the step into a new array, and both equal
    eager's."""
    shape = (2, 4, 2, 2)
    grid, u = _links(shape, batch=2, seed=7)
    x = 0.3 * SU3Gauge(grid, 6.0).random_momentum(SiteRNG(2), 1, 2)
    n = 2 * 4 * int(np.prod(shape)) // vnode.W
    px, pu = np.ascontiguousarray(vnode.pack(x)[:n]), vnode.pack(u)
    w = vnode.expm_mul_packed(px, pu, 2, shape)
    out = vnode.empty_packed(2, shape)
    assert vnode.expm_mul_packed(px, pu, 2, shape, out=out) is out
    np.testing.assert_array_equal(out[:n], w[:n])
    with pytest.raises(ValueError, match="overlap"):
        vnode.expm_mul_packed(px, pu, 2, shape, out=pu)
    qx = vnode.pack(x)
    with pytest.raises(ValueError, match="overlap"):
        vnode.expm_mul_packed(qx[:n], pu, 2, shape, out=qx)
    keep = pu.copy()
    fresh = vnode.flow_step_rk3_packed(pu, 2, shape, 0.05)
    np.testing.assert_array_equal(pu[:n], keep[:n])  # without spare: the links left alone
    q, spare = pu.copy(), vnode.empty_packed(2, shape)
    assert vnode.flow_step_rk3_packed(q, 2, shape, 0.05, spare=spare) is spare
    np.testing.assert_array_equal(spare[:n], fresh[:n])
    assert _err(vnode.unpack(spare, 2, 4, shape), eager.flow_step_rk3(u, grid, 0.05)) <= TOL
    with pytest.raises(ValueError, match="overlap"):
        vnode.flow_step_rk3_packed(q, 2, shape, 0.05, spare=q)


def test_cayley_hamilton_exponential_of_su3_matrices():
    """The kernel's ``exp(A) = f0 + f1 A + f2 A^2`` (Cayley-Hamilton for ``A`` in su(3), the
    coefficients' Taylor series in real arithmetic, scaling and squaring) equals torch's
    ``matrix_exp``: traceless anti-Hermitian matrices over six decades of norm, a degenerate
    spectrum (the coefficients are not unique there), zero, and lanes of one block with very
    different norms (one order and one squaring count per block)."""
    shape = (2, 2, 2, 2)
    grid, u = _links(shape, batch=1, seed=8)
    gen = torch.Generator().manual_seed(3)
    x = project_ta(torch.randn(u.shape, dtype=u.dtype, generator=gen))
    deg = torch.zeros_like(x)
    deg[..., 0, 0] = deg[..., 1, 1] = 0.7j
    deg[..., 2, 2] = -1.4j
    mixed = x * torch.logspace(-8, 1, 16, dtype=torch.float64).reshape(1, 1, 2, 2, 2, 2, 1, 1)
    for a in [1e-6 * x, 0.3 * x, x, 4.0 * x, 0.0 * x, deg, deg + 0.1 * x, mixed]:
        ref = torch.linalg.matrix_exp(a) @ u
        assert _err(vnode.expm_mul(a, u), ref) <= TOL, float(a.abs().max())


@pytest.mark.parametrize("norm", [0.06, 0.0625, 0.07, 0.25, 0.26, 0.5, 0.51, 0.99, 1.0])
def test_exponential_series_order_per_norm(norm):
    """The Taylor order of the coefficient series is chosen per block from the lanes' largest
    ``|A|_F`` (``vnode._CH_ORDERS``): at, below and above each bound the product equals
    ``matrix_exp``; a bound too generous for its order (e.g. order 10 at norm 0.99: a
    truncation error of 2e-8) would fail here."""
    shape = (2, 2, 2, 2)
    grid, u = _links(shape, batch=1, seed=9)
    x = project_ta(torch.randn(u.shape, dtype=u.dtype, generator=torch.Generator().manual_seed(5)))
    a = norm * x / torch.linalg.matrix_norm(x)[..., None, None]  # every link at |A|_F = norm
    assert _err(vnode.expm_mul(a, u), torch.linalg.matrix_exp(a) @ u) <= TOL


def test_deck_selects_vnode():
    """``parallel.kernels: vnode`` in a deck makes vnode the active backend."""
    from app.deck import loads_deck
    from app.setup import select_kernels

    deck = loads_deck(
        "theory: {name: u1, beta: 2.0}\nlattice: {shape: [4, 4]}\n"
        "parallel: {kernels: vnode}\n"
        "sampler: {name: hmc, levels: [{terms: [gauge], steps: 3, integrator: leapfrog}]}\n"
        "run: {seed: 1, trajectories: 2, thermalization: 0}\noutput: {directory: runs/x}\n"
    )
    try:
        select_kernels(deck)
        assert kb.get_backend().name == "vnode"
    finally:
        kb.set_backend("eager")


def test_u1_runs_the_numba_kernels():
    """vnode has no U(1) layout of its own: its U(1) density and force are the numba backend's
    (vectorised ``sin``/``cos``, kernels/backends/u1_kernels.py), bit for bit, autograd too."""
    from kernels.theories.u1 import U1Gauge

    grid = single_rank_grid((8, 6))
    th = U1Gauge(grid, 2.5)
    theta = th.hot_start(SiteRNG(4), 0, 3)
    vn = kb.make_backend("vnode")
    ref = kb.make_backend("numba")
    assert torch.equal(
        vn.u1_force(theta, grid, th.planes, 2.5), ref.u1_force(theta, grid, th.planes, 2.5)
    )
    t = theta.clone().requires_grad_(True)
    d = vn.u1_action_density(t, grid, th.planes)
    assert torch.equal(d, ref.u1_action_density(theta, grid, th.planes))
    (g,) = torch.autograd.grad(d.sum(), t)
    torch.testing.assert_close(2.5 * g, ref.u1_force(theta, grid, th.planes, 2.5))


def _integrate(theory, u, p, integ=None):
    from kernels.integrators import make_integrator

    integ = integ or make_integrator(theory, "omelyan", 3, 0.6)
    return integ.integrate(u, p)


def test_trajectory_in_the_resident_layout_equals_eager(monkeypatch, spy):
    """An MD trajectory with links and momenta kept in the vnode layout (``PackedMD``: one
    pack and one unpack per trajectory) ends where eager's does and where vnode's per-call
    path (pack and unpack per force and drift) does; the integrator really took the
    resident path (the per-call kernels were not used), counted its forces, and its inputs
    are unchanged."""
    from kernels.integrators import make_integrator

    shape = (4, 2, 4, 2)
    grid, u = _links(shape, batch=2, seed=11)
    th = SU3Gauge(grid, 5.6)
    p = th.random_momentum(SiteRNG(3), 0, 2)
    u0, p0 = u.clone(), p.clone()
    ref = _integrate(th, u, p)  # eager
    kb.set_backend("vnode")
    try:
        assert isinstance(th.resident_md(u, [th.force]), vnode.PackedMD)
        integ = make_integrator(th, "omelyan", 3, 0.6)
        calls = spy(vnode, ("su3_ta_staples", "expm_mul", "pack", "unpack"))
        res = _integrate(th, u, p, integ)
        assert sorted(calls) == ["pack", "pack", "unpack", "unpack"]  # no per-call kernels
        monkeypatch.undo()
        th_call = SU3Gauge(grid, 5.6)
        th_call.resident_md = lambda field, forces: None  # the per-call vnode path
        per_call = _integrate(th_call, u, p)
    finally:
        kb.set_backend("eager")
    assert torch.equal(u, u0) and torch.equal(p, p0)
    assert res.force_evaluations == ref.force_evaluations == [7]
    for a in (ref, per_call):
        assert _err(res.field, a.field) <= 1e-12
        assert _err(res.momentum, a.momentum) <= 1e-12
    assert not res.nonfinite.any()
    # the same integrator again (fresh buffers per trajectory) and a scheme with more drifts
    kb.set_backend("vnode")
    try:
        again = _integrate(th, u, p, integ)
        fr_res = _integrate(th, u, p, make_integrator(th, "forest_ruth", 2, 0.6))
    finally:
        kb.set_backend("eager")
    assert torch.equal(again.field, res.field) and torch.equal(again.momentum, res.momentum)
    fr_ref = _integrate(th, u, p, make_integrator(th, "forest_ruth", 2, 0.6))
    assert _err(fr_res.field, fr_ref.field) <= 1e-12
    assert _err(fr_res.momentum, fr_ref.momentum) <= 1e-12
    # a trajectory that moved: the test compares something
    assert float((res.field - u).abs().max()) > 0.1


def test_resident_layout_only_where_it_is_the_same_dynamics():
    """No resident layout on eager, for a level force that is not the theory's, for the
    improved action (vnode kernels are Wilson only) or with an autograd graph on the links;
    a NaN link marks its chain (and only it) non-finite in the resident layout."""
    shape = (2, 2, 4, 2)
    grid, u = _links(shape, batch=2, seed=12)
    th = SU3Gauge(grid, 5.6)
    assert th.resident_md(u, [th.force]) is None  # eager
    kb.set_backend("vnode")
    try:
        assert th.resident_md(u, [th.force]) is not None
        assert th.resident_md(u, [th.action_terms()[0].force]) is not None
        assert th.resident_md(u, [lambda f: th.force(f)]) is None
        assert SU3Gauge(grid, 5.6, action="symanzik").resident_md(u, [th.force]) is None
        assert th.resident_md(u.clone().requires_grad_(), [th.force]) is None
        bad = u.clone()
        bad[1, 2, 0, 1, 0, 1] = float("nan")
        res = _integrate(th, bad, th.random_momentum(SiteRNG(3), 0, 2))
    finally:
        kb.set_backend("eager")
    assert res.nonfinite.tolist() == [False, True]


def test_resident_flow_is_the_per_call_flow(monkeypatch, spy):
    """``wilson_flow`` on the vnode backend keeps the links packed for the whole flow
    (``PackedFlow``: one pack) and measures from the packed links: the same numbers, bit for
    bit, as the per-call vnode path, and eager's to rounding."""
    grid, u = _links((4, 4, 2, 6), batch=2, seed=8)
    u = su_expm(0.2 * SU3Gauge(grid, 6.0).random_momentum(SiteRNG(4), 0, 2)) @ u[:, :, :1, :1]
    u = u.expand(-1, -1, 4, 4, 2, 6, -1, -1).contiguous()  # smoother: a few flow steps
    kw = dict(t_max=0.06, eps=0.02, measure_every=2, topology=True, charge_times=(0.02,))
    kb.set_backend("vnode")
    try:
        calls = spy(vnode, ("pack",))
        res = wilson_flow(u, **({"grid": grid} | kw))
        assert len(calls) == 1  # once for the whole flow
        monkeypatch.setattr(vnode.VnodeBackend, "su3_resident_flow", lambda *a: None)
        per_call = wilson_flow(u, **({"grid": grid} | kw))
    finally:
        kb.set_backend("eager")
    ref = wilson_flow(u, **({"grid": grid} | kw))
    for name in ("t", "e_clover", "e_plaq", "q"):
        a, b, r = (getattr(x, name) for x in (res, per_call, ref))
        assert np.array_equal(a, b), name
        assert np.allclose(a, r, rtol=1e-12, atol=1e-12), name
    assert res.q_at.keys() == per_call.q_at.keys() == {0.02}
    assert np.array_equal(res.q_at[0.02], per_call.q_at[0.02])
    assert torch.equal(res.field, per_call.field)
    assert _err(res.field, ref.field) <= 1e-12


def test_hmc_takes_the_hamiltonians_actions_from_the_resident_layout(spy):
    """HMC on vnode takes S(start) and S(end) from the resident links (``PackedMD.action``;
    no pack of the links for them) and its records and fields are bit for bit those of HMC
    that computes both with ``theory.action`` (resident layout without actions), and the
    actions equal ``theory.action`` of the fields exactly."""
    from kernels.integrators import make_integrator
    from kernels.samplers.hmc import HMC

    grid, u = _links((4, 2, 4, 2), batch=2, seed=12)
    kb.set_backend("vnode")
    try:
        runs = []
        for with_actions in (True, False):
            th = SU3Gauge(grid, 5.6)
            if not with_actions:
                plain = th.resident_md

                def no_actions(field, forces, _plain=plain):
                    md = _plain(field, forces)
                    md.action_of_density = None
                    return md

                th.resident_md = no_actions
            hmc = HMC(th, make_integrator(th, "omelyan", 3, 0.6), SiteRNG(7))
            calls = spy(vnode, ("pack",))
            x, recs = u, []
            for k in range(3):
                x, rec = hmc.trajectory(x, k)
                recs.append(rec)
            runs.append((x, recs, len(calls)))
            if with_actions:
                res = hmc.integrator.integrate(
                    u, th.random_momentum(SiteRNG(1), 0, 2), actions=True
                )
                assert torch.equal(res.initial_action, th.action(u))
                assert torch.equal(res.final_action, th.action(res.field))
    finally:
        kb.set_backend("eager")
    (x1, r1, packs1), (x2, r2, packs2) = runs
    assert torch.equal(x1, x2)
    for a, b in zip(r1, r2, strict=True):
        assert torch.equal(a.dH, b.dH) and torch.equal(a.action, b.action)
        assert torch.equal(a.accepted, b.accepted)
    assert any(bool(r.accepted.any()) for r in r1) and float((x1 - u).abs().max()) > 0.1
    # per trajectory: links and momenta packed once each; the per-call actions pack twice more
    assert (packs1, packs2) == (3 * 2, 3 * 4)


def test_fused_kick_is_the_kick_and_the_integrator_uses_it(monkeypatch):
    """``PackedMD.kick`` (the force kernel writing ``(-h coef) TA(U A) + pi`` into the
    momenta) is ``pi - h F`` to rounding; the one-level integrator on vnode kicks through it
    once per force evaluation (the kicks at a step boundary merged, no stored force) and
    ends where the stored-force path ends."""
    from kernels.integrators import make_integrator

    grid, u = _links((4, 2, 4, 2), batch=2, seed=13)
    th = SU3Gauge(grid, 5.6)
    p = th.random_momentum(SiteRNG(4), 0, 2)
    kb.set_backend("vnode")
    try:
        md = th.resident_md(u, [th.force])
        phi, pi = md.enter(u, p)
        pi0 = pi.clone()
        ref = pi0.clone().sub_(md.force(phi), alpha=0.37)
        got = md.kick(phi, pi, 0.37)
        assert got is pi and _err(got, ref) <= 1e-15 and float((ref - pi0).abs().max()) > 0.1
        kicks = []
        plain = vnode.PackedMD.kick
        monkeypatch.setattr(vnode.PackedMD, "kick", lambda s, *a: kicks.append(1) or plain(s, *a))
        fused = make_integrator(th, "omelyan", 3, 0.6).integrate(u, p)
        monkeypatch.undo()
        monkeypatch.setattr(vnode.PackedMD, "kick", None)  # the stored-force path
        stored = make_integrator(th, "omelyan", 3, 0.6).integrate(u, p)
    finally:
        kb.set_backend("eager")
    assert len(kicks) == 7 and fused.force_evaluations == stored.force_evaluations == [7]
    assert _err(fused.field, stored.field) <= 1e-13
    assert _err(fused.momentum, stored.momentum) <= 1e-13


_INFINITE_EXPONENT = r"""
import json
import torch
import kernels.backends as kb
from kernels.integrators import make_integrator
from kernels.theories.su3 import SU3Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

grid = single_rank_grid((4, 2, 4, 2))
th = SU3Gauge(grid, 5.6)
u = th.hot_start(SiteRNG(5), 0, 2)
x = 0.3 * th.random_momentum(SiteRNG(6), 0, 2)
bad = x.clone()
bad[1, 2, 0, 1, 3, 0, 0, 1] = complex(float("inf"), 0.0)
out = {}
for name in ("numba", "vnode"):
    be = kb.make_backend(name)
    good, got = be.su3_expm_mul(x, u), be.su3_expm_mul(bad, u)
    out[name] = [
        bool(torch.isfinite(got[0]).all()),
        bool(torch.isfinite(got[1]).all()),
        bool(torch.equal(got[0], good[0])),
    ]
kb.set_backend("vnode")
p = th.random_momentum(SiteRNG(3), 0, 2)
p[1, 0, 1, 0, 0, 0, 0, 1] = complex(float("inf"), 0.0)
res = make_integrator(th, "omelyan", 2, 0.5).integrate(u, p)
out["hmc"] = res.nonfinite.tolist()
print(json.dumps(out))
"""


def test_an_infinite_exponent_ends_non_finite_instead_of_hanging():
    """``exp(X) V`` with an infinite entry in ``X`` (an overflowed force kicked into the
    momenta) returns non-finite links for that chain alone (the numba and vnode kernels:
    their scaling loop halved the norm until it was at most 1, forever for an infinite
    one), and an HMC trajectory on vnode with an infinite momentum flags only its chain. In
    a subprocess with a timeout, so that a hang fails."""
    run = subprocess.run(
        [sys.executable, "-c", _INFINITE_EXPONENT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {
        "numba": [True, False, True],
        "vnode": [True, False, True],
        "hmc": [False, True],
    }
