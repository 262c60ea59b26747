"""2D Schwinger model (U(1) + Nf = 2 Wilson fermions): operator, solver, force, HMC, physics.

The dense reference (tests/schwinger_reference.py) is written from the conventions in numpy
and shares no code with kernels/.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from schwinger_reference import SIGMA, dense_dirac, link_metropolis, plaquettes

from kernels.fermions import CGNotConverged, WilsonDirac, conjugate_gradient
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories import make_theory
from kernels.theories.schwinger import Schwinger, effective_mass
from kernels.theories.u1_exact import mean_plaquette
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def random_theta(batch, shape, seed=0, scale=math.pi):
    gen = torch.Generator().manual_seed(seed)
    return scale * (2.0 * torch.rand((batch, 2, *shape), generator=gen) - 1.0)


def operator_matrix(apply, batch, shape):
    """Dense matrices of a batched matrix-free operator, by applying it to unit vectors."""
    n = 2 * shape[0] * shape[1]
    eye = torch.eye(n, dtype=torch.complex128).reshape(n, 2, *shape)
    cols = apply(eye.repeat(batch, 1, 1, 1))  # batch-major: chain b, unit vector j
    return cols.reshape(batch, n, n).transpose(1, 2).numpy()


def op_for(theta, kappa, shape, bc=("periodic", "antiperiodic"), n=None):
    n = 2 * shape[0] * shape[1] if n is None else n
    return WilsonDirac(single_rank_grid(shape), theta.repeat_interleave(n, dim=0), kappa, bc)


# ------------------------------------------------------------------ the operator
@pytest.mark.parametrize("antiperiodic", [True, False])
def test_dirac_equals_dense_matrix(antiperiodic):
    shape, kappa = (4, 6), 0.23
    theta = random_theta(2, shape, seed=1)
    bc = ("periodic", "antiperiodic" if antiperiodic else "periodic")
    op = op_for(theta, kappa, shape, bc)
    got = operator_matrix(op.apply, 2, shape)
    ref = dense_dirac(theta.numpy(), kappa, antiperiodic_t=antiperiodic)
    np.testing.assert_allclose(got, ref, atol=1e-14)
    got_dag = operator_matrix(op.apply_dag, 2, shape)
    np.testing.assert_allclose(got_dag, ref.conj().transpose(0, 2, 1), atol=1e-14)
    # the boundary condition matters (the test can tell them apart)
    other = dense_dirac(theta.numpy(), kappa, antiperiodic_t=not antiperiodic)
    assert np.abs(other - got).max() > 0.1


def test_gamma5_hermiticity_and_real_determinant():
    shape, kappa = (4, 4), 0.27
    theta = random_theta(3, shape, seed=2)
    op = op_for(theta, kappa, shape)
    d = operator_matrix(op.apply, 3, shape)
    ddag = operator_matrix(op.apply_dag, 3, shape)
    g5 = np.kron(SIGMA[2], np.eye(16))
    np.testing.assert_allclose(g5 @ d @ g5, ddag, atol=1e-14)
    det = np.linalg.det(d)
    assert np.all(np.abs(det.imag) < 1e-10 * np.abs(det))
    assert np.all(np.abs(det.real) > 1e-6)


def test_even_odd_schur_complement_determinant_and_solve():
    shape, kappa = (4, 6), 0.24
    theta = random_theta(2, shape, seed=3)
    op = op_for(theta, kappa, shape)
    d = operator_matrix(op.apply, 2, shape)
    dhat = operator_matrix(op.schur, 2, shape)
    odd = op.parity().reshape(-1).bool().repeat(2).numpy()  # (spin, site) order
    dhat_oo = dhat[:, odd][:, :, odd]
    # D_hat maps odd-only spinors to odd-only spinors and keeps det D
    assert np.abs(dhat[:, ~odd][:, :, odd]).max() == 0.0
    np.testing.assert_allclose(np.linalg.det(dhat_oo), np.linalg.det(d), rtol=1e-10)
    th = Schwinger(single_rank_grid(shape), beta=1.0, kappa=kappa, cg_tol=1e-12)
    b = torch.randn(
        2, 2, *shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)
    )
    x = th.solve(theta, b)
    ref = np.linalg.solve(d, b.reshape(2, -1, 1).numpy())[..., 0]
    np.testing.assert_allclose(x.reshape(2, -1).numpy(), ref, atol=1e-9)


def test_cg_equals_dense_solve_and_reports_failure():
    shape, kappa = (4, 4), 0.25
    grid = single_rank_grid(shape)
    theta = random_theta(3, shape, seed=4)
    op = WilsonDirac(grid, theta, kappa)
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(3, 2, *shape, dtype=torch.complex128, generator=gen)
    b[2] = 0.0  # a zero right-hand side: x = 0 at once
    res = conjugate_gradient(op.normal, b, grid, tol=1e-10, max_iter=500)
    assert bool(res.converged.all()) and res.iterations[2] == 0
    assert float(res.residual.max()) <= 1e-10
    d = dense_dirac(theta.numpy(), kappa)
    a = d.conj().transpose(0, 2, 1) @ d
    ref = np.linalg.solve(a, b.reshape(3, -1, 1).numpy())[..., 0]
    err = np.linalg.norm(res.x.reshape(3, -1).numpy() - ref, axis=1)
    cond = np.linalg.cond(a)
    assert np.all(err[:2] <= 1e-10 * cond[:2] * np.linalg.norm(ref[:2], axis=1))
    assert np.all(err[:2] <= 1e-6 * np.linalg.norm(ref[:2], axis=1))
    capped = conjugate_gradient(op.normal, b, grid, tol=1e-10, max_iter=3)
    assert not bool(capped.converged[0]) and int(capped.iterations[0]) == 3
    assert bool(capped.converged[2])
    with pytest.raises(CGNotConverged, match=r"chain\(s\) \[0, 1\]"):
        capped.check("test solve")


# ------------------------------------------------------------------ theory and force
def test_registry_params_and_bad_input():
    grid = single_rank_grid((4, 4))
    th = make_theory("schwinger", grid, beta=2.0, kappa=0.26, hasenbusch=[0.2])
    assert isinstance(th, Schwinger)
    assert th.params == {"beta": 2.0, "kappa": 0.26, "hasenbusch": [0.2]}
    assert [t.name for t in th.action_terms()] == ["gauge", "hasenbusch_0", "fermion"]
    with pytest.raises(ValueError, match="hasenbusch"):
        Schwinger(grid, 2.0, 0.26, hasenbusch=[0.3])
    with pytest.raises(ValueError, match="even extents"):
        Schwinger(single_rank_grid((4, 5)), 2.0, 0.2)
    with pytest.raises(RuntimeError, match="refresh"):
        th.action(th.cold_start(1))


@pytest.mark.parametrize("hasenbusch", [(), (0.12, 0.2)])
def test_fermion_force_equals_numerical_derivative(hasenbusch):
    shape = (4, 6)
    th = Schwinger(single_rank_grid(shape), 1.3, 0.24, hasenbusch=hasenbusch, cg_tol=1e-13)
    rng = SiteRNG(7)
    theta = th.hot_start(rng, 0, 2)
    th.refresh(theta, rng, 1)
    gen = torch.Generator().manual_seed(3)
    for term in th.action_terms():
        f = term.force(theta)
        for _ in range(2):
            d = torch.randn(theta.shape, generator=gen)
            h = 1e-5
            num = (term.action(theta + h * d) - term.action(theta - h * d)) / (2 * h)
            ana = (f * d).sum(dim=(1, 2, 3))
            torch.testing.assert_close(ana, num, rtol=1e-6, atol=1e-6)
        if term.name != "gauge":
            assert float(f.abs().max()) > 1e-2  # not vacuous
    # the heatbath gives S = chi^+ chi: about one per component
    s = sum(t.action(theta) for t in th.pseudofermion_terms())
    n = 2 * 24 * len(th.pseudofermion_terms())
    assert torch.all((s - n).abs() < 6 * math.sqrt(n))


def test_heatbath_gives_chi_squared_for_plain_and_ratio_terms():
    """Heatbath ``phi = M^+ chi`` (plain) / ``M_1^{-+} M^+ chi`` (ratio) means
    ``S(phi) = chi^+ chi`` exactly at the start field, with each term's own noise slice."""
    from kernels.theories.schwinger import PURPOSE_PSEUDOFERMION, complex_noise

    shape = (4, 6)
    grid = single_rank_grid(shape)
    th = Schwinger(grid, 1.0, 0.25, hasenbusch=[0.1, 0.2], cg_tol=1e-13)
    rng = SiteRNG(21)
    theta = th.hot_start(rng, 0, 2)
    th.refresh(theta, rng, 7)
    chi = complex_noise(rng, grid, PURPOSE_PSEUDOFERMION, 7, 2, (3,))
    for j, t in enumerate(th.pseudofermion_terms()):
        want = (chi[:, j].abs() ** 2).sum(dim=(1, 2, 3))
        torch.testing.assert_close(t.action(theta), want, rtol=1e-9, atol=1e-9)
    # <|chi|^2> = 1 per component (|chi|^2 is exponential: standard deviation 1)
    assert abs(float((chi.abs() ** 2).mean()) - 1.0) < 4 / math.sqrt(chi.numel())
    # the terms draw different noise
    assert not torch.allclose(chi[:, 0], chi[:, 1])


