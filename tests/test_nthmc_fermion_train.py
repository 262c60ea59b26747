"""Force-norm training of NTHMC on the full Schwinger force (gauge + pseudofermion + log-det),
kernels/flows/force_norm_fermions.py (issue 15 item 5).

* the loss gradient with respect to the flow parameters against central finite differences
  of the loss (float64, 4x4, CG tolerance 1e-13, fixed pseudofermions);
* the loss value against an independent dense computation: ``F~ = dS~/dV`` by finite
  differences of ``S~(V) = S_G(F(V)) + phi^+ (D^+D)^{-1} phi - log det`` with the dense
  Wilson-Dirac matrix of tests/schwinger_reference.py (numpy), plain and Hasenbusch;
* ``fermions=False`` is the gauge-force training of the U(1) theory;
* the pseudofermions are redrawn every step and reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from schwinger_reference import dense_dirac

from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer
from kernels.flows.force_norm_fermions import PURPOSE_PF_TRAIN, schwinger_force_norm_trainer
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.theories.schwinger import PURPOSE_PSEUDOFERMION, Schwinger, complex_noise
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

BETA, KAPPA = 2.0, 0.24


def _flow(grid, seed=11):
    torch.manual_seed(seed)
    flow = u1_nthmc_flow(grid, hidden=(2,), identity_init=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(3.0)
    return flow


def _setup(hasenbusch=(), batch=2, fermions=True):
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, BETA, KAPPA, hasenbusch=hasenbusch, cg_tol=1e-13)
    configs = th.hot_start(SiteRNG(8), 0, batch)
    cfg = ForceNormConfig(steps=2, batch=batch, lr=1e-2, validate_every=0)
    tr = schwinger_force_norm_trainer(_flow(grid), th, configs, cfg, fermions=fermions, seed=4)
    return grid, th, configs, tr


def test_loss_gradient_matches_finite_differences():
    _, th, configs, tr = _setup()
    tr.prepare(configs, 1)
    params = list(tr.flow.parameters())
    loss, _ = tr.loss(configs)
    grads = torch.autograd.grad(loss, params)
    g = torch.Generator().manual_seed(3)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    ana = sum(float((gr * d).sum()) for gr, d in zip(grads, dirs, strict=True))

    def at(h: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(h * d)
        val = float(tr.loss(configs)[0].detach())
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.sub_(h * d)
        return val

    h = 1e-5
    num = (at(h) - at(-h)) / (2 * h)
    assert abs(ana) > 1e-3
    assert abs(ana - num) < 1e-6 * abs(num), (ana, num)
    assert tr.physical.stats.solves > 0


def _dense_action(th, u: np.ndarray, phis: list[np.ndarray]) -> np.ndarray:
    """``S_G + sum_terms S_pf`` per chain with dense matrices (numpy)."""
    plaq = u[:, 0] + np.roll(u[:, 1], -1, axis=1) - np.roll(u[:, 0], -1, axis=2) - u[:, 1]
    out = BETA * (1 - np.cos(plaq)).sum(axis=(1, 2))
    kappas = [*th.hasenbusch, th.kappa]
    for c in range(u.shape[0]):
        for i, k in enumerate(kappas):
            d = dense_dirac(u[c], k)
            phi = phis[i][c].reshape(-1)
            eta = phi if i == 0 else dense_dirac(u[c], kappas[i - 1]).conj().T @ phi
            out[c] += float(np.real(eta.conj() @ np.linalg.solve(d.conj().T @ d, eta)))
    return out


@pytest.mark.parametrize("hasenbusch", [(), (0.2,)])
def test_loss_value_matches_dense_finite_difference_force(hasenbusch):
    _, th, configs, tr = _setup(hasenbusch)
    tr.prepare(configs, 1)
    loss, f = tr.loss(configs)
    phis = [t.phi.numpy() for t in th.pseudofermion_terms()]
    flow = tr.flow
    with torch.no_grad():
        v = flow.inverse(configs)[0]

    def s_tilde(vv: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            u, logdet = flow(vv)
        return _dense_action(th, u.numpy(), phis) - logdet.numpy()

    h = 1e-4
    num = torch.zeros_like(v)
    for idx in np.ndindex(v.shape[1:]):
        e = torch.zeros_like(v)
        e[(slice(None), *idx)] = 1.0
        d1 = s_tilde(v + h * e) - s_tilde(v - h * e)
        d2 = s_tilde(v + 2 * h * e) - s_tilde(v - 2 * h * e)
        num[(slice(None), *idx)] = torch.as_tensor((8 * d1 - d2) / (12 * h))
    torch.testing.assert_close(f.detach(), num, rtol=0, atol=1e-6)
    ref = float(num.square().mean())
    assert abs(float(loss.detach()) - ref) < 1e-7 * ref
    # the fermion force is not negligible here: the gauge-only loss differs
    _, _, _, tr_g = _setup(hasenbusch, fermions=False)
    assert abs(float(tr_g.loss(configs)[0].detach()) - ref) > 0.02 * ref


def test_gauge_only_equals_u1_training_and_redraws_per_step():
    grid, th, configs, tr = _setup(fermions=False)
    u1 = U1Gauge(grid, BETA)
    cfg = ForceNormConfig(steps=2, batch=2, lr=1e-2, validate_every=0)
    tr_u1 = ForceNormTrainer(_flow(grid), u1, configs, cfg)
    torch.testing.assert_close(tr.loss(configs)[0], tr_u1.loss(configs)[0], rtol=1e-13, atol=0)

    # full force: a fresh draw per step (counter step + 1), the same draw from the same seed
    _, th, configs, tr = _setup(batch=1)
    tr.batch_at(0)
    phi0 = th.pseudofermion_terms()[0].phi.clone()
    tr.batch_at(1)
    phi1 = th.pseudofermion_terms()[0].phi.clone()
    assert not torch.equal(phi0, phi1)
    _, th2, _, tr2 = _setup(batch=1)
    tr2.batch_at(1)
    assert torch.equal(th2.pseudofermion_terms()[0].phi, phi1)
    # phi = D^+ chi at the configuration: chi = (D^+)^{-1} phi is the site-keyed draw
    d = dense_dirac(configs[0].numpy(), KAPPA)
    chi = np.linalg.solve(d.conj().T, phi1[0].numpy().reshape(-1))
    ref = complex_noise(SiteRNG(4), grid, PURPOSE_PF_TRAIN, 2, 1, (1,))[0, 0]
    np.testing.assert_allclose(chi, ref.numpy().reshape(-1), rtol=0, atol=1e-10)
    # ... and not the draw HMC makes with the same seed and counter (its own purpose)
    hmc = complex_noise(SiteRNG(4), grid, PURPOSE_PSEUDOFERMION, 2, 1, (1,))[0, 0]
    assert np.abs(chi - hmc.numpy().reshape(-1)).max() > 0.1


@pytest.mark.slow
def test_nthmc_trained_on_full_force_is_exact():
    """Exactness with a *trained* model: train on configurations of the brute-force
    ``exp(-S_G) det(D)^2`` link Metropolis (tests/schwinger_reference.py), then NTHMC
    (pseudofermions at ``U = F(V)``, fermion + flow outer, plain gauge inner) reproduces its
    plaquette."""
    import math

    from schwinger_reference import link_metropolis

    from kernels.integrators import LevelSpec, make_integrator
    from kernels.samplers.hmc import HMC
    from kernels.samplers.nthmc import FlowSplitTheory

    beta, kappa = 2.0, 0.25
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, beta, kappa, cg_tol=1e-9)
    _, fields = link_metropolis(beta, kappa, (4, 4), 16, 4, 10, 12, return_fields=True)
    data = torch.from_numpy(np.asarray(fields))
    torch.manual_seed(2)
    flow = u1_nthmc_flow(grid, hidden=(4,))
    cfg = ForceNormConfig(steps=15, batch=8, lr=1e-2, validate_every=0)
    tr = schwinger_force_norm_trainer(flow, th, data[:12], cfg, seed=5)
    before = tr.evaluate(data[12:])
    tr.train()
    assert tr.evaluate(data[12:]) < before  # the held-out full-force objective went down
    tt = FlowSplitTheory(th, flow)
    levels = [LevelSpec(("flow_correction",), 3), LevelSpec(("gauge_plain",), 2)]
    hmc = HMC(tt, make_integrator(tt, "omelyan", levels=levels), SiteRNG(6))
    v = tt.cold_start(48)
    vals, emdh = [], []
    for c in range(1, 13):
        v, rec = hmc.trajectory(v, c)
        if c > 4:
            u = tt.to_physical(v)
            vals.append(torch.cos(th.plaquette_angles(u)).mean(dim=(1, 2, 3)))
            emdh.append(rec.exp_minus_dH)
    e = torch.cat(emdh)
    assert abs(float(e.mean()) - 1) < 4 * float(e.std()) / math.sqrt(e.numel())
    per_chain = torch.stack(vals).mean(dim=0).numpy()
    m, err = float(per_chain.mean()), float(per_chain.std(ddof=1) / math.sqrt(len(per_chain)))
    ref = np.asarray(link_metropolis(beta, kappa, (4, 4), 64, 20, 10, 2))
    ref_m, ref_e = float(ref.mean()), float(ref.std(ddof=1) / math.sqrt(len(ref)))
    assert abs(m - ref_m) < 4 * math.hypot(err, ref_e), (m, err, ref_m, ref_e)
