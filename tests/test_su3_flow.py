"""Wilson flow, clover E(t), t0 and the clover topological charge on one rank.

Exact checks: unit and pure-gauge fields do not flow; a constant abelian field (a classical
solution) does not flow and has closed-form clover E, plaquette E and Q (-> integer flux
products); RK3 converges at third order and Lie-Euler at first order to the same flow; the
Wilson action falls at the rate ``dS/dt = -2 sum |F|^2`` the flow equation prescribes; the
flow is gauge covariant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_su3 import _random_gauge, flux_field

from kernels.groups import su_expm
from kernels.theories.su3 import SU3Gauge, gauge_force, gauge_transform
from kernels.wilson_flow import (
    energy_density,
    flow_step_euler,
    flow_step_rk3,
    plaquette_energy_density,
    t0_from_flow,
    topological_charge,
    wilson_flow,
)
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def _smooth(grid, batch=1, amp=0.5, seed=3):
    """exp(amp X) with Gaussian algebra X per link: a field close to unity."""
    th = SU3Gauge(grid, 6.0)
    x = th.random_momentum(SiteRNG(seed), 0, batch)
    return su_expm(amp * x) @ th.cold_start(batch)


def _flow(u, grid, eps, t, step):
    with torch.no_grad():
        for _ in range(int(round(t / eps))):
            u = step(u, grid, eps)
    return u


def test_unit_and_pure_gauge_fields_do_not_flow():
    grid = single_rank_grid((4, 2, 2, 2))
    th = SU3Gauge(grid, 6.0)
    cold = th.cold_start(2)
    res = wilson_flow(cold, grid, 0.2, 0.05, topology=True)
    assert np.all(res.e_clover == 0) and np.all(res.e_plaq == 0) and np.all(res.q == 0)
    assert torch.allclose(res.field, cold, atol=1e-15)
    pure = gauge_transform(cold, _random_gauge(grid, 2), grid)
    res = wilson_flow(pure, grid, 0.2, 0.05, topology=True)
    assert np.abs(res.e_clover).max() < 1e-26 and np.abs(res.e_plaq).max() < 1e-12
    assert np.abs(res.q).max() < 1e-14
    assert torch.allclose(res.field, pure, atol=1e-13)


def _flux_expectations(vol, ph):
    """Clover E, plaquette E and clover Q of a constant abelian field with plaquette phases
    ``ph[(a, b)]`` (per colour): G_ab = i (sin(phi) - mean_c sin(phi)) (traceless part)."""
    g = {p: np.sin(v) - np.sin(v).mean() for p, v in ph.items()}
    e_clover = sum(float((x * x).sum()) for x in g.values())
    e_plaq = 2 * sum(float((1 - np.cos(v)).sum()) for v in ph.values())
    zero = np.zeros(3)
    # Q = -(V/4pi^2) tr(G01 G23 + G02 G31 + G03 G12), tr(iA iB) = -sum_c a_c b_c
    q = (vol / (4 * math.pi**2)) * (
        float((g.get((0, 1), zero) * g.get((2, 3), zero)).sum())
        - float((g.get((0, 2), zero) * g.get((1, 3), zero)).sum())
        + float((g.get((0, 3), zero) * g.get((1, 2), zero)).sum())
    )
    return e_clover, e_plaq, q


@pytest.mark.parametrize(
    "fluxes",
    [
        {(0, 1): (1, (1, -1, 0)), (2, 3): (1, (1, 0, -1))},  # Q -> 1
        {(0, 1): (-1, (1, -1, 0)), (2, 3): (1, (1, 0, -1))},  # Q -> -1
        {(0, 2): (1, (1, -1, 0)), (1, 3): (2, (1, -1, 0))},  # Q -> -(1*2 + 1*2) = -4
        {(0, 1): (2, (2, -1, -1))},  # instanton-free: Q = 0
    ],
)
def test_constant_abelian_field_clover_quantities(fluxes):
    shape = (6, 6, 6, 6)
    u, ph = flux_field(shape, fluxes)
    grid = single_rank_grid(shape)
    vol = int(np.prod(shape))
    e_c, e_p, q = _flux_expectations(vol, ph)
    assert math.isclose(float(energy_density(u, grid)[0]), e_c, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(float(plaquette_energy_density(u, grid)[0]), e_p, rel_tol=1e-12)
    assert math.isclose(float(topological_charge(u, grid)[0]), q, rel_tol=1e-12, abs_tol=1e-13)
    # continuum normalisation: Q = sum_c n_ab,c n_cd,c up to O(a^2) (here within 5%)
    charges = {p: n * np.asarray(qc) for p, (n, qc) in fluxes.items()}
    zero = np.zeros(3)
    q_int = (
        (charges.get((0, 1), zero) * charges.get((2, 3), zero)).sum()
        - (charges.get((0, 2), zero) * charges.get((1, 3), zero)).sum()
        + (charges.get((0, 3), zero) * charges.get((1, 2), zero)).sum()
    )
    assert abs(float(topological_charge(u, grid)[0]) - q_int) < 0.05 * max(1, abs(q_int))


def test_constant_abelian_field_is_a_fixed_point_of_the_flow():
    shape = (4, 4, 2, 6)
    u, _ = flux_field(shape, {(0, 1): (1, (1, -1, 0)), (2, 3): (1, (0, 1, -1))})
    grid = single_rank_grid(shape)
    res = wilson_flow(u, grid, 0.3, 0.1)
    assert torch.allclose(res.field, u, atol=1e-13)
    assert np.allclose(res.e_clover, res.e_clover[0], rtol=1e-12)


def test_rk3_is_third_order_and_euler_first_order():
    grid = single_rank_grid((4, 2, 2, 2))
    u = _smooth(grid)
    t = 0.2

    def ratio(step, eps):
        v1, v2, v3 = (_flow(u, grid, e, t, step) for e in (eps, eps / 2, eps / 4))
        d1 = float((v1 - v2).abs().max())
        d2 = float((v2 - v3).abs().max())
        return d1 / d2, v3

    r3, v_rk3 = ratio(flow_step_rk3, 0.05)
    assert 7.0 < r3 < 10.5, r3  # 2^3 (9.7 here, 8.4 at eps = 0.0125: O(eps^4) terms)
    r1, v_eu = ratio(flow_step_euler, 0.02)
    assert 1.8 < r1 < 2.2, r1  # 2^1
    # both integrate the same equation
    assert float((v_eu - v_rk3).abs().max()) < 0.01


def test_flow_lowers_the_action_at_the_prescribed_rate():
    """dS6/dt = -2 sum_{x,mu} sum_ij |F_ij|^2 with F the beta = 6 Wilson force."""
    grid = single_rank_grid((4, 2, 2, 2))
    u = _smooth(grid, batch=2, amp=0.8)
    th = SU3Gauge(grid, 6.0)
    eps = 0.005

    def rate(v):
        f = gauge_force(v, grid, 6.0)
        return -2 * (f.abs() ** 2).sum(tuple(range(1, f.ndim)))

    v = flow_step_rk3(u, grid, eps)
    ds = (th.action(v) - th.action(u)) / eps
    trapezoid = 0.5 * (rate(u) + rate(v))
    assert torch.allclose(ds, trapezoid, rtol=1e-4)
    res = wilson_flow(u, grid, 1.0, 0.05)
    # E_plaq is the Wilson action density: it falls monotonically (gradient flow). The
    # clover E of a rough field first rises (the four-leaf average cancels noise), then
    # falls monotonically once the field is smooth.
    assert np.all(np.diff(res.e_plaq, axis=0) < 0)
    assert np.all(np.diff(res.e_clover[res.t >= 0.3], axis=0) < 0)


def test_flow_is_gauge_covariant():
    grid = single_rank_grid((2, 2, 2, 4))
    th = SU3Gauge(grid, 6.0)
    u = th.hot_start(SiteRNG(8), 0, 2)
    g = _random_gauge(grid, 2, seed=12)
    a = wilson_flow(u, grid, 0.2, 0.05, topology=True)
    b = wilson_flow(gauge_transform(u, g, grid), grid, 0.2, 0.05, topology=True)
    assert torch.allclose(b.field, gauge_transform(a.field, g, grid), atol=1e-12)
    for k in ("e_clover", "e_plaq", "q"):
        assert np.allclose(getattr(a, k), getattr(b, k), rtol=1e-12, atol=1e-13), k
    assert np.all(a.e_plaq[-1] < a.e_plaq[0])


def test_weak_field_has_negligible_charge():
    """A small perturbation of the trivial vacuum has Q ~ 0 (O(amplitude^4) here)."""
    grid = single_rank_grid((4, 4, 4, 4))
    u = _smooth(grid, amp=0.05)
    res = wilson_flow(u, grid, 0.2, 0.05, measure_every=4, topology=True)
    assert np.all(np.abs(res.q) < 1e-3)


def test_t0_interpolation_and_errors():
    t = np.linspace(0, 2, 21)
    y = np.stack([0.25 * t, 0.5 * t, t**2], axis=1)
    t0 = t0_from_flow(t, y)
    assert np.allclose(t0, [1.2, 0.6, math.sqrt(0.3)], atol=[1e-14, 1e-14, 0.005])
    assert math.isclose(float(t0_from_flow(t, 0.5 * t)), 0.6, rel_tol=1e-14)
    with pytest.raises(ValueError, match=r"never reaches 0.3 .* chain\(s\) \[1\]"):
        t0_from_flow(t, np.stack([t, 0.1 * t], axis=1))
    with pytest.raises(ValueError, match="not a positive multiple"):
        wilson_flow(torch.zeros(1, 4, 1, 1, 1, 1, 3, 3), single_rank_grid((1, 1, 1, 1)), 0.25, 0.1)