def test_hamiltonian_and_force_are_gauge_invariant():
    shape = (4, 6)
    th = Schwinger(single_rank_grid(shape), 1.1, 0.22, hasenbusch=[0.15], cg_tol=1e-13)
    rng = SiteRNG(5)
    theta = th.hot_start(rng, 0, 2)
    th.refresh(theta, rng, 1)
    s0, f0 = th.action(theta), th.force(theta)
    alpha = random_theta(2, shape, seed=9)[:, 0]
    gauged = theta.clone()
    for mu in range(2):
        gauged[:, mu] += alpha - torch.roll(alpha, -1, dims=1 + mu)
    phase = torch.polar(torch.ones_like(alpha), alpha).unsqueeze(1)
    for t in th.pseudofermion_terms():
        t.phi = phase * t.phi  # phi(x) -> e^{i alpha(x)} phi(x)
    torch.testing.assert_close(th.action(gauged), s0, rtol=1e-11, atol=1e-9)
    torch.testing.assert_close(th.force(gauged), f0, rtol=1e-8, atol=1e-8)
    # not vacuous: without transforming phi the fermion action changes
    for t in th.pseudofermion_terms():
        t.phi = phase.conj() * t.phi
    assert float((th.action(gauged) - s0).abs().max()) > 1e-3


