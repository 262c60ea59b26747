"""Trivialized HMC with NTHMC flows is exact, untrained and (briefly) force-norm trained: 2D
U(1) 4x4 at beta = 1.5 against the character expansion (kernels.theories.u1_exact), and the
force-norm training (kernels.flows.force_norm): the loss gradient against finite differences,
the log-mean-exp soft maximum, validation with early stopping restoring the best weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.analysis import gamma_method
from kernels.flows.force_norm import (
    ForceNormConfig,
    ForceNormTrainer,
    force_through_inverse,
    log_mean_exp_norm,
)
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette
from parallel import single_rank_grid
from parallel.rng import SiteRNG

BETA = 1.5
SHAPE = (4, 4)


def _ensemble(theory, batch: int, n_traj: int, seed: int = 3) -> torch.Tensor:
    rng = SiteRNG(seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 6, 1.0), rng)
    x = theory.hot_start(rng, 0, batch)
    for t in range(1, n_traj + 1):
        x, _ = hmc.trajectory(x, t)
    return x


def _random_flow(grid, scale=2.0):
    torch.manual_seed(23)
    flow = u1_nthmc_flow(grid, hidden=(4,), identity_init=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(scale)
    return flow


def _trained_flow(grid, theory):
    torch.manual_seed(29)
    flow = u1_nthmc_flow(grid, hidden=(4,))
    data = _ensemble(theory, 8, 10)
    cfg = ForceNormConfig(steps=8, batch=4, lr=5e-2, validate_every=0)
    tr = ForceNormTrainer(flow, theory, data, cfg)
    tr.train()
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]  # it did train
    return flow


@pytest.mark.parametrize(
    "model, chains, n_traj",
    [
        ("untrained", 16, 16),
        pytest.param("trained", 32, 30, marks=pytest.mark.slow),
        pytest.param("untrained", 32, 30, marks=pytest.mark.slow),
    ],
)
def test_nthmc_hmc_exact_plaquette(model, chains, n_traj):
    grid = single_rank_grid(SHAPE)
    phys = U1Gauge(grid, beta=BETA)
    flow = _random_flow(grid) if model == "untrained" else _trained_flow(grid, phys)
    theory = TransformedTheory(phys, flow)
    rng = SiteRNG(2468)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 4, 1.0), rng)
    v = theory.hot_start(rng, 0, chains)
    plaq, emdh, acc = [], [], []
    for t in range(1, n_traj + 1):
        v, rec = hmc.trajectory(v, t)
        if t > 5:
            plaq.append(theory.observables(v)["plaquette"].numpy())
            emdh.append(rec.exp_minus_dH)
            acc.append(float(rec.accepted.double().mean()))
    assert np.mean(acc) > 0.5
    e = torch.stack(emdh).double()
    assert abs(float(e.mean()) - 1.0) < 4 * float(e.std()) / math.sqrt(e.numel())
    res = gamma_method(list(np.array(plaq).T))
    exact = mean_plaquette(BETA, SHAPE)
    assert abs(res.mean - exact) < 4 * res.error, (res.mean, res.error, exact)


def test_log_mean_exp_norm_is_a_soft_maximum():
    grid = single_rank_grid(SHAPE)
    theory = U1Gauge(grid, beta=BETA)
    f = torch.randn((3, 2) + SHAPE, generator=torch.Generator().manual_seed(1))
    a = f.reshape(3, -1).abs()
    for kappa in (0.5, 3.0):
        got = log_mean_exp_norm(f, theory, kappa)
        ref = torch.log(torch.exp(kappa * a).mean(1)) / kappa
        assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
        assert (got >= a.mean(1)).all() and (got <= a.max(1).values + 1e-12).all()
    assert torch.allclose(log_mean_exp_norm(f, theory, 1e4), a.max(1).values, atol=1e-3)


@pytest.mark.parametrize("objective", ["force_p", "force_linf"])
def test_training_gradient_matches_finite_differences(objective):
    """The loss over a fixed ensemble of ``U`` (through ``V = F^{-1}(U)``) and its autograd
    gradient in one weight agree with a central difference."""
    grid = single_rank_grid(SHAPE)
    theory = U1Gauge(grid, beta=2.0)
    flow = _random_flow(grid, scale=1.0)
    for layer in flow.layers:
        layer.tol = 1e-14
    u = _ensemble(theory, 2, 3)
    cfg = ForceNormConfig(objective=objective, power=3.0, kappa=1.5, validate_every=0)
    tr = ForceNormTrainer(flow, theory, u, cfg)
    loss, _ = tr.loss(u)
    p = flow.layers[2].net.net[0].weight
    (grad,) = torch.autograd.grad(loss, p)
    idx = (0, 1, 1, 2)
    h = 1e-5

    def at(delta: float) -> float:
        with torch.no_grad():
            p[idx] += delta
        val = float(tr.objective(force_through_inverse(tr.transformed, u)).mean().detach())
        with torch.no_grad():
            p[idx] -= delta
        return val

    num = (at(h) - at(-h)) / (2 * h)
    assert abs(float(grad[idx]) - num) < 1e-6 * max(1.0, abs(num)), (float(grad[idx]), num)
    assert abs(num) > 1e-4


def test_validation_and_early_stopping_restore_the_best():
    grid = single_rank_grid(SHAPE)
    theory = U1Gauge(grid, beta=2.0)
    data = _ensemble(theory, 6, 4)
    torch.manual_seed(31)
    flow = u1_nthmc_flow(grid, hidden=(4,))
    # a huge learning rate: the validation loss gets worse and patience runs out
    cfg = ForceNormConfig(steps=40, batch=2, lr=3.0, validate_every=1, patience=2)
    tr = ForceNormTrainer(flow, theory, data[:4], cfg, validation=data[4:])
    tr.train()
    vals = [tr.initial_val] + [m["val_loss"] for m in tr.history]  # step 0 competes too
    assert tr.stopped_early and len(tr.history) < 40
    assert tr.best_val == min(vals)
    assert tr.best_step == int(np.argmin(vals))
    assert abs(tr.validate() - tr.best_val) < 1e-10  # best weights restored
    s = tr.summary()
    assert s["stopped_early"] and s["best_step"] == tr.best_step and s["train_time"] > 0


def test_bad_config():
    with pytest.raises(ValueError, match="objective"):
        ForceNormConfig(objective="kl")
    with pytest.raises(ValueError, match="kappa"):
        ForceNormConfig(kappa=0.0)
