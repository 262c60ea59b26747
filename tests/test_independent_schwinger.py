"""Schwinger model (2D U(1) + Nf = 2 Wilson fermions) against an independent dense Wilson-Dirac
matrix (tests/independent_reference.py, built site by site from docs/conventions.md,
antiperiodic in t, its own component order), at parameters the other tests do not use:
non-square 6x10 and 8x4 lattices, odd kappa/beta, one and two Hasenbusch masses, batch 2.

Checked: ``D``, ``D^+``, ``D^+ D`` on a random spinor; each pseudofermion term's action for a
given ``phi`` (plain ``phi^+ (D^+D)^-1 phi``, ratio ``phi^+ D_1 (D^+D)^-1 D_1^+ phi``) and its
force against a numerical derivative of the dense action; the heatbath ``phi`` from the
term's noise; the pion correlator and the condensate estimator against the dense inverse.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from independent_reference import (
    central_difference,
    dense_dirac,
    from_dense,
    pseudofermion_action,
    to_dense,
    u1_action,
)

from kernels.theories.schwinger import (
    PURPOSE_CONDENSATE_NOISE,
    PURPOSE_PSEUDOFERMION,
    Schwinger,
    complex_noise,
)
from parallel import single_rank_grid
from parallel.rng import SiteRNG

B = 2
CASES = [((6, 10), 0.2137, 1.37, ()), ((8, 4), 0.2731, 0.83, (0.11, 0.19))]


def _setup(shape, seed):
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-np.pi, np.pi, (B, 2, *shape))
    theta[1] *= 0.3  # one rough, one smoother chain

    def spinor():
        return rng.standard_normal((B, 2, *shape)) + 1j * rng.standard_normal((B, 2, *shape))

    return rng, theta, spinor


@pytest.mark.parametrize(("shape", "kappa", "beta", "hb"), CASES, ids=["6x10", "8x4-hb2"])
def test_operator_actions_forces_against_dense(shape, kappa, beta, hb):
    rng, theta, spinor = _setup(shape, 11)
    th = Schwinger(single_rank_grid(shape), beta, kappa, hasenbusch=hb, cg_tol=1e-13)
    tt = torch.from_numpy(theta)
    op = th.dirac(tt)
    psi = spinor()
    got = {
        "D": op.apply(torch.from_numpy(psi)).numpy(),
        "Ddag": op.apply_dag(torch.from_numpy(psi)).numpy(),
        "DdagD": op.normal(torch.from_numpy(psi)).numpy(),
    }
    for b in range(B):
        d = dense_dirac(theta[b], kappa)
        v = to_dense(psi[b])
        ref = {"D": d @ v, "Ddag": d.conj().T @ v, "DdagD": d.conj().T @ (d @ v)}
        for k, r in ref.items():
            np.testing.assert_allclose(got[k][b], from_dense(r, *shape), atol=1e-12, err_msg=k)
        # the documented identity D^+ = (D with g_mu -> -g_mu)
        np.testing.assert_allclose(d.conj().T, dense_dirac(theta[b], kappa, sign=-1), atol=1e-15)

    kappas = [*hb, kappa]
    lower = [None, *kappas[:-1]]
    terms = th.pseudofermion_terms()
    assert [t.kappa for t in terms] == kappas
    direction = rng.standard_normal(theta.shape)
    total_ref = u1_action(theta, beta)
    total_dir = central_difference(lambda h: u1_action(theta + h * direction, beta), 1e-3)
    for j, term in enumerate(terms):
        phi = spinor()
        term.phi = torch.from_numpy(phi)
        term._cache = None

        def s_ref(t, j=j, phi=phi):
            return np.array(
                [pseudofermion_action(t[b], phi[b], kappas[j], lower[j]) for b in range(B)]
            )

        np.testing.assert_allclose(term.action(tt).numpy(), s_ref(theta), rtol=1e-10)
        f = term.force(tt).numpy()
        ana = (f * direction).reshape(B, -1).sum(1)
        num = central_difference(lambda h, s=s_ref: s(theta + h * direction), 1e-3)
        np.testing.assert_allclose(ana, num, rtol=1e-7, err_msg=term.name)
        total_ref = total_ref + s_ref(theta)
        total_dir = total_dir + num
    np.testing.assert_allclose(th.action(tt).numpy(), total_ref, rtol=1e-10)
    ana = (th.force(tt).numpy() * direction).reshape(B, -1).sum(1)
    np.testing.assert_allclose(ana, total_dir, rtol=1e-7)


@pytest.mark.parametrize(("shape", "kappa", "beta", "hb"), CASES, ids=["6x10", "8x4-hb2"])
def test_heatbath_pion_and_condensate_against_dense(shape, kappa, beta, hb):
    _, theta, _ = _setup(shape, 12)
    grid = single_rank_grid(shape)
    th = Schwinger(grid, beta, kappa, hasenbusch=hb, cg_tol=1e-13, n_noise=3)
    tt = torch.from_numpy(theta)
    rng = SiteRNG(5)
    th.refresh(tt, rng, 9)
    terms = th.pseudofermion_terms()
    chi = complex_noise(rng, grid, PURPOSE_PSEUDOFERMION, 9, B, (len(terms),)).numpy()
    kappas = [*hb, kappa]
    for j, term in enumerate(terms):
        for b in range(B):
            eta = dense_dirac(theta[b], kappas[j]).conj().T @ to_dense(chi[b, j])
            if j > 0:  # ratio: phi = D_1^{-+} D^+ chi
                eta = np.linalg.solve(dense_dirac(theta[b], kappas[j - 1]).conj().T, eta)
            np.testing.assert_allclose(term.phi[b].numpy(), from_dense(eta, *shape), atol=1e-10)
        chi2 = (np.abs(chi[:, j]) ** 2).reshape(B, -1).sum(1)
        np.testing.assert_allclose(term.action(tt).numpy(), chi2, rtol=1e-10)

    obs = th.observables(tt)
    noise = complex_noise(
        SiteRNG(th.noise_seed), grid, PURPOSE_CONDENSATE_NOISE, th.noise_counter, B, (3,)
    ).numpy()
    lx, lt = shape
    for b in range(B):
        inv = np.linalg.inv(dense_dirac(theta[b], kappa))
        pion = (np.abs(inv[:, 0:2]) ** 2).sum(1).reshape(lx, lt, 2).sum((0, 2))
        got = np.array([obs[f"pion_C_{t}"][b].item() for t in range(lt)])
        np.testing.assert_allclose(got, pion, rtol=1e-9)
        est = np.mean([np.real(np.conj(to_dense(e)) @ inv @ to_dense(e)) for e in noise[b]])
        assert obs["pbp"][b].item() == pytest.approx(est / (lx * lt), rel=1e-10, abs=1e-12)
