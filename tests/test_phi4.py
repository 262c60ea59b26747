"""phi^4 theory: action, force, observables and the exact free-field results (single rank)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kernels.theories import make_theory
from kernels.theories.phi4 import Phi4, correlation_length, free_propagator_two_point
from parallel import single_rank_grid
from parallel.rng import PURPOSE_MOMENTUM, PURPOSE_START, SiteRNG


def theory(shape, beta=0.3, lam=0.7) -> Phi4:
    return Phi4(single_rank_grid(shape), beta=beta, lam=lam)


def hopping_matrix(shape, beta) -> np.ndarray:
    """Closed-form quadratic form ``A`` of the free action ``S = (1/2) phi^T A phi``:
    ``A = 2 * 1 - beta sum_mu (T_mu + T_mu^T)``, ``(T_mu)_{x, x+mu} = 1`` (built site by site)."""
    vol = int(np.prod(shape))
    a = 2.0 * np.eye(vol)
    for x in itertools.product(*(range(s) for s in shape)):
        i = np.ravel_multi_index(x, shape)
        for mu in range(len(shape)):
            y = list(x)
            y[mu] = (y[mu] + 1) % shape[mu]
            j = np.ravel_multi_index(y, shape)
            a[i, j] -= beta
            a[j, i] -= beta
    return a


# ------------------------------------------------------------------ construction
def test_lambda_keyword_and_registry():
    g = single_rank_grid((4, 4))
    a = make_theory("phi4", g, beta=0.4, **{"lambda": 0.5})
    b = Phi4(g, beta=0.4, lam=0.5)
    assert a.params == b.params == {"beta": 0.4, "lambda": 0.5}
    with pytest.raises(TypeError):
        Phi4(g, beta=0.4, lam=0.5, **{"lambda": 0.5})
    with pytest.raises(TypeError):
        Phi4(g, beta=0.4, lam=0.5, kappa=1.0)
    with pytest.raises(TypeError):
        Phi4(g, beta=0.4)


# ------------------------------------------------------------------ action and force
@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 4)])
def test_constant_field_action(shape):
    th = theory(shape, beta=0.37, lam=0.81)
    c = torch.tensor([0.0, 0.3, -1.2, 2.0])
    phi = c.view(4, *(1,) * len(shape)).expand(4, *shape)
    vol, d = math.prod(shape), len(shape)
    exact = vol * (-0.37 * d * c**2 + c**2 + 0.81 * (c**2 - 1.0) ** 2)
    torch.testing.assert_close(th.action(phi), exact, rtol=1e-14, atol=1e-12)


def test_action_brute_force_sites():
    shape = (4, 3)
    th = theory(shape, beta=0.45, lam=1.3)
    phi = torch.randn(2, *shape)
    ref = torch.zeros(2)
    for x, t in itertools.product(range(4), range(3)):
        p = phi[:, x, t]
        hop = phi[:, (x + 1) % 4, t] + phi[:, x, (t + 1) % 3]
        ref += -0.45 * hop * p + p**2 + 1.3 * (p**2 - 1.0) ** 2
    torch.testing.assert_close(th.action(phi), ref, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4)])
def test_force_is_numerical_derivative(shape):
    torch.manual_seed(1)
    th = theory(shape, beta=0.41, lam=0.9)
    phi = torch.randn(3, *shape)
    f = th.force(phi)
    h = 1e-5
    # random directions, one per chain
    for _ in range(3):
        v = torch.randn_like(phi)
        num = (th.action(phi + h * v) - th.action(phi - h * v)) / (2 * h)
        ana = (f * v).flatten(1).sum(1)
        torch.testing.assert_close(ana, num, rtol=1e-8, atol=1e-8)
    # single components
    for site in [(0,) * len(shape), tuple(s - 1 for s in shape), tuple(s // 2 for s in shape)]:
        e = torch.zeros_like(phi)
        e[(slice(None),) + site] = 1.0
        num = (th.action(phi + h * e) - th.action(phi - h * e)) / (2 * h)
        torch.testing.assert_close(f[(slice(None),) + site], num, rtol=1e-8, atol=1e-8)


def test_kinetic_and_drift():
    th = theory((4, 6))
    pi = torch.randn(3, 4, 6)
    phi = torch.randn(3, 4, 6)
    torch.testing.assert_close(th.kinetic(pi), 0.5 * (pi**2).sum(dim=(1, 2)))
    torch.testing.assert_close(th.evolve_field(phi, pi, 0.1), phi + 0.1 * pi)


# ------------------------------------------------------------------ free theory
@pytest.mark.parametrize("shape,beta", [((4, 3), 0.31), ((2, 5), 0.2), ((3, 2, 2), 0.15)])
def test_free_hessian_is_lattice_operator(shape, beta):
    th = theory(shape, beta=beta, lam=0.0)
    vol = math.prod(shape)
    phi0 = torch.randn(vol)
    hess = torch.autograd.functional.hessian(lambda p: th.action(p.view(1, *shape))[0], phi0)
    np.testing.assert_allclose(hess.numpy(), hopping_matrix(shape, beta), atol=1e-13)
    # and S = (1/2) phi^T A phi exactly
    a = torch.from_numpy(hopping_matrix(shape, beta))
    torch.testing.assert_close(th.action(phi0.view(1, *shape))[0], 0.5 * phi0 @ a @ phi0)


@pytest.mark.parametrize("shape,beta", [((4, 6), 0.3), ((3, 5), 0.45), ((2, 2, 6), 0.25)])
def test_free_two_point_is_inverse_hessian(shape, beta):
    th = theory(shape, beta=beta, lam=0.0)
    vol, lt = math.prod(shape), shape[-1]
    g = np.linalg.inv(hopping_matrix(shape, beta))  # <phi_x phi_y>
    g = g.reshape(shape + shape)
    # C(t) = (1/V) sum_{t0} sum_{xs, ys} G[(xs, t0), (ys, t0 + t)]
    gt = g.reshape(vol // lt, lt, vol // lt, lt).sum(axis=(0, 2))  # (t0, t1)
    brute = np.array([sum(gt[t0, (t0 + t) % lt] for t0 in range(lt)) for t in range(lt)]) / vol
    exact = free_propagator_two_point(shape, beta)
    np.testing.assert_allclose(exact, brute, rtol=1e-12, atol=1e-14)
    # the observable's expectation: two_point[t] is the quadratic form (1/2) phi^T H_t phi,
    # so <two_point[t]> = (1/2) Tr(H_t G) in the Gaussian ensemble
    cov = torch.from_numpy(g.reshape(vol, vol))
    phi0 = torch.randn(vol)
    for t in range(lt):
        h_t = torch.autograd.functional.hessian(
            lambda p, t=t: th.two_point(p.view(1, *shape))[0, t], phi0
        )
        torch.testing.assert_close(
            0.5 * torch.trace(h_t @ cov).item(), exact[t], rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("shape,beta", [((8, 8), 0.2), ((4, 12), 0.24), ((3, 3, 10), 0.3)])
def test_correlation_length_free_theory(shape, beta):
    """Second-moment xi of the exact free C(t) is 1/m, m^2 = 2/beta - 2d, on any volume."""
    c = free_propagator_two_point(shape, beta)
    m = math.sqrt(2.0 / beta - 2.0 * len(shape))
    assert correlation_length(c) == pytest.approx(1.0 / m, rel=1e-12)
    ct = torch.from_numpy(np.stack([c, 2.0 * c]))
    torch.testing.assert_close(correlation_length(ct), torch.full((2,), 1.0 / m))
    assert math.isnan(correlation_length(np.ones(6)))


def test_free_propagator_rejects_unstable_beta():
    with pytest.raises(ValueError):
        free_propagator_two_point((8, 8), 0.5)


# ------------------------------------------------------------------ observables
def test_observables_brute_force():
    shape = (5, 6)
    th = theory(shape)
    phi = torch.randn(3, *shape)
    obs = th.observables(phi)
    vol = 30
    m = phi.sum(dim=(1, 2)) / vol
    torch.testing.assert_close(obs["M"], m)
    torch.testing.assert_close(obs["abs_M"], m.abs())
    torch.testing.assert_close(obs["V_M2"], vol * m**2)
    torch.testing.assert_close(obs["action"], th.action(phi) / vol)
    ts = phi.sum(dim=1).numpy()  # Phi(t), time = last axis
    ref = np.zeros((3, 6))
    for t, t0 in itertools.product(range(6), range(6)):
        ref[:, t] += ts[:, t0] * ts[:, (t0 + t) % 6]
    np.testing.assert_allclose(obs["two_point"].numpy(), ref / vol, rtol=1e-13, atol=1e-13)
    assert all(v.shape == (3,) for k, v in obs.items() if k != "two_point")
    assert obs["two_point"].shape == (3, 6)


# ------------------------------------------------------------------ random draws
def test_starts_and_momenta():
    shape = (4, 6)
    th = theory(shape)
    rng = SiteRNG(1234)
    cold = th.cold_start(2)
    assert cold.shape == (2, 4, 6) and not cold.any() and cold.dtype == torch.float64
    hot = th.hot_start(rng, 3, 2)
    mom = th.random_momentum(rng, 3, 2, chain_offset=5)
    torch.testing.assert_close(hot, rng.normal(th.grid, PURPOSE_START, 3, 2), rtol=0, atol=0)
    torch.testing.assert_close(
        mom, rng.normal(th.grid, PURPOSE_MOMENTUM, 3, 2, chain_offset=5), rtol=0, atol=0
    )
    assert hot.shape == mom.shape == th.momentum_shape(2)
