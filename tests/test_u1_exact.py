"""Exact 2D U(1) partition function (kernels.theories.u1_exact) against independent results.

* ``e^{-beta} I_n(beta)`` against scipy's ``ive``;
* ``<cos P>`` from ``d log Z / d beta`` against the character-expansion ratio computed with
  scipy;
* ``log Z`` itself against brute-force Monte Carlo integration over uniform links on a 2x2
  torus (``Z = (2 pi)^N E_uniform[e^{-S}]``), within 5 standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import (
    log_partition_function,
    mean_plaquette,
    scaled_bessel_i,
    topological_charge_squared,
)
from parallel import single_rank_grid


@pytest.mark.parametrize("beta", [0.5, 3.0, 6.0])
def test_scaled_bessel_matches_scipy(beta):
    ns = np.arange(-6, 7)
    np.testing.assert_allclose(scaled_bessel_i(ns, beta), special.ive(ns, beta), atol=1e-14)


def _plaquette_ratio_scipy(beta: float, vol: int, nmax: int = 30) -> float:
    """``<cos P> = sum_n I_n' I_n^(V-1) / sum_n I_n^V`` with ``I_n' = (I_{n-1} + I_{n+1}) / 2``."""
    ns = np.arange(-nmax, nmax + 1)
    f = special.ive(ns, beta)
    fp = 0.5 * (special.ive(ns - 1, beta) + special.ive(ns + 1, beta))
    return float(np.sum(fp * f ** (vol - 1)) / np.sum(f**vol))


@pytest.mark.parametrize(("beta", "shape"), [(1.0, (4, 4)), (4.0, (16, 16)), (6.0, (8, 12))])
def test_plaquette_from_log_z(beta, shape):
    vol = shape[0] * shape[1]
    assert mean_plaquette(beta, shape) == pytest.approx(_plaquette_ratio_scipy(beta, vol), abs=1e-7)


def test_log_z_against_brute_force_monte_carlo():
    beta, shape, n = 1.0, (2, 2), 400_000
    th = U1Gauge(single_rank_grid(shape), beta=beta)
    gen = torch.Generator().manual_seed(11)
    theta = (torch.rand((n, 2, *shape), generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    w = torch.exp(-th.action(theta)).numpy()
    n_links = 2 * shape[0] * shape[1]
    est = n_links * math.log(2 * math.pi) + math.log(w.mean())
    err = w.std() / w.mean() / math.sqrt(n)
    assert abs(log_partition_function(beta, shape) - est) < 5 * err
    assert err < 5e-3  # the check is sharp enough to see a wrong V or beta term


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2D"):
        log_partition_function(1.0, (4, 4, 4))


@pytest.mark.parametrize(("beta", "shape"), [(1.0, (2, 2)), (0.5, (2, 3))])
def test_charge_squared_against_brute_force_monte_carlo(beta, shape):
    """``<Q^2> = E_uniform[Q^2 e^{-S}] / E_uniform[e^{-S}]`` with the geometric charge."""
    n = 400_000
    th = U1Gauge(single_rank_grid(shape), beta=beta)
    gen = torch.Generator().manual_seed(12)
    theta = (torch.rand((n, 2, *shape), generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    w = torch.exp(-th.action(theta)).numpy()
    q2 = th.observables(theta)["Q2"].numpy()
    est = (w * q2).mean() / w.mean()
    # delta-method error of the ratio estimator
    r = w * (q2 - est) / w.mean()
    err = r.std() / math.sqrt(n)
    assert abs(topological_charge_squared(beta, shape) - est) < 5 * err
    assert err < 0.02 * est


@pytest.mark.parametrize("beta", [2.0, 4.0])
def test_charge_squared_large_volume_limit(beta):
    """For ``V >> beta`` the plaquettes are independent von Mises angles, so
    ``<Q^2> / V -> <P^2> / (4 pi^2)`` with ``<P^2> = int P^2 e^{beta cos P} / int e^{beta cos P}``
    (scipy quadrature)."""
    from scipy import integrate

    num = integrate.quad(lambda p: p * p * math.exp(beta * math.cos(p)), -math.pi, math.pi)[0]
    den = integrate.quad(lambda p: math.exp(beta * math.cos(p)), -math.pi, math.pi)[0]
    chi = topological_charge_squared(beta, (32, 32)) / 32**2
    assert chi == pytest.approx(num / den / (4 * math.pi**2), rel=1e-8)


def test_charge_suppressed_on_small_torus_at_large_beta():
    """A unit charge costs about ``2 pi^2 beta / V`` on a small torus: ``<Q^2>`` falls far below
    the independent-plaquette value ``V <P^2> / 4 pi^2 ~ V / (4 pi^2 beta)``."""
    assert topological_charge_squared(20.0, (4, 4)) < 1e-6 * 16 / (4 * math.pi**2 * 20.0)
