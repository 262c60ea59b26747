"""Flows with fermions on the Schwinger model: the exact-determinant marginal (dense log-det)
with flow independence Metropolis and reverse-KL training, and trivialized HMC with
pseudofermions through :class:`TransformedTheory`. Exactness with *untrained* (randomised)
gauge-equivariant flows against the brute-force ``exp(-S_G) det(D)^2`` link Metropolis of
tests/schwinger_reference.py (independent numpy code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from schwinger_reference import dense_dirac, link_metropolis, plaquettes

from kernels.flows import u1_ncp_flow, u1_stout_flow
from kernels.flows.priors import UniformAnglePrior
from kernels.flows.schwinger_marginal import MarginalSizeError, SchwingerMarginal
from kernels.flows.train import TrainConfig, Trainer
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.schwinger import Schwinger
from parallel import single_rank_grid
from parallel.rng import SiteRNG

BETA, KAPPA = 2.0, 0.25


def untrained_flow(grid, scale=0.3):
    torch.manual_seed(19)
    flow = u1_ncp_flow(grid, n_layers=4, hidden=(), n_mix=1, stout_layers=2)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for layer in flow.layers[4:]:  # stout coefficients start at 0 (identity)
            layer.coeff.fill_(0.5)
    return flow


def per_chain_err(x):
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def reference(chains=64, sweeps=20, seed=1, beta=BETA, kappa=KAPPA):
    return per_chain_err(link_metropolis(beta, kappa, (4, 4), chains, sweeps, 10, seed))


def test_marginal_action_is_dense_effective_action_and_size_limit():
    grid = single_rank_grid((4, 6))
    th = Schwinger(grid, BETA, KAPPA)
    marg = SchwingerMarginal(th)
    gen = torch.Generator().manual_seed(2)
    theta = math.pi * (2 * torch.rand((3, 2, 4, 6), generator=gen) - 1)
    logdet = np.linalg.slogdet(dense_dirac(theta.numpy(), KAPPA))[1]
    sg = BETA * (1 - np.cos(plaquettes(theta.numpy()))).sum(axis=(1, 2))
    np.testing.assert_allclose(marg.action(theta).numpy(), sg - 2 * logdet, rtol=1e-12)
    # force = numerical derivative
    f = marg.force(theta)
    d = torch.randn(theta.shape, generator=gen)
    h = 1e-5
    num = (marg.action(theta + h * d) - marg.action(theta - h * d)) / (2 * h)
    torch.testing.assert_close((f * d).sum(dim=(1, 2, 3)), num, rtol=1e-6, atol=1e-6)
    with pytest.raises(MarginalSizeError, match="at most 1024 sites"):
        SchwingerMarginal(Schwinger(single_rank_grid((64, 32)), BETA, KAPPA))


def test_trained_marginal_flow_metropolis_matches_brute_force():
    """Reverse-KL training on exp(-S_G) det(D)^2 (dense log-det), then flow independence
    Metropolis with the trained flow (exact for any flow; training makes it mix)."""
    beta, kappa = 0.6, 0.24
    grid = single_rank_grid((4, 4))
    marg = SchwingerMarginal(Schwinger(grid, beta, kappa))
    prior = UniformAnglePrior(grid, (2,))
    torch.manual_seed(0)  # the initial weights (else they depend on the tests run before)
    flow = u1_ncp_flow(grid, n_layers=4, hidden=(4,), n_mix=1)
    cfg = TrainConfig(steps=40, batch=16, lr=5e-3, lr_schedule="constant")
    hist = Trainer(flow, marg, cfg, prior=prior, rng=SiteRNG(4)).train()
    first = np.mean([h["loss"] for h in hist[:5]])
    last = np.mean([h["loss"] for h in hist[-5:]])
    assert np.isfinite(last) and last < first - 0.3, (first, last)
    fm = FlowMetropolis(marg, flow, prior, SiteRNG(3))
    chains = 64
    state = fm.initial_state(0, chains)
    vals = []
    for c in range(1, 41):
        state, rec = fm.step(state, c)
        if c > 10:
            vals.append(torch.cos(marg.plaquette_angles(state.u)).mean(dim=(1, 2, 3)))
    assert 0.1 < fm.acceptance < 0.95
    m, e = per_chain_err(torch.stack(vals).mean(dim=0).numpy())
    ref_m, ref_e = reference(beta=beta, kappa=kappa)
    assert abs(m - ref_m) < 4 * math.hypot(e, ref_e), (m, e, ref_m, ref_e)


def test_trivialized_hmc_with_pseudofermions_matches_brute_force():
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, BETA, KAPPA, cg_tol=1e-9)
    flow = u1_stout_flow(grid, n_layers=4)
    with torch.no_grad():  # untrained but far from the identity
        for i, layer in enumerate(flow.layers):
            layer.coeff.fill_(0.6 - 0.3 * i)
    tt = TransformedTheory(th, flow)
    assert [t.name for t in tt.action_terms()] == ["gauge", "fermion", "logdet"]
    levels = [LevelSpec(("fermion",), 3), LevelSpec(("gauge", "logdet"), 2)]
    hmc = HMC(tt, make_integrator(tt, "omelyan", levels=levels), SiteRNG(6))
    v = tt.cold_start(48)
    vals, emdh = [], []
    for c in range(1, 13):
        v, rec = hmc.trajectory(v, c)
        assert int(rec.costs["fermion.cg_failures"].sum()) == 0
        if c > 4:
            u = tt.to_physical(v)
            vals.append(torch.cos(th.plaquette_angles(u)).mean(dim=(1, 2, 3)))
            emdh.append(rec.exp_minus_dH)
    e = torch.cat(emdh)
    assert abs(float(e.mean()) - 1) < 4 * float(e.std()) / math.sqrt(e.numel())
    m, err = per_chain_err(torch.stack(vals).mean(dim=0).numpy())
    ref_m, ref_e = reference(seed=2)
    assert abs(m - ref_m) < 4 * math.hypot(err, ref_e), (m, err, ref_m, ref_e)
