"""HMC against exact results: 2D U(1) (character expansion) and free 2D phi^4 (propagator).

Errors: every chain of the batch is one replicum of the ensemble; pyerrors' Gamma method
(Wolff, CPC 156 (2004) 143) combines them and accounts for the autocorrelation in each.

2D U(1) Wilson action on a periodic L x L torus, ``V = L^2`` plaquettes. Gauge-fixing to a
maximal tree, the plaquette angles ``phi_P`` in ``(-pi, pi]`` are uniformly distributed on
the surface ``sum_P phi_P = 0 mod 2 pi`` (the product of all plaquettes of a closed surface is
1); the two holonomies decouple. With the periodic delta ``sum_n e^{i n sum phi_P}/2pi`` and a
theta term weighting the geometric charge ``Q = sum_P phi_P / 2pi``::

    Z(theta) = sum_n  f(n - theta/2pi)^V,   f(nu) = (1/2pi) int_{-pi}^{pi} dphi
                                                     exp(beta cos phi) cos(nu phi)

so ``f(n) = I_n(beta)`` and (Bonati & Rossi, PRD 99 (2019) 054503; Kanwar et al.
2003.06413)::

    <cos theta_P> = (1/V) d ln Z / d beta = sum_n I_n' I_n^(V-1) / sum_n I_n^V
    <Q^2> = -Z''(0)/Z(0) = -(1/4 pi^2) sum_n [V (V-1) f_n^(V-2) f'_n^2 + V f_n^(V-1) f''_n]
                                      / sum_n I_n^V
    f'_n  = -(1/2pi) int phi sin(n phi) e^{beta cos phi},
    f''_n = -(1/2pi) int phi^2 cos(n phi) e^{beta cos phi}.

The ``f'_n`` decay only like ``1/n`` (the theta term is discontinuous at ``phi = pi``), so
the ``n``-sum converges fast only for ``V >= 3`` (``f_n^(V-2)`` falls like ``(beta/2)^n/n!``).
The formula is checked against direct integration over the plaquettes at ``V = 3``.
"""

from __future__ import annotations

import math

import numpy as np
import pyerrors as pe
import pytest
import torch
from scipy import integrate, special

from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.phi4 import Phi4, free_propagator_two_point
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SEED = 97531


# ------------------------------------------------------------------ exact 2D U(1)
def u1_exact(beta: float, volume: int, nmax: int = 30) -> tuple[float, float]:
    """Exact ``<cos theta_P>`` and ``<Q^2>`` (geometric charge) of 2D U(1) with ``volume``
    plaquettes on a torus (``volume >= 3``)."""
    if volume < 3:
        raise ValueError("the n-sum converges only for V >= 3")
    ns = np.arange(-nmax, nmax + 1)

    def moment(n: int, k: int, weight: str) -> float:
        # (1/2pi) int phi^k w(n phi) e^{beta (cos phi - 1)}; QAWO for the oscillating factor
        val = integrate.quad(
            lambda p: p**k * math.exp(beta * (math.cos(p) - 1.0)),
            -math.pi,
            math.pi,
            weight=weight,
            wvar=float(n),
            epsabs=1e-13,
            epsrel=1e-11,
        )[0]
        return val / (2.0 * math.pi)

    # everything scaled by e^{-beta} per plaquette (cancels in the ratios)
    f = special.ive(ns, beta)
    fp = 0.5 * (special.ive(ns - 1, beta) + special.ive(ns + 1, beta))  # I_n'(beta) e^-beta
    d1 = np.array([-moment(n, 1, "sin") for n in ns])
    d2 = np.array([-moment(n, 2, "cos") for n in ns])
    z = np.sum(f**volume)
    plaq = np.sum(fp * f ** (volume - 1)) / z
    q2 = -np.sum(
        volume * (volume - 1) * f ** (volume - 2) * d1**2 + volume * f ** (volume - 1) * d2
    ) / (z * 4.0 * math.pi**2)
    return float(plaq), float(q2)


def u1_brute_three_plaquettes(beta: float, n: int = 1200) -> tuple[float, float]:
    """``<cos theta_P>``, ``<Q^2>`` for V = 3 by midpoint integration over two free plaquette
    angles (the third is ``-(a + b)``); O(1/n) from the charge jumps."""
    p = (np.arange(n) + 0.5) / n * 2.0 * np.pi - np.pi
    a, b = np.meshgrid(p, p, indexing="ij")
    c = -(a + b)
    w = np.exp(beta * (np.cos(a) + np.cos(b) + np.cos(c) - 3.0))
    wrapped = c - 2.0 * np.pi * np.ceil((c - np.pi) / (2.0 * np.pi))
    q = (a + b + wrapped) / (2.0 * np.pi)
    plaq = np.sum(w * (np.cos(a) + np.cos(b) + np.cos(c)) / 3.0) / w.sum()
    return float(plaq), float(np.sum(w * q**2) / w.sum())


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_character_expansion_against_direct_integration(beta):
    plaq, q2 = u1_exact(beta, 3)
    plaq_b, q2_b = u1_brute_three_plaquettes(beta)
    assert plaq == pytest.approx(plaq_b, rel=1e-10)
    assert q2 == pytest.approx(q2_b, rel=1e-3)
    # large volume: one plaquette in a heat bath, <cos> = I_1/I_0, <Q^2>/V = <phi^2>/4pi^2
    plaq_inf, q2_inf = u1_exact(beta, 400)
    assert plaq_inf == pytest.approx(special.i1(beta) / special.i0(beta), rel=1e-10)
    phi2 = integrate.quad(lambda p: p * p * math.exp(beta * math.cos(p)), -math.pi, math.pi)[0]
    norm = integrate.quad(lambda p: math.exp(beta * math.cos(p)), -math.pi, math.pi)[0]
    assert q2_inf / 400 == pytest.approx(phi2 / norm / (4 * math.pi**2), rel=1e-6)


