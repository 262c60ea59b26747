"""SU(3) NTHMC layers (kernels.flows.nthmc_su3): CNN coefficients over frozen loops.

Exact checks only: ``F^{-1}(F(U)) = U`` to 1e-10 with the iteration counts recorded; the
log-det equals the brute-force ``slogdet`` of the 512x512 autograd Jacobian in algebra
coordinates on 2^4; ``F(g.U) = g.F(U)``; ``sum_k |rho_k| <= rho_max`` for saturated random
networks on several lattices; the coefficients do not depend on the active links (the
triangular structure the log-det formula needs: randomising the active links leaves them
unchanged) while every input channel does depend on the frozen ones; the frozen-loop traces
equal a direct product of the links; a model rebuilt on the doubled lattice gives the same
action per site on the periodically repeated field; the trivialized force equals the
numerical derivative of ``S~``.
"""

from __future__ import annotations

import pytest
import torch

from kernels.flows.base import FlowError, build_flow
from kernels.flows.nthmc_su3 import (
    SU3NeuralLayer,
    frozen_loops,
    inverse_iterations,
    loop_traces,
    su3_nthmc_flow,
)
from kernels.groups import haar_su_n
from kernels.groups.su_n import algebra_to_components, components_to_algebra, dagger, su_expm
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge, gauge_transform
from parallel import single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG

SHAPE = (4, 2, 2, 2)


def _random_flow(grid, n_layers=None, bias=0.5, scale=2.0, **kw):
    """Random (non-identity) weights, scaled up so the coefficients are O(rho_max)."""
    torch.manual_seed(5)
    kw.setdefault("hidden", (3,))
    flow = su3_nthmc_flow(grid, n_layers=n_layers, identity_init=False, **kw)
    with torch.no_grad():
        for layer in flow.layers:
            for p in layer.net.parameters():
                p.mul_(scale)
            layer.net.net[-1].bias.add_(bias)
    return flow


def _hot(grid, batch=2, seed=3):
    return SU3Gauge(grid, 2.0).hot_start(SiteRNG(seed), 0, batch)


def test_identity_init_and_roundtrip_with_iterations():
    grid = single_rank_grid(SHAPE)
    u = _hot(grid)
    with torch.no_grad():
        y0, ld0 = su3_nthmc_flow(grid)(u)
    assert torch.equal(y0, u) and torch.equal(ld0, torch.zeros_like(ld0))
    flow = _random_flow(grid)
    assert len(flow) == 8
    with torch.no_grad():
        y, ld = flow(u)
        x, ldi = flow.inverse(y)
    assert (y - u).abs().max() > 0.1 and ld.abs().min() > 1.0
    assert (x - u).abs().max() < 1e-10
    assert (ld + ldi).abs().max() < 1e-10
    its = inverse_iterations(flow)
    assert len(its) == 8 and all(2 <= i <= 100 for i in its)
    eye = torch.eye(3, dtype=y.dtype)
    assert (y @ dagger(y) - eye).abs().max() < 1e-12
    assert (torch.linalg.det(y) - 1).abs().max() < 1e-12


def test_log_det_equals_bruteforce_slogdet_2x2x2x2():
    """512x512 Jacobian in algebra coordinates ``U -> exp(w T) U`` (as in test_flows_su3)."""
    grid = single_rank_grid((2, 2, 2, 2))
    flow = _random_flow(grid, n_layers=3, hidden=(2,))
    u = _hot(grid, 1, seed=2)
    with torch.no_grad():
        y, ld = flow(u)
    n = 4 * 16 * 8
    w = torch.zeros(n, 4, 2, 2, 2, 2, 8, requires_grad=True)
    out, _ = flow(su_expm(components_to_algebra(w, 3)) @ u)
    comps = algebra_to_components(out @ dagger(y)).reshape(n, n)
    comps.diagonal().sum().backward()
    sign, brute = torch.linalg.slogdet(w.grad.reshape(n, n))
    assert sign == 1
    assert abs(float(brute) - float(ld[0])) < 1e-10 * max(1.0, abs(float(brute)))
    assert abs(float(ld[0])) > 2.0


