"""L2HMC training (kernels/l2hmc/train.py): it learns, it resumes bit for bit, it checks input.

The learning test trains a model that starts as short plain leapfrog (networks zero,
``eps = 0.05``) on 2D U(1) 8x8 at beta = 2 and evaluates the acceptance-weighted jumps
``<A dQ_sin^2>`` and ``<A (dQ_sin^2 + dP)>`` on a *held-out* set of HMC-thermalised
configurations with fixed momenta and directions, before and after 30 steps: both must grow
by a factor 1.8 (observed: 2.5 and 2.2). An untrained or wrongly-signed update fails it.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.integrators import make_integrator
from kernels.l2hmc import L2HMCModel, L2HMCTrainConfig, L2HMCTrainer
from kernels.samplers.hmc import HMC
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def thermalised_u1(shape=(8, 8), beta=2.0, batch=48):
    theory = U1Gauge(single_rank_grid(shape), beta=beta)
    hmc = HMC(theory, make_integrator(theory, "leapfrog", 5, 1.0), SiteRNG(5))
    x = theory.hot_start(SiteRNG(5), 0, batch)
    for counter in range(1, 21):
        x, _ = hmc.trajectory(x, counter)
    return theory, x


def test_training_increases_acceptance_weighted_charge_jumps():
    theory, x = thermalised_u1()
    torch.manual_seed(0)
    model = L2HMCModel(theory.grid, "u1", n_layers=2, hidden=(4,), step_size=0.05, init_scale=0.0)
    cfg = L2HMCTrainConfig(steps=30, batch=16, lr=1e-2, plaquette_weight=1.0)
    trainer = L2HMCTrainer(model, theory, SiteRNG(3), cfg, start=x[:16])
    x_eval = x[16:]
    v_eval = theory.random_momentum(SiteRNG(99), 1, 32)
    d_eval = torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0)

    def evaluate():
        with torch.no_grad():
            loss, parts = trainer.loss(x_eval, v_eval, d_eval)
        dq = parts["jumps"]["dQ_sin"]
        return -float(loss), float((parts["acceptance"] * dq * dq).mean())

    total0, dq0 = evaluate()
    history = trainer.train()
    total1, dq1 = evaluate()
    assert len(history) == 30 and trainer.step_count == 30
    assert dq1 > 1.8 * dq0, (dq0, dq1)
    assert total1 > 1.8 * total0, (total0, total1)
    for key in ("loss", "acceptance", "dQ_sin2", "dQ_int", "dP", "log_jacobian", "eps_x", "lr"):
        assert all(math.isfinite(h[key]) for h in history), key


@pytest.mark.parametrize("name", ["u1", "phi4"])
def test_checkpoint_resume_is_bit_exact(name):
    grid = single_rank_grid((4, 4))
    theory = U1Gauge(grid, beta=1.5) if name == "u1" else Phi4(grid, beta=0.3, lam=0.5)
    weights = {"charge_weight": 1.0} if name == "u1" else {"charge_weight": 0.0, "field_weight": 1}
    cfg = L2HMCTrainConfig(
        steps=6, batch=4, lr=1e-2, lr_warmup=2, lr_final_factor=0.1, gamma_start=0.3, **weights
    )

    def fresh(seed):
        torch.manual_seed(seed)
        model = L2HMCModel(grid, name, n_layers=2, hidden=(4,), step_size=0.2)
        return L2HMCTrainer(model, theory, SiteRNG(17), cfg)

    straight = fresh(1)
    straight.train()
    first = fresh(1)
    first.train(3)
    state = first.state_dict()
    resumed = fresh(2)  # other initial weights: everything must come from the state
    resumed.load_state_dict(state)
    resumed.train()
    assert resumed.step_count == 6
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.chains, resumed.chains)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    # the chains moved and the weights changed
    assert not torch.equal(straight.chains, fresh(1).chains)


def test_schedules():
    cfg = L2HMCTrainConfig(steps=11, lr=1e-2, lr_warmup=1, lr_final_factor=0.1)
    cfg.gamma_start, cfg.gamma_end = 0.1, 1.0
    assert cfg.gamma(0) == pytest.approx(0.1) and cfg.gamma(10) == 1.0 and cfg.gamma(50) == 1.0
    assert cfg.gamma(5) == pytest.approx(math.sqrt(0.1))
    assert cfg.lr_at(0) == pytest.approx(1e-2) and cfg.lr_at(10) == pytest.approx(1e-3)
    assert 1e-3 < cfg.lr_at(5) < 1e-2


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="loss_form"):
        L2HMCTrainConfig(loss_form="kl")
    with pytest.raises(ValueError, match="lr"):
        L2HMCTrainConfig(lr=0.0)
    grid = single_rank_grid((4, 4))
    model = L2HMCModel(grid, "phi4", n_layers=1, hidden=(2,))
    with pytest.raises(ValueError, match="charge objective needs 2D U"):
        L2HMCTrainer(model, Phi4(grid, beta=0.3, lam=0.5), SiteRNG(1), L2HMCTrainConfig())
    with pytest.raises(ValueError, match="dtype"):
        L2HMCTrainer(
            model,
            Phi4(grid, beta=0.3, lam=0.5, dtype=torch.float32),
            SiteRNG(1),
            L2HMCTrainConfig(field_weight=1.0),
        )


def test_float32_training_and_levy_loss_run():
    grid = single_rank_grid((4, 4))
    theory = U1Gauge(grid, beta=1.0, dtype=torch.float32)
    torch.manual_seed(0)
    model = L2HMCModel(grid, "u1", n_layers=1, hidden=(2,), dtype=torch.float32)
    cfg = L2HMCTrainConfig(steps=2, batch=4, loss_form="levy", plaquette_weight=0.5)
    trainer = L2HMCTrainer(model, theory, SiteRNG(2), cfg)
    out = trainer.train()
    assert trainer.chains.dtype == torch.float32 and all(math.isfinite(m["loss"]) for m in out)
