"""U(1) gauge theory against independent references (tests/independent_reference.py and the
exact 2D character expansion computed here with scipy), at couplings and lattices the other
tests do not use: non-square 6x10 and 8x4 tori and a 4x6x2x8 lattice, ``beta = 1.913`` and
``2.83``, angles far outside ``(-pi, pi]`` (unwrapped MD angles), every kernel backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from independent_reference import central_difference, u1_action, u1_plaquettes
from scipy import integrate, special

import kernels.backends as kb
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

BACKENDS = [n for n in kb.available_backends() if n != "compiled"]


#: every test here may switch the kernel backend (conftest.py ``restore_backend``)
pytestmark = pytest.mark.usefixtures("restore_backend")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(6, 10), (8, 4), (4, 6, 2, 8)], ids=["6x10", "8x4", "4d"])
def test_action_force_charge_against_numpy(backend, shape):
    kb.set_backend(backend)
    b, beta = 3, 1.913
    rng = np.random.default_rng(sum(shape))
    theta = rng.uniform(-np.pi, np.pi, (b, len(shape), *shape))
    theta[0] *= 0.25
    wind = 2 * np.pi * rng.integers(-40, 40, theta.shape)
    d = rng.standard_normal(theta.shape)
    th = U1Gauge(single_rank_grid(shape), beta)
    s_ref = u1_action(theta, beta)
    num = central_difference(lambda h: u1_action(theta + h * d, beta), 1e-3)
    planes = u1_plaquettes(theta)
    vol = int(np.prod(shape))
    for field in (theta, theta + wind):  # the same links
        x = torch.from_numpy(field)
        np.testing.assert_allclose(th.action(x).numpy(), s_ref, rtol=1e-12)
        ana = (th.force(x).numpy() * d).reshape(b, -1).sum(1)
        np.testing.assert_allclose(ana, num, rtol=1e-8)
        o = th.observables(x)
        cos = sum(np.cos(p).reshape(b, -1).sum(1) for p in planes.values())
        np.testing.assert_allclose(o["plaquette"].numpy(), cos / (vol * len(planes)), atol=1e-14)
        if len(shape) == 2:
            p = planes[(0, 1)]
            q = np.sin(p).reshape(b, -1).sum(1) / (2 * np.pi)
            q_int = np.angle(np.exp(1j * p)).reshape(b, -1).sum(1) / (2 * np.pi)
            assert np.abs(q_int - np.round(q_int)).max() < 1e-12
            np.testing.assert_allclose(o["Q"].numpy(), q, atol=1e-12)
            np.testing.assert_array_equal(o["Q_int"].numpy(), np.round(q_int))
            np.testing.assert_allclose(th.topological_charge_int(x).numpy(), q_int, atol=1e-12)


def _exact_plaquette_and_q2(beta: float, vol: int) -> tuple[float, float]:
    """2D U(1) on a periodic torus of ``vol`` plaquettes: ``Z(theta) = sum_n f(n -
    theta/2pi)^V``, ``f(nu) = (1/2pi) int exp(beta cos phi) cos(nu phi)`` (``f(n) = I_n``).
    ``<cos P> = sum_n I_n' I_n^(V-1) / sum_n I_n^V``; ``<Q^2> = -Z''(0)/Z(0)`` by a
    five-point difference of ``Z(theta)`` from quadrature."""
    ns = np.arange(-40, 41)
    i_n = special.ive(ns, beta)
    di_n = 0.5 * (special.ive(ns - 1, beta) + special.ive(ns + 1, beta))
    plaq = float((di_n * i_n ** (vol - 1)).sum() / (i_n**vol).sum())

    def f(nu):
        val = integrate.quad(  # QAWO: e^{beta (cos phi - 1)} against the weight cos(nu phi)
            lambda p: math.exp(beta * (math.cos(p) - 1)),
            -math.pi,
            math.pi,
            weight="cos",
            wvar=nu,
            epsabs=1e-14,
        )[0]
        return val / (2 * math.pi)

    def z(theta):
        return sum(f(n - theta / (2 * math.pi)) ** vol for n in range(-12, 13))

    h = 0.05
    zs = [z(k * h) for k in (-2, -1, 0, 1, 2)]
    d2 = (-zs[0] + 16 * zs[1] - 30 * zs[2] + 16 * zs[3] - zs[4]) / (12 * h * h)
    return plaq, -d2 / zs[2]


def test_hmc_plaquette_and_charge_on_a_non_square_torus_match_the_exact_values():
    """beta = 2.83 on 6x10 (exact <cos P> = 0.79659, <Q^2> = 0.7194), 32 chains: each chain's
    mean is one independent measurement (their spread gives the error), 5 sigma."""
    beta, shape, chains = 2.83, (6, 10), 32
    plaq_exact, q2_exact = _exact_plaquette_and_q2(beta, shape[0] * shape[1])
    assert plaq_exact == pytest.approx(0.7965872451, abs=1e-9)
    if "numba" in BACKENDS:
        kb.set_backend("numba")
    th = U1Gauge(single_rank_grid(shape), beta)
    hmc = HMC(th, make_integrator(th, "omelyan", 6, 1.0), SiteRNG(2025))
    x = th.hot_start(SiteRNG(2025), 0, chains)
    plaq, q2 = [], []
    for k in range(1, 401):
        x, _ = hmc.trajectory(x, counter=k)
        if k > 30:
            o = th.observables(x)
            plaq.append(o["plaquette"].numpy())
            q2.append(o["Q2"].numpy())
    for name, series, exact in (("plaquette", plaq, plaq_exact), ("Q2", q2, q2_exact)):
        per_chain = np.mean(series, axis=0)
        mean, err = per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(chains)
        assert abs(mean - exact) < 5 * err, (name, mean, err, exact)