def test_gauge_equivariance():
    grid = single_rank_grid(SHAPE)
    flow = _random_flow(grid)
    u = _hot(grid, seed=8)
    g = haar_su_n(SiteRNG(11).normal(grid, PURPOSE_USER, 0, 2, trail=(3, 3, 2)))
    with torch.no_grad():
        y, ld = flow(u)
        yg, ldg = flow(gauge_transform(u, g, grid))
    assert (yg - gauge_transform(y, g, grid)).abs().max() < 1e-12
    assert (ldg - ld).abs().max() < 1e-10


@pytest.mark.parametrize("shape", [(2, 2, 2, 2), (4, 2, 2, 2), (2, 4, 4, 2)])
def test_coefficient_bound_for_random_inputs(shape):
    grid = single_rank_grid(shape)
    for seed, bias in ((1, 50.0), (2, -50.0), (3, 0.0)):
        torch.manual_seed(seed)
        layer = SU3NeuralLayer(grid, seed % 4, seed % 2, hidden=(4,), rho_max=0.7)
        with torch.no_grad():
            for p in layer.net.parameters():
                p.mul_(20.0)
            layer.net.net[-1].bias.fill_(bias)
            u = _hot(grid, 3, seed=seed)
            rho = layer.coefficients(u)
        s = rho.abs().sum(1)
        assert rho.shape == (3, 6, grid.volume // 2)
        assert float(s.max()) <= 0.7 + 1e-12
        if bias:
            assert float(s.min()) > 0.69  # saturated: the bound is reached, not exceeded
    with pytest.raises(ValueError, match="rho_max"):
        SU3NeuralLayer(grid, 0, 0, rho_max=1.0)
    with pytest.raises(ValueError, match="multiple of 2"):
        SU3NeuralLayer(single_rank_grid((4, 3, 2, 2)), 0, 0)
    with pytest.raises(ValueError, match="no inputs"):  # 2D: every plaquette holds an active link
        SU3NeuralLayer(single_rank_grid((4, 4)), 0, 0, rectangles=False, staple_features=False)


@pytest.mark.parametrize("mu,parity", [(0, 0), (3, 1)])
def test_coefficients_ignore_active_links_and_see_frozen_ones(mu, parity):
    grid = single_rank_grid((4, 4, 2, 2))
    torch.manual_seed(2)
    layer = SU3NeuralLayer(grid, mu, parity, hidden=(4,), kernel_size=3)
    u = _hot(grid, 1, seed=4)
    other = _hot(grid, 1, seed=5)
    act = layer.active.bool()
    mixed = u.clone()
    mixed[:, mu][:, act] = other[:, mu][:, act]  # new active links only
    with torch.no_grad():
        x, xm = layer.inputs(u), layer.inputs(mixed)
        assert torch.equal(layer.coefficients(u), layer.coefficients(mixed))
        assert torch.equal(layer._context(u)[1], layer._context(mixed)[1])  # C, not U_mu
        # every input channel is non-trivial and changes with the frozen links
        frozen = u.clone()
        frozen[:, (mu + 1) % 4] = other[:, (mu + 1) % 4]
        xf = layer.inputs(frozen)
    assert torch.equal(x, xm)
    assert (x.abs().amax((0, 2, 3, 4, 5)) > 1e-3).all()
    assert (xf - x).abs().max() > 1e-2
    assert layer.n_inputs == 2 * len(frozen_loops(4, mu, True)) + 18 == 42
    # the layer moves its own active links only
    y, _ = layer.forward_local(u)
    moved = (y - u).abs().amax((-1, -2))[0]
    assert (moved[mu][act] > 1e-6).all() and moved[mu][~act].max() == 0
    assert all(moved[d].max() == 0 for d in range(4) if d != mu)


def test_loop_traces_against_direct_products():
    grid = single_rank_grid((4, 2, 4, 2))
    u = _hot(grid, 1, seed=6)[0]

    def link(d, x):
        return u[(d, *[c % n for c, n in zip(x, (4, 2, 4, 2), strict=True)])]

    def step(x, d, k=1):
        y = list(x)
        y[d] += k
        return tuple(y)

    x = (3, 1, 2, 0)
    a, b = 0, 2
    plaq = link(a, x) @ link(b, step(x, a)) @ dagger(link(a, step(x, b))) @ dagger(link(b, x))
    ya = step(x, a)
    rect = (
        link(a, x)
        @ link(a, ya)
        @ link(b, step(ya, a))
        @ dagger(link(a, step(ya, b)))
        @ dagger(link(a, step(x, b)))
        @ dagger(link(b, x))
    )
    for kind, ref in (("plaq", plaq), ("rect", rect)):
        re, im = loop_traces(u[None], grid, kind, a, b)
        tr = torch.trace(ref)
        assert abs(float(re[(0, *x)]) - float(tr.real)) < 1e-13
        assert abs(float(im[(0, *x)]) - float(tr.imag)) < 1e-13


def test_transfer_to_twice_the_lattice_same_action_per_site():
    grid = single_rank_grid(SHAPE)
    flow = _random_flow(grid, n_layers=3)
    again = build_flow(flow.architecture, grid)
    again.load_state_dict(flow.state_dict())
    u = _hot(grid, 1, seed=9)
    big_grid = single_rank_grid((8, 4, 2, 2))
    big = flow.rebuild_for(big_grid)
    ub = u.repeat(1, 1, 2, 2, 1, 1, 1, 1)
    th, thb = SU3Gauge(grid, 5.0), SU3Gauge(big_grid, 5.0)
    with torch.no_grad():
        assert torch.equal(flow(u)[0], again(u)[0])
        s = TransformedTheory(th, flow).action(u)
        sb = TransformedTheory(thb, big).action(ub)
    assert abs(float(sb) / 4 - float(s)) < 1e-10 * abs(float(s))


def test_trivialized_force_equals_numerical_derivative():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0, action="iwasaki")
    tt = TransformedTheory(th, _random_flow(grid, n_layers=4))
    v = th.hot_start(SiteRNG(12), 0, 1)
    f = tt.force(v)
    x = th.random_momentum(SiteRNG(1), 0, 1)
    h = 1e-4
    with torch.no_grad():
        sp, sm = tt.action(su_expm(h * x) @ v), tt.action(su_expm(-h * x) @ v)
        sp2, sm2 = tt.action(su_expm(2 * h * x) @ v), tt.action(su_expm(-2 * h * x) @ v)
    num = (8 * (sp - sm) - (sp2 - sm2)) / (12 * h)
    ana = (algebra_to_components(x) * algebra_to_components(f)).sum((1, 2, 3, 4, 5, 6))
    assert (num - ana).abs().max() < 1e-7 * ana.abs().max()


