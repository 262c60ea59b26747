"""Conditional pseudofermion flow and the joint (U, phi) flow of the Schwinger model
(kernels/flows/schwinger_pf.py, schwinger_joint.py).

Checked against independent references: the log-det against ``slogdet`` of the autograd
Jacobian in the real representation, the pseudofermion action against the dense ``D`` of
tests/schwinger_reference.py and its gradients against finite differences, the joint
independence Metropolis against the brute-force ``exp(-S_G) det(D)^2`` link Metropolis
(plaquette and exact dense condensate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from schwinger_reference import condensate, dense_dirac, link_metropolis, plaquettes

from kernels.flows.schwinger_joint import (
    PURPOSE_CHI_PROPOSAL,
    JointFlowMetropolis,
    JointTrainer,
    joint_action,
    pseudofermion_action,
    schwinger_joint_flow,
)
from kernels.flows.schwinger_pf import ComplexGaussianPrior, pseudofermion_flow
from kernels.flows.train import TrainConfig
from kernels.theories.schwinger import Schwinger
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def randomise(module, scale=0.3, seed=5):
    """Perturb every parameter (the flows' initial weights come from the global torch RNG,
    seeded by the ``seeded`` fixture)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(1234)


def fields(shape, batch=2, seed=3):
    gen = torch.Generator().manual_seed(seed)
    theta = math.pi * (2 * torch.rand((batch, 2, *shape), generator=gen, dtype=torch.float64) - 1)
    chi = torch.randn((batch, 2, *shape), dtype=torch.complex128, generator=gen)
    return theta, chi