# ------------------------------------------------------------------ statistics
def gamma_mean(series: np.ndarray, name: str) -> tuple[float, float]:
    """Mean and Gamma-method error of ``series[t, b]``: chains ``b`` as replica."""
    obs = pe.Obs(
        [series[:, b] for b in range(series.shape[1])],
        [f"{name}|r{b:03d}" for b in range(series.shape[1])],
    )
    obs.gamma_method()
    return float(obs.value), float(obs.dvalue)


def run_hmc(theory, n_steps, tau, batch, n_therm, n_meas, measure):
    rng = SiteRNG(SEED)
    hmc = HMC(theory, make_integrator(theory, "omelyan", n_steps, tau), rng)
    field = theory.hot_start(rng, 0, batch)
    out, acc = [], []
    for counter in range(1, n_therm + n_meas + 1):
        field, rec = hmc.trajectory(field, counter)
        if counter > n_therm:
            out.append(measure(field))
            acc.append(rec.acceptance)
    return np.stack(out), float(np.mean(acc))


# ------------------------------------------------------------------ 2D U(1)
@pytest.mark.parametrize("length", [4, 6])
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_u1_plaquette_and_topological_susceptibility(length, beta):
    theory = U1Gauge(single_rank_grid((length, length)), beta)
    volume = length * length

    def measure(theta):
        obs = theory.observables(theta)
        q = torch.round(obs["Q_int"])
        assert torch.allclose(obs["Q_int"], q, atol=1e-9)  # geometric charge is an integer
        return torch.stack([obs["plaquette"], q * q / volume]).numpy()

    data, acc = run_hmc(theory, 4, 1.0, 32, 30, 250, measure)  # (T, 2, B)
    assert acc > 0.8
    plaq_exact, q2_exact = u1_exact(beta, volume)
    plaq, plaq_err = gamma_mean(data[:, 0], f"plaq_L{length}_b{beta}")
    chi, chi_err = gamma_mean(data[:, 1], f"chi_L{length}_b{beta}")
    chi_exact = q2_exact / volume
    assert abs(plaq - plaq_exact) < 3.0 * plaq_err, (plaq, plaq_err, plaq_exact)
    assert abs(chi - chi_exact) < 3.0 * chi_err, (chi, chi_err, chi_exact)
    # resolution of the check: a wrong coupling (beta * 1.1) would be seen
    plaq_off, q2_off = u1_exact(1.1 * beta, volume)
    assert abs(plaq_off - plaq_exact) > 5.0 * plaq_err
    assert chi_err < 0.1 * chi_exact


# ------------------------------------------------------------------ free phi^4
def free_two_point_brute(shape: tuple[int, int], beta: float) -> np.ndarray:
    """``<C(t)>`` from the dense inverse of ``A = 2 - beta sum_mu (T_mu + T_mu^T)``, with
    ``S = (1/2) phi^T A phi`` and ``C(t) = (1/V) sum_{t0} <Phi(t0) Phi(t0 + t)>``."""
    lx, lt = shape
    vol = lx * lt
    idx = np.arange(vol).reshape(shape)
    a = 2.0 * np.eye(vol)
    for axis in range(2):
        nb = np.roll(idx, -1, axis=axis).ravel()
        a[idx.ravel(), nb] -= beta
        a[nb, idx.ravel()] -= beta
    g = np.linalg.inv(a).reshape(lx, lt, lx, lt)
    gt = g.sum(axis=(0, 2))  # <Phi(t1) Phi(t2)>
    return np.array([sum(gt[t0, (t0 + t) % lt] for t0 in range(lt)) for t in range(lt)]) / vol


def test_free_phi4_two_point_function():
    shape, beta = (8, 8), 0.45  # m^2 = 2/beta - 4 = 0.44, xi = 1/m = 1.5
    exact = free_two_point_brute(shape, beta)
    np.testing.assert_allclose(free_propagator_two_point(shape, beta), exact, rtol=1e-12)
    theory = Phi4(single_rank_grid(shape), beta, lam=0.0)
    data, acc = run_hmc(
        theory, 8, 2.0, 32, 30, 200, lambda phi: theory.two_point(phi).T.numpy()
    )  # (T, L_t, B)
    assert acc > 0.8
    half = shape[1] // 2
    for t in range(half + 1):
        c, err = gamma_mean(data[:, t], f"C{t}")
        assert abs(c - exact[t]) < 3.0 * err, (t, c, err, exact[t])
        assert err < 0.1 * exact[t]
    # the signal falls off over the range tested (a real distance dependence)
    assert exact[half] < 0.5 * exact[0]