# ------------------------------------------------------------------ HMC
def schwinger_hmc(th, steps=(4, 3), tau=1.0, seed=11, **kw):
    levels = [LevelSpec(tuple(n for n in (t.name for t in th.pseudofermion_terms())), steps[0])]
    levels.append(LevelSpec(("gauge",), steps[1]))
    integ = make_integrator(th, "omelyan", trajectory_length=tau, levels=levels)
    return HMC(th, integ, SiteRNG(seed), **kw)


@pytest.mark.parametrize("hasenbusch", [(), (0.18,)])
def test_hmc_reversibility_and_costs(hasenbusch):
    shape = (4, 4)
    th = Schwinger(single_rank_grid(shape), 2.0, 0.25, hasenbusch=hasenbusch, cg_tol=1e-12)
    hmc = schwinger_hmc(th, steps=(3, 2), reversibility_every=1)
    theta = th.hot_start(hmc.rng, 0, 4)
    for c in range(1, 3):
        theta, rec = hmc.trajectory(theta, c)
        assert float(rec.reversibility_field_error.max()) < 1e-9
        assert float(rec.reversibility_dH_error.max()) < 1e-8
        assert float(rec.dH.abs().max()) > 1e-5  # not a trivially exact integrator
        for t in th.pseudofermion_terms():
            it = rec.costs[f"{t.name}.cg_iterations"]
            assert it.shape == (4,) and bool((it > 10).all())
            assert int(rec.costs[f"{t.name}.cg_failures"].sum()) == 0