def test_inverse_cap_is_a_clear_error():
    grid = single_rank_grid(SHAPE)
    flow = _random_flow(grid, n_layers=1, bias=3.0, max_iter=2)
    u = _hot(grid, 1, seed=6)
    with pytest.raises(FlowError, match="did not converge"), torch.no_grad():
        flow.inverse(u)


def test_inverse_gradient_is_the_implicit_derivative():
    """With autograd the inverse takes one implicit Newton step: same value, and
    ``d/dp sum(w . F^{-1}(U))`` equals the central difference of the no-grad inverse."""
    grid = single_rank_grid(SHAPE)
    flow = _random_flow(grid, n_layers=3)
    u = _hot(grid, 1, seed=7)
    probe = torch.randn(u.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = flow.layers[1].net.net[-1].bias
    v, ld = flow.inverse(u)
    with torch.no_grad():
        v0, ld0 = flow.inverse(u)
    assert v.requires_grad and (v - v0).abs().max() < 1e-13
    (g,) = torch.autograd.grad((probe * v.real).sum() + ld.sum(), p)
    h = 1e-6
    vals = []
    for s in (1, -1):
        with torch.no_grad():
            p[2] += s * h
            vs, lds = flow.inverse(u)
            vals.append(float((probe * vs.real).sum() + lds.sum()))
            p[2] -= s * h
    num = (vals[0] - vals[1]) / (2 * h)
    assert abs(num - float(g[2])) < 1e-6 * abs(num) and abs(num) > 1e-3


def test_fused_layer_core_equals_the_torch_core():
    """The layer core runs fused (numba) on CPU when available: field, log-det and the
    trivialized force equal the torch core's (``set_stout_kernel("eager")``)."""
    pytest.importorskip("numba")
    from kernels.flows.su3_fused import set_stout_kernel, uses_fused

    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    flow = _random_flow(grid, n_layers=4)
    v = _hot(grid)
    assert uses_fused(v)
    out = {}
    try:
        for kernel in ("eager", "auto"):
            set_stout_kernel(kernel)
            tt = TransformedTheory(th, flow)
            u, ld = flow.forward(v)
            out[kernel] = (u, ld, tt.force(v))
    finally:
        set_stout_kernel(None)
    for a, b in zip(out["eager"], out["auto"]):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
