"""Force matching of the SU(3) NTHMC flow to a coarser coupling (kernels.flows.force_matching
``CouplingTarget`` with kernels.flows.force_norm ``ForceNormTrainer``).

Checks: with the identity flow the loss is ``(1 - beta_t/beta)^2 mean |F_beta|^2`` exactly
(the Wilson force is linear in beta); the exact-gradient loss (through ``V = F^{-1}(U)`` and
the target's own ``V`` dependence) equals a central finite difference in a parameter; a few
Adam steps lower the held-out loss, early stopping restores the best validated weights; bad
targets are clear errors. Under the ``numba`` kernel backend (optional) the trivialized
force, the force-matching loss with its exact parameter gradient (a double backward through
the physical action) and an NTHMC trajectory's dH equal eager's to rounding.
"""

from __future__ import annotations

import pytest
import torch

import kernels.backends as kb
from kernels.flows.force_matching import CouplingTarget
from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer, trivialized_force
from kernels.flows.nthmc_su3 import su3_nthmc_flow
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SHAPE = (2, 2, 2, 2)


def _configs(grid, n, counter=0, beta=5.5):
    """``n`` configurations a few cheap HMC-free steps from hot: smeared Haar links (any
    links will do for the exact checks; smoother ones give a realistic force scale)."""
    th = SU3Gauge(grid, beta)
    u = th.hot_start(SiteRNG(21), counter, n)
    torch.manual_seed(counter)
    smear = su3_nthmc_flow(grid, hidden=(), identity_init=False, kernel_size=1)
    with torch.no_grad():
        for layer in smear.layers:
            layer.net.net[-1].bias.fill_(3.0)
        return smear(u)[0]


def _flow(grid, scale=0.3, n_layers=4):
    torch.manual_seed(4)
    flow = su3_nthmc_flow(grid, n_layers=n_layers, hidden=(2,), identity_init=False)
    with torch.no_grad():
        for layer in flow.layers:
            layer.net.net[-1].weight.mul_(scale)
            layer.net.net[-1].bias.mul_(scale)
    return flow


def test_identity_flow_loss_is_the_exact_coupling_mismatch():
    grid = single_rank_grid(SHAPE)
    th, tgt = SU3Gauge(grid, 6.0), SU3Gauge(grid, 5.0)
    u = _configs(grid, 3)
    tr = ForceNormTrainer(
        su3_nthmc_flow(grid, n_layers=2),
        th,
        u,
        ForceNormConfig(batch=3, validate_every=0),
        target=CouplingTarget(th, tgt),
    )
    loss = tr.loss(u)[0].detach()
    f = th.force(u)
    per_link = 2.0 * (f.real.square() + f.imag.square()).sum((-1, -2))  # sum_a f_a^2
    ref = (1.0 - 5.0 / 6.0) ** 2 * per_link.mean()
    assert abs(float(loss) - float(ref)) < 1e-12 * float(ref)
    assert tr.summary()["target"] == "force at beta=5, c0=1, c1=0"


def test_exact_gradient_equals_finite_difference():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 6.0)
    target = CouplingTarget(th, SU3Gauge(grid, 4.5))
    flow = _flow(grid)
    u = _configs(grid, 2)
    for objective in ("force_p", "force_linf"):
        cfg = ForceNormConfig(batch=2, objective=objective, kappa=1.0, validate_every=0)
        tr = ForceNormTrainer(flow, th, u, cfg, target=target)
        p = flow.layers[2].net.net[-1].bias
        flow.zero_grad()
        loss, _ = tr.loss(u)
        (grad,) = torch.autograd.grad(loss, p)
        h = 1e-5
        with torch.no_grad():
            p[1] += h
        lp = float(tr.loss(u)[0].detach())
        with torch.no_grad():
            p[1] -= 2 * h
        lm = float(tr.loss(u)[0].detach())
        with torch.no_grad():
            p[1] += h
        num = (lp - lm) / (2 * h)
        assert abs(num - float(grad[1])) < 1e-6 * abs(num) + 1e-9, objective
        assert abs(num) > 1e-4


