"""Normalisation of the Wilson-flow energy densities against the continuum definition.

``E = -(1/2) sum_{mu,nu} tr(G_{mu nu} G_{mu nu})`` (Luscher, JHEP 1008 (2010) 071) with
anti-hermitian ``G``. The references here are computed independently of kernels/:

* a constant non-abelian field ``U_mu(x) = exp(eps A_mu)`` (constant su(3) matrices ``A_mu``)
  has the continuum field strength ``G_{mu nu} = eps^2 [A_mu, A_nu]`` (the plaquette is
  ``exp(eps^2 [A_mu, A_nu] + O(eps^3))`` by Baker-Campbell-Hausdorff), so both lattice
  energy densities must approach ``-(eps^4/2) sum_{mu,nu} tr [A_mu, A_nu]^2`` as ``eps -> 0``;
* a constant abelian flux field with plaquette phases ``theta_c`` has ``E = sum theta_c^2``
  in the continuum;
* the plaquette energy density is the Wilson action density: ``S = (beta/6) V E_plaq``
  (``g0^2 = 6 / beta``), the theory's action being validated by HMC against exact results.

A factor-2 error in either density (as ``E_plaq`` once had) fails all of these.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_su3 import flux_field

from kernels.theories.su3 import SU3Gauge
from kernels.wilson_flow import energy_density, plaquette_energy_density
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def _su3_algebra(rng: np.random.Generator) -> np.ndarray:
    """A random traceless anti-hermitian 3x3 matrix with entries of order one."""
    m = rng.normal(size=(3, 3)) + 1j * rng.normal(size=(3, 3))
    a = 0.5 * (m - m.conj().T)
    return a - np.trace(a) / 3 * np.eye(3)


def _continuum_e(a: list[np.ndarray]) -> float:
    """``-(1/2) sum_{mu,nu} tr([A_mu, A_nu]^2)`` (real, >= 0)."""
    e = 0.0
    for mu in range(len(a)):
        for nu in range(len(a)):
            c = a[mu] @ a[nu] - a[nu] @ a[mu]
            e += -0.5 * np.trace(c @ c).real
    return e


def _constant_field(a: list[np.ndarray], eps: float, shape: tuple[int, ...]) -> torch.Tensor:
    links = [torch.linalg.matrix_exp(torch.from_numpy(eps * x)) for x in a]
    u = torch.stack(links)  # (Nd, 3, 3)
    return u.reshape(1, len(a), *([1] * len(shape)), 3, 3).expand(1, len(a), *shape, 3, 3).clone()


def test_constant_nonabelian_field_approaches_the_continuum_energy():
    rng = np.random.default_rng(11)
    a = [_su3_algebra(rng) for _ in range(4)]
    e_cont = _continuum_e(a)
    shape = (3, 2, 2, 2)
    grid = single_rank_grid(shape)
    errs = {"plaq": [], "clover": []}
    epss = (0.04, 0.02, 0.01)
    for eps in epss:
        u = _constant_field(a, eps, shape)
        ref = eps**4 * e_cont
        errs["plaq"].append(abs(float(plaquette_energy_density(u, grid)[0]) / ref - 1))
        errs["clover"].append(abs(float(energy_density(u, grid)[0]) / ref - 1))
    for kind, err in errs.items():
        # corrections vanish as eps -> 0 (at least linearly); a factor 2 would leave err ~ 1
        assert err[-1] < 0.02, (kind, err)
        assert err[2] < 0.75 * err[0] + 1e-6, (kind, err)


@pytest.mark.parametrize("length", [8, 16])
def test_constant_abelian_flux_approaches_sum_theta_squared(length):
    shape = (length, length, 4, 4)
    fluxes = {(0, 1): (1, (1, -1, 0))}
    u, ph = flux_field(shape, fluxes)
    grid = single_rank_grid(shape)
    e_cont = sum(float((v * v).sum()) for v in ph.values())
    theta = 2 * np.pi / length**2
    for e in (plaquette_energy_density(u, grid), energy_density(u, grid)):
        # O(theta^2) lattice corrections (1 - cos, sin^2 against theta^2)
        assert abs(float(e[0]) / e_cont - 1) < theta**2


def test_plaquette_energy_is_the_wilson_action_density():
    shape = (4, 2, 2, 4)
    grid = single_rank_grid(shape)
    beta = 5.7
    th = SU3Gauge(grid, beta)
    u = th.hot_start(SiteRNG(5), 0, 2)
    vol = int(np.prod(shape))
    s = th.action(u)
    e = plaquette_energy_density(u, grid)
    assert torch.allclose(s, beta / 6 * vol * e, rtol=1e-12)
    # and 36 (1 - P) with the average plaquette P = <Re Tr U_P> / 3
    p = th.observables(u)["plaquette"]
    assert torch.allclose(e, 36 * (1 - p), rtol=1e-12)