def test_cg_failure_rejects_the_trajectory():
    th = Schwinger(single_rank_grid((4, 4)), 2.0, 0.25, cg_max_iter=5)
    hmc = schwinger_hmc(th)
    theta = th.hot_start(hmc.rng, 0, 2)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        new, rec = hmc.trajectory(theta, 1)
    assert rec.n_nonfinite == 2 and not bool(rec.accepted.any())
    assert torch.equal(new, theta)
    assert bool((rec.costs["fermion.cg_failures"] > 0).all())


def hmc_plaquette(beta, kappa, chains, n_traj, therm, seed, hasenbusch=()):
    """Per-chain mean plaquettes of Schwinger HMC on 4x4, and all ``exp(-dH)`` after
    thermalisation."""
    th = Schwinger(single_rank_grid((4, 4)), beta, kappa, hasenbusch=hasenbusch, cg_tol=1e-9)
    hmc = schwinger_hmc(th, steps=(3, 2), seed=seed)
    theta = th.hot_start(hmc.rng, 0, chains)
    vals, emdh = [], []
    for c in range(1, n_traj + therm + 1):
        theta, rec = hmc.trajectory(theta, c)
        if c > therm:
            vals.append(torch.cos(th.plaquette_angles(theta)).mean(dim=(1, 2, 3)))
            emdh.append(rec.exp_minus_dH)
    per_chain = torch.stack(vals).mean(dim=0).numpy()
    return per_chain, torch.cat(emdh).numpy()


def mean_err(per_chain):
    return float(np.mean(per_chain)), float(np.std(per_chain, ddof=1) / math.sqrt(len(per_chain)))


EXACT_POINTS = [(1.0, 0.22), (2.0, 0.25)]


def check_against_brute_force(
    beta, kappa, chains, n_traj, therm, sweeps, seed, sensitive=True, hasenbusch=()
):
    per_chain, emdh = hmc_plaquette(beta, kappa, chains, n_traj, therm, seed, hasenbusch)
    hmc_m, hmc_e = mean_err(per_chain)
    ref_m, ref_e = mean_err(link_metropolis(beta, kappa, (4, 4), chains, sweeps, 10, seed))
    sigma = math.hypot(hmc_e, ref_e)
    assert abs(hmc_m - ref_m) < 4 * sigma, (hmc_m, hmc_e, ref_m, ref_e)
    # sensitivity: the fermions shift the plaquette away from the quenched exact value
    # (the short runs are too short to resolve it at beta = 1)
    quenched = mean_plaquette(beta, (4, 4))
    if sensitive:
        assert ref_m - quenched > 3 * ref_e, (ref_m, ref_e, quenched)
    # <exp(-dH)> = 1
    assert abs(emdh.mean() - 1.0) < 4 * emdh.std() / math.sqrt(emdh.size), emdh.mean()
    assert np.mean(emdh < 1.0) > 0.05  # dH is not trivially zero