def to_complex(x, shape):
    return torch.complex(x[: x.numel() // 2], x[x.numel() // 2 :]).reshape(1, 2, *shape)


def to_real(z):
    return torch.cat([z.real.flatten(), z.imag.flatten()])


def test_conditional_logdet_equals_slogdet_of_jacobian_and_inverse_is_exact():
    shape = (2, 4)
    grid = single_rank_grid(shape)
    flow = pseudofermion_flow(grid, n_layers=3, hidden=4, init_kappa=0.2)
    randomise(flow)
    theta, chi = fields(shape)
    phi, logdet = flow(chi, theta)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda x, b=b: to_real(flow(to_complex(x, shape), theta[b : b + 1])[0]),
            to_real(chi[b]),
        )
        sign, ref = torch.linalg.slogdet(jac)
        assert float(sign) != 0.0
        assert abs(float(logdet[b].detach()) - float(ref)) < 1e-10, (
            float(logdet[b].detach()),
            float(ref),
        )
    # a non-trivial Jacobian: the log-det is not zero and the map is not the identity
    assert float(logdet.abs().min()) > 1e-3
    back, logdet_inv = flow.inverse(phi, theta)
    assert float((back - chi).abs().max()) < 1e-10
    torch.testing.assert_close(logdet_inv, -logdet, rtol=0, atol=1e-12)


def test_joint_logdet_equals_slogdet_of_full_jacobian():
    shape = (4, 4)
    grid = single_rank_grid(shape)
    gauge = {"builder": "kernels.flows.u1:u1_stout_flow", "kwargs": {"n_layers": 4}}
    flow = schwinger_joint_flow(grid, gauge, pf_layers=2, pf_hidden=4, init_kappa=0.2)
    randomise(flow, 0.2)
    v, chi = fields(shape, batch=1, seed=8)
    n_v = v.numel()

    def full(x):
        th, ph, _ = flow(x[:n_v].reshape(v.shape), to_complex(x[n_v:], shape))
        return torch.cat([th.flatten(), to_real(ph)])

    x0 = torch.cat([v.flatten(), to_real(chi)])
    jac = torch.autograd.functional.jacobian(full, x0)
    theta, phi, logdet = flow(v, chi)
    ref = torch.linalg.slogdet(jac)[1]
    assert abs(float(logdet[0]) - float(ref)) < 1e-9, (float(logdet[0]), float(ref))
    v2, chi2, logdet_inv = flow.inverse(theta, phi)
    assert float((chi2 - chi).abs().max()) < 1e-10
    assert float((v2 - v).abs().max()) < 1e-10
    assert abs(float(logdet_inv[0] + logdet[0])) < 1e-9


def test_conditional_flow_is_gauge_equivariant():
    shape = (4, 6)
    grid = single_rank_grid(shape)
    flow = pseudofermion_flow(grid, n_layers=4, hidden=4, init_kappa=0.2)
    randomise(flow)
    theta, chi = fields(shape)
    gen = torch.Generator().manual_seed(11)
    alpha = 2 * math.pi * torch.rand((2, *shape), generator=gen, dtype=torch.float64)
    # U_mu(x) -> g(x) U_mu(x) g(x + mu)^*, chi(x) -> g(x) chi(x), g = exp(i alpha)
    theta_g = torch.stack(
        [theta[:, mu] + alpha - torch.roll(alpha, -1, dims=1 + mu) for mu in range(2)], dim=1
    )
    g = torch.polar(torch.ones_like(alpha), alpha).unsqueeze(1)
    phi, ld = flow(chi, theta)
    phi_g, ld_g = flow(g * chi, theta_g)
    assert float((phi_g - g * phi).abs().max()) < 1e-12
    torch.testing.assert_close(ld_g, ld, rtol=0, atol=1e-12)
    # and the transport matters: without transforming chi the result is not covariant
    phi_bad, _ = flow(chi, theta_g)
    assert float((phi_bad - g * phi).abs().max()) > 1e-2


def test_pseudofermion_action_matches_dense_and_finite_differences():
    shape = (4, 4)
    grid = single_rank_grid(shape)
    kappa = 0.22
    th = Schwinger(grid, 1.0, kappa, cg_tol=1e-13)
    theta, phi = fields(shape, batch=2, seed=21)
    d = dense_dirac(theta.numpy(), kappa)
    m = np.conj(np.transpose(d, (0, 2, 1))) @ d
    p = phi.reshape(2, -1).numpy()
    ref = np.einsum("bi,bi->b", p.conj(), np.linalg.solve(m, p[..., None])[..., 0]).real
    s = pseudofermion_action(th, theta, phi)
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-10)
    # gradients (custom backward with the CG solution) vs central differences
    theta_r = theta.clone().requires_grad_(True)
    phi_r = phi.clone().requires_grad_(True)
    sg = theta.new_tensor([0.7, -1.3])
    (pseudofermion_action(th, theta_r, phi_r) * sg).sum().backward()
    gen = torch.Generator().manual_seed(2)
    dt = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    dp = torch.randn(phi.shape, generator=gen, dtype=torch.complex128)
    h = 1e-5
    with torch.no_grad():
        f = lambda a, b: (pseudofermion_action(th, a, b) * sg).sum()  # noqa: E731
        num_t = (f(theta + h * dt, phi) - f(theta - h * dt, phi)) / (2 * h)
        num_p = (f(theta, phi + h * dp) - f(theta, phi - h * dp)) / (2 * h)
    an_t = (theta_r.grad * dt).sum()
    an_p = (phi_r.grad.real * dp.real + phi_r.grad.imag * dp.imag).sum()
    assert abs(float(an_t - num_t)) < 1e-6 * max(1.0, abs(float(num_t))), (an_t, num_t)
    assert abs(float(an_p - num_p)) < 1e-6 * max(1.0, abs(float(num_p))), (an_p, num_p)
    # the joint action normalises the phi integral: S = S_G + S_F + 2 V log(pi)
    sg_ref = 1.0 * (1 - np.cos(plaquettes(theta.numpy()))).sum(axis=(1, 2))
    np.testing.assert_allclose(
        joint_action(th, theta, phi).numpy(), sg_ref + ref + 32 * math.log(math.pi), rtol=1e-10
    )


def test_conditional_density_is_normalised_against_the_dense_determinant():
    """For fixed U, E_chi[p(phi|U) / q(phi|U)] = 1 with p(phi|U) = exp(-phi^+ M^-1 phi) /
    (pi^{2V} det M) (det from the dense reference): checks log-dets, priors and constants."""
    shape = (4, 4)
    grid = single_rank_grid(shape)
    kappa = 0.1
    th = Schwinger(grid, 1.0, kappa)
    flow = pseudofermion_flow(grid, n_layers=2, hidden=4, init_kappa=kappa)
    randomise(flow, 0.02)
    with torch.no_grad():  # a definite volume change: log-det about 2 * 32 * 0.05
        for layer in flow.layers:
            layer.net[2].bias.add_(0.05)
    prior = ComplexGaussianPrior(grid)
    n = 2000
    for seed in (1, 2):
        theta, _ = fields(shape, batch=1, seed=seed)
        theta = 0.5 * theta
        log_det_m = 2 * np.linalg.slogdet(dense_dirac(theta.numpy(), kappa))[1][0]
        chi = prior.sample(SiteRNG(seed), 0, n, 0, PURPOSE_CHI_PROPOSAL)
        th_n = theta.expand(n, -1, -1, -1)
        with torch.no_grad():
            phi, logdet = flow(chi, th_n)
            log_p = -pseudofermion_action(th, th_n, phi) - 32 * math.log(math.pi) - log_det_m
        log_r = (log_p - (prior.log_prob(chi) - logdet)).numpy()
        r = np.exp(log_r)
        assert np.std(log_r) > 0.1  # q is not p: the check is not trivial
        assert abs(r.mean() - 1) < 4 * r.std(ddof=1) / math.sqrt(n), (r.mean(), r.std())
        assert float(logdet.abs().min()) > 1.0
        # a wrong normalisation (the real log-det of f_c taken once: |det|, not |det|^2) fails
        r_bad = np.exp(log_r - 0.5 * logdet.numpy())
        assert abs(r_bad.mean() - 1) > 4 * r_bad.std(ddof=1) / math.sqrt(n)


