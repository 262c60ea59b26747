"""Wilson loops W(R, T) against a brute-force site loop and the abelian Stokes result; w0,
t d/dt t^2E and Q at chosen flow times on fields with exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_su3 import _random_gauge, flux_field

from kernels.static_loops import wilson_loop_table
from kernels.theories.su3 import SU3Gauge, gauge_transform
from kernels.wilson_flow import (
    energy_density,
    t0_from_flow,
    t_dt_t2e,
    topological_charge,
    w0_from_flow,
    wilson_flow,
)
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def brute_force_loops(u: np.ndarray, r_max: int, t_max: int) -> dict:
    """Independent reference: walk every loop site by site with modular indices.
    ``u``: (d, *shape, 3, 3) one chain; time = last axis."""
    d = u.shape[0]
    shape = u.shape[1 : 1 + d]
    t = d - 1
    out = {}
    for r in range(1, r_max + 1):
        for tt in range(1, t_max + 1):
            acc = 0.0
            for mu in range(t):
                for x in np.ndindex(*shape):
                    pos = list(x)
                    m = np.eye(3, dtype=complex)
                    for axis, steps, fwd in (
                        (mu, r, True),
                        (t, tt, True),
                        (mu, r, False),
                        (t, tt, False),
                    ):
                        for _ in range(steps):
                            if fwd:
                                m = m @ u[(axis, *pos)]
                                pos[axis] = (pos[axis] + 1) % shape[axis]
                            else:
                                pos[axis] = (pos[axis] - 1) % shape[axis]
                                m = m @ u[(axis, *pos)].conj().T
                    acc += np.trace(m).real
            out[(r, tt)] = acc / (3 * math.prod(shape) * t)
    return out


def test_wilson_loops_against_brute_force_and_gauge_invariant():
    shape = (3, 2, 2, 4)
    grid = single_rank_grid(shape)
    th = SU3Gauge(grid, 6.0)
    u = th.hot_start(SiteRNG(4), 0, 2)
    got = wilson_loop_table(u, grid, 2, 3)
    for b in range(2):
        ref = brute_force_loops(u[b].numpy(), 2, 3)
        for key, val in ref.items():
            assert float(got[key][b]) == pytest.approx(val, abs=1e-13), key
    # W(1,1) is the temporal plaquette of the theory's observables
    obs = th.observables(u)
    assert torch.allclose(got[(1, 1)], obs["plaquette_temporal"], atol=1e-14)
    g = gauge_transform(u, _random_gauge(grid, 2), grid)
    got_g = wilson_loop_table(g, grid, 2, 3)
    for key in got:
        assert torch.allclose(got[key], got_g[key], atol=1e-13)
    with pytest.raises(ValueError, match="do not fit"):
        wilson_loop_table(u, grid, 3, 1)  # R = 3 > L_y = 2


def test_wilson_loops_of_a_constant_abelian_field_obey_stokes():
    shape = (4, 6, 4, 8)
    fluxes = {(0, 3): (1, (1, -1, 0)), (1, 3): (2, (2, -1, -1)), (0, 1): (1, (1, 0, -1))}
    u, ph = flux_field(shape, fluxes)
    grid = single_rank_grid(shape)
    got = wilson_loop_table(u, grid, 3, 4)
    for (r, tt), w in got.items():
        exact = np.mean([np.cos(r * tt * ph.get((mu, 3), np.zeros(3))).mean() for mu in range(3)])
        assert float(w[0]) == pytest.approx(exact, abs=1e-13)


def test_scales_of_a_field_that_does_not_flow():
    """A constant abelian field is a classical solution: E(t) = E is constant, so
    t^2 E = E t^2, t d/dt t^2 E = 2 E t^2, t0 = sqrt(0.3 / E), w0 = (0.15 / E)^(1/4)."""
    shape = (4, 4, 4, 4)
    u, _ = flux_field(shape, {(0, 1): (1, (1, -1, 0)), (2, 3): (1, (2, -1, -1))})
    grid = single_rank_grid(shape)
    e = float(energy_density(u, grid)[0])
    eps = 0.05
    t_need = math.sqrt(0.3 / e) * 1.2
    t_max = eps * math.ceil(t_need / eps)
    res = wilson_flow(u, grid, t_max, eps, charge_times=(0.0, 2 * eps))
    assert np.allclose(res.e_clover, e, rtol=1e-10)
    assert np.allclose(res.tdt2e[:, 0], 2 * e * res.t**2, rtol=1e-9, atol=1e-12)
    # linear interpolation of the quadratic t^2 E: error below E eps^2 / 4 (x 2t for w0^2)
    t0 = float(res.t0()[0])
    assert t0 == pytest.approx(math.sqrt(0.3 / e), abs=e * eps**2)
    w0 = float(res.w0()[0])
    assert w0**2 == pytest.approx(math.sqrt(0.15 / e), abs=4 * e * eps**2 * t_max)
    q0 = float(topological_charge(u, grid)[0])
    assert res.q_at[0.0][0] == pytest.approx(q0, abs=1e-12)
    assert res.q_at[2 * eps][0] == pytest.approx(q0, abs=1e-10)  # does not flow


def test_charge_times_match_a_separate_flow():
    shape = (4, 2, 2, 4)
    grid = single_rank_grid(shape)
    th = SU3Gauge(grid, 6.0)
    from kernels.groups import su_expm

    u = su_expm(0.4 * th.random_momentum(SiteRNG(2), 0, 2)) @ th.cold_start(2)
    full = wilson_flow(u, grid, 0.2, 0.05, charge_times=(0.1, 0.2))
    part = wilson_flow(u, grid, 0.1, 0.05, topology=True)
    assert np.allclose(full.q_at[0.1], part.q[-1], atol=1e-13)
    with pytest.raises(ValueError, match="multiple of eps"):
        wilson_flow(u, grid, 0.2, 0.05, charge_times=(0.07,))


def test_t_dt_t2e_and_w0_on_a_known_curve():
    t = np.linspace(0.0, 3.0, 61)
    y = 0.1 * t**2 + 0.02 * t**3  # W = t (0.2 t + 0.06 t^2) = 0.2 t^2 + 0.06 t^3
    w = t_dt_t2e(t, y)
    assert np.allclose(w, 0.2 * t**2 + 0.06 * t**3, atol=0.12 * 0.05**2 * 3)  # t f''' h^2 / 3
    w0 = w0_from_flow(t, y[:, None])[0]
    root = [x for x in np.roots([0.06, 0.2, 0.0, -0.3]) if abs(x.imag) < 1e-12 and x.real > 0]
    assert w0**2 == pytest.approx(root[0].real, abs=3e-3)
    with pytest.raises(ValueError, match="t d/dt t\\^2 E"):
        w0_from_flow(t, 0.01 * y[:, None])
    roots = np.roots([0.02, 0.1, 0, -0.3])
    t0 = [x.real for x in roots if abs(x.imag) < 1e-12 and x.real > 0][0]
    assert t0_from_flow(t, y) == pytest.approx(t0, abs=3e-3)