def test_training_lowers_held_out_loss_and_early_stopping_restores_best():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 6.0)
    target = CouplingTarget(th, SU3Gauge(grid, 5.0))
    train, held = _configs(grid, 8, 0), _configs(grid, 4, 1)
    # pointwise coefficient networks: on 2^4 a 3^4 kernel sees the whole lattice and overfits
    flow = su3_nthmc_flow(grid, n_layers=4, hidden=(2,), kernel_size=1)
    cfg = ForceNormConfig(steps=8, batch=4, lr=0.01, validate_every=2, patience=5)
    tr = ForceNormTrainer(flow, th, train, cfg, validation=held, target=target)
    before = tr.validate()
    hist = tr.train()
    after = tr.validate()
    assert len(hist) == 8 and [h["step"] for h in hist if "val_loss" in h] == [1, 3, 5, 7]
    assert after < 0.8 * before
    assert after == pytest.approx(tr.best_val, rel=1e-12)
    # patience 1 with a learning rate that overshoots: stops early, best weights restored
    flow2 = su3_nthmc_flow(grid, n_layers=4, hidden=(2,))
    cfg2 = ForceNormConfig(steps=20, batch=2, lr=5.0, validate_every=1, patience=1)
    tr2 = ForceNormTrainer(flow2, th, train, cfg2, validation=held, target=target)
    tr2.train()
    assert tr2.stopped_early and tr2.step_count < 20
    assert tr2.validate() == pytest.approx(tr2.best_val, rel=1e-12)


def test_bad_targets_are_clear_errors():
    grid = single_rank_grid(SHAPE)
    with pytest.raises(ValueError, match="same theory"):
        CouplingTarget(SU3Gauge(grid, 6.0), U1Gauge(single_rank_grid((4, 4)), 2.0))
    with pytest.raises(ValueError, match="lattice"):
        CouplingTarget(SU3Gauge(grid, 6.0), SU3Gauge(single_rank_grid((4, 2, 2, 2)), 5.0))


@pytest.mark.skipif("numba" not in kb.available_backends(), reason="numba not installed")
def test_numba_backend_equals_eager_for_force_matching_and_nthmc():
    """What benchmarks/bench_nthmc_su3.py computes with ``TRIVHMC_KERNELS=numba``: the fused
    action's backward is the analytic force, and with ``create_graph`` it switches to eager
    staples so that the loss gradient (second derivative of the action) stays exact."""
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 6.0)
    target = CouplingTarget(th, SU3Gauge(grid, 5.0))
    flow = _flow(grid, n_layers=2)
    u = _configs(grid, 1)
    saved = kb._active
    out = {}
    try:
        for name in ("eager", "numba"):
            kb.set_backend(name)
            tr = ForceNormTrainer(flow, th, u, ForceNormConfig(batch=1), target=target)
            loss, _ = tr.loss(u)
            grads = torch.autograd.grad(loss, list(flow.parameters()))
            tt = TransformedTheory(th, flow)
            with torch.no_grad():
                v = flow.inverse(u)[0]
            f = trivialized_force(tt, v, create_graph=False)
            hmc = HMC(tt, make_integrator(tt, "omelyan", 1, 0.5), SiteRNG(3))
            _, rec = hmc.trajectory(v, 1)
            out[name] = (loss.detach(), torch.cat([g.flatten() for g in grads]), f, rec.dH)
    finally:
        kb._active = saved
    for ref, got, what in zip(out["eager"], out["numba"], ("loss", "dloss/dp", "force", "dH")):
        err = float((got - ref).abs().max()) / max(1e-3, float(ref.abs().max()))
        assert err < 1e-11, f"{what}: numba differs from eager by {err:.2e}"
    assert float(out["eager"][1].abs().max()) > 1e-4