def run_joint(beta, kappa, train_steps, chains, steps, therm, seed=0, start=None):
    """Train a joint flow on 4x4, then joint independence Metropolis from ``start`` (gauge
    fields; ``None``: one proposal each); per-chain mean plaquette and exact condensate."""
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, beta, kappa, cg_tol=1e-10)
    torch.manual_seed(seed)
    flow = schwinger_joint_flow(
        grid,
        {"builder": "kernels.flows.u1:u1_ncp_flow", "kwargs": {"n_layers": 4, "hidden": [4]}},
        pf_layers=2,
        pf_hidden=4,
        init_kappa=kappa,
    )
    cfg = TrainConfig(steps=train_steps, batch=16, lr=5e-3, lr_schedule="constant")
    trainer = JointTrainer(flow, th, cfg, rng=SiteRNG(seed + 4))
    hist = trainer.train()
    assert trainer.cg.failures == 0 and trainer.cg.solves == 16 * train_steps
    flow.requires_grad_(False)
    fm = JointFlowMetropolis(th, flow, SiteRNG(seed + 3))
    if start is None:
        state = fm.initial_state(0, chains)
    else:
        state = fm.state_of(torch.from_numpy(start))
    plaq, pbp = [], []
    for c in range(1, steps + 1):
        state, _ = fm.step(state, c)
        if c > therm:
            plaq.append(torch.cos(th.plaquette_angles(state.u)).mean(dim=(1, 2, 3)).numpy())
            pbp.append(condensate(state.u.numpy(), kappa))
    return hist, fm, np.mean(plaq, axis=0), np.mean(pbp, axis=0)


def mean_err(x):
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def compare(ours, ref, what):
    m, e = mean_err(ours)
    rm, re = mean_err(ref)
    assert abs(m - rm) < 4 * math.hypot(e, re), (what, m, e, rm, re)
    return m, e, rm, re


def test_joint_training_and_metropolis_keep_the_brute_force_distribution():
    """Short: train briefly, start the joint chains from equilibrium configurations of the
    brute-force sampler (``phi`` from the heatbath, ``log q`` through the inverse flows) and
    check that the joint Metropolis keeps plaquette and condensate at the brute-force values
    of an independent reference run; a wrong weight would drift away as proposals are
    accepted (about one in eight here)."""
    beta, kappa = 0.6, 0.2
    _, start = link_metropolis(beta, kappa, (4, 4), 64, 1, 10, 5, return_fields=True)
    hist, fm, plaq, pbp = run_joint(beta, kappa, 20, 64, 30, 0, start=start)
    first = np.mean([h["loss"] for h in hist[:5]])
    last = np.mean([h["loss"] for h in hist[-5:]])
    assert np.isfinite(last) and last < first, (first, last)
    assert 0.05 < fm.acceptance < 0.95, fm.acceptance
    ref_plaq, ref_pbp = link_metropolis(beta, kappa, (4, 4), 64, 20, 10, 1, with_condensate=True)
    compare(plaq, ref_plaq, "plaquette")
    compare(pbp, ref_pbp, "condensate")


@pytest.mark.slow
def test_joint_sampler_from_flow_draws_matches_brute_force_long():
    """Long: chains start from flow proposals and thermalise by joint Metropolis alone."""
    beta, kappa = 0.6, 0.2
    _, fm, plaq, pbp = run_joint(beta, kappa, 200, 128, 240, 80, seed=1)
    assert fm.acceptance > 0.1
    ref_plaq, ref_pbp = link_metropolis(beta, kappa, (4, 4), 128, 60, 20, 2, with_condensate=True)
    compare(plaq, ref_plaq, "plaquette")
    compare(pbp, ref_pbp, "condensate")