@pytest.mark.parametrize("point", EXACT_POINTS)
def test_hmc_matches_brute_force_determinant_4x4_short(point):
    check_against_brute_force(
        *point, chains=64, n_traj=8, therm=4, sweeps=20, seed=1, sensitive=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", EXACT_POINTS)
def test_hmc_matches_brute_force_determinant_4x4_long(point):
    check_against_brute_force(*point, chains=64, n_traj=300, therm=10, sweeps=400, seed=2)


@pytest.mark.slow
def test_hmc_hasenbusch_matches_brute_force_determinant_4x4_long():
    check_against_brute_force(
        2.0, 0.25, chains=64, n_traj=200, therm=10, sweeps=400, seed=3, hasenbusch=(0.15, 0.2)
    )


def test_small_kappa_is_quenched_exact_u1():
    per_chain, emdh = hmc_plaquette(1.5, 1e-3, 96, 8, 4, seed=3)
    m, e = mean_err(per_chain)
    assert np.mean(np.minimum(emdh, 1.0)) > 0.5
    assert abs(m - mean_plaquette(1.5, (4, 4))) < 4 * e


def test_hopping_expansion_of_log_det():
    """``ln det D = -sum_n kappa^n/n tr H^n``; non-backtracking closed paths (the Wilson
    projectors kill backtracking, ``(1 - g)(1 + g) = 0``) first appear at n = 4: the
    plaquettes, both orientations, each counted at its 4 starting sites (cancelling 1/4):

        ln det D = -kappa^4 sum_P [tr((1-g0)(1-g1)(1+g0)(1+g1)) e^{i theta_P} + c.c.] + O(k^6)
                 = 8 kappa^4 sum_P cos theta_P + O(kappa^6)

    (``tr(...) = -4`` for ``g0 = sigma_1, g1 = sigma_2``), on lattices with extents > 4 so that
    no loop wraps around the torus at this order."""
    p0, p1 = np.eye(2) - SIGMA[0], np.eye(2) - SIGMA[1]
    q0, q1 = np.eye(2) + SIGMA[0], np.eye(2) + SIGMA[1]
    assert np.trace(p0 @ p1 @ q0 @ q1) == pytest.approx(-4.0)
    shape = (6, 8)
    theta = random_theta(3, shape, seed=8, scale=1.0).numpy()
    cos_sum = np.cos(plaquettes(theta)).sum(axis=(1, 2))
    assert np.all(np.abs(cos_sum) > 1.0)
    rest = {}
    for kappa in (0.01, 0.02):
        grid = single_rank_grid(shape)
        op = WilsonDirac(grid, torch.from_numpy(theta).repeat_interleave(96, dim=0), kappa)
        logdet = np.linalg.slogdet(operator_matrix(op.apply, 3, shape))[1]
        rest[kappa] = (logdet - 8 * kappa**4 * cos_sum) / kappa**6
        # a wrong coefficient fails: 7 kappa^4 leaves a remainder ~ cos_sum / kappa^2
        assert np.all(np.abs(logdet - 7 * kappa**4 * cos_sum) / kappa**6 > 1e3)
    # the remainder is O(kappa^6): (ln det - lead) / kappa^6 is the same at both kappas up to
    # O(kappa^2), and bounded by the length-6 loops (4 V rectangles, |tr| <= 2 * 2^6)
    np.testing.assert_allclose(rest[0.01], rest[0.02], rtol=0.02)
    assert np.all(np.abs(rest[0.01]) < 4 * 48 * 128)


# ------------------------------------------------------------------ observables
def test_condensate_and_pion_correlator_against_dense_inverse():
    shape = (4, 6)
    th = Schwinger(single_rank_grid(shape), 1.0, 0.2, n_noise=64, cg_tol=1e-12)
    theta = random_theta(2, shape, seed=6)
    dinv = np.linalg.inv(dense_dirac(theta.numpy(), 0.2))
    exact = np.trace(dinv, axis1=1, axis2=2).real / 24
    est = th.chiral_condensate(theta).numpy()
    # stochastic: each noise vector has variance sum_{ij} |Dinv_ij|^2 (off-diagonal) / V^2
    sd = (
        np.sqrt(
            (np.abs(dinv) ** 2).sum(axis=(1, 2))
            - (np.abs(np.diagonal(dinv, axis1=1, axis2=2)) ** 2).sum(axis=1)
        )
        / 24
    )
    assert np.all(np.abs(est - exact) < 5 * sd / 8)
    assert np.all(np.abs(est - exact) > 0)  # a real estimate, not the exact trace
    # pion: C(t) = sum_x sum_{s s'} |Dinv[(s, x, t), (s', 0, 0)]|^2
    c = th.pion_correlator(theta).numpy()
    cols = dinv[:, :, [0, 24]]  # sources (s', site 0)
    dens = (np.abs(cols) ** 2).sum(axis=2).reshape(2, 2, *shape).sum(axis=(1, 2))
    np.testing.assert_allclose(c, dens, rtol=1e-9)
    m = effective_mass(torch.from_numpy(c)).numpy()
    np.testing.assert_allclose(m, np.log(dens[:, :-1] / dens[:, 1:]), rtol=1e-9)
    obs = th.observables(theta)
    assert {"plaquette", "Q", "Q_int", "pbp", "pion_C_0", "pion_C_5"} <= set(obs)
    assert obs["pbp"].shape == (2,)
