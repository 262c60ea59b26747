"""Reverse-KL training: it learns (KL down, ESS up), resumes exactly from a checkpoint,
anneals, and its ESS/KL metrics are the textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.training import load_trainer_checkpoint, save_trainer_checkpoint
from kernels.flows import phi4_affine_flow, u1_ncp_flow
from kernels.flows.metrics import ess_from_log_weights, kl_estimate
from kernels.flows.train import TrainConfig, Trainer, with_params
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

GRID = single_rank_grid((4, 4))


def test_ess_and_kl_formulas() -> None:
    lw = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.7])
    w = np.exp(lw.numpy())
    assert math.isclose(ess_from_log_weights(lw), w.sum() ** 2 / (5 * (w**2).sum()), rel_tol=1e-12)
    assert math.isclose(
        kl_estimate(lw), math.log(w.mean()) - float(lw.mean()), rel_tol=1e-12, abs_tol=1e-14
    )
    same = torch.full((7,), -3.0)
    assert math.isclose(ess_from_log_weights(same), 1.0, rel_tol=1e-12)
    assert abs(kl_estimate(same)) < 1e-12
    # invariant under a common shift of log w (unknown log Z)
    assert math.isclose(ess_from_log_weights(lw + 500.0), ess_from_log_weights(lw), rel_tol=1e-12)


@pytest.mark.parametrize("kind", ["phi4", "u1"])
def test_training_lowers_kl_and_raises_ess(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "phi4":
        theory = Phi4(GRID, beta=0.2, lam=0.5)
        flow = phi4_affine_flow(GRID, n_pairs=1, hidden=(8,))
        cfg = TrainConfig(steps=100, batch=32, lr=1e-2, force_every=99)
    else:
        theory = U1Gauge(GRID, beta=1.0)
        flow = u1_ncp_flow(GRID, n_layers=4, hidden=(4,))
        cfg = TrainConfig(steps=60, batch=32, lr=1e-2, force_every=59)
    trainer = Trainer(flow, theory, cfg, rng=SiteRNG(1))
    kl0, ess0 = trainer.evaluate(256)
    history = trainer.train()
    kl1, ess1 = trainer.evaluate(256)
    assert len(history) == cfg.steps
    assert kl1 < 0.5 * kl0, (kl0, kl1)
    assert ess1 > 2.0 * ess0 and ess1 > 0.15, (ess0, ess1)
    # the loss is KL - log Z: it falls too
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < first
    forced = [h for h in history if "force_rms" in h]
    assert len(forced) == 2 and all(h["force_trivialized_rms"] > 0 for h in forced)


def _trainer(steps: int) -> Trainer:
    torch.manual_seed(3)
    flow = phi4_affine_flow(GRID, n_pairs=1, hidden=(4,))
    cfg = TrainConfig(steps=steps, batch=8, lr=5e-3, lr_schedule="cosine")
    return Trainer(flow, Phi4(GRID, beta=0.3, lam=0.4), cfg, rng=SiteRNG(9))


def test_checkpoint_resume_is_exact(tmp_path) -> None:
    straight = _trainer(6)
    straight.train()
    first = _trainer(6)
    first.train(steps=3)
    path = tmp_path / "ckpt.pt"
    save_trainer_checkpoint(first, path)
    resumed = _trainer(6)
    load_trainer_checkpoint(resumed, path)
    assert resumed.step_count == 3 and len(resumed.history) == 3
    resumed.train()
    for a, b in zip(straight.flow.parameters(), resumed.flow.parameters()):
        assert torch.equal(a, b)
    assert straight.history[-1]["loss"] == resumed.history[-1]["loss"]
    assert straight.history[-1]["lr"] == resumed.history[-1]["lr"]


def test_beta_annealing() -> None:
    theory = U1Gauge(GRID, beta=2.0)
    cfg = TrainConfig(steps=4, batch=4, anneal_steps=4, anneal_start=1.0, lr_schedule="constant")
    trainer = Trainer(u1_ncp_flow(GRID, n_layers=2, hidden=()), theory, cfg)
    assert [trainer.coupling_at(s) for s in range(6)] == [1.0, 1.25, 1.5, 1.75, 2.0, 2.0]
    assert trainer.theory_at(1).beta == 1.25 and trainer.theory_at(9) is theory
    history = trainer.train()
    assert [h["beta"] for h in history] == [1.0, 1.25, 1.5, 1.75]
    # the annealed action is the action at the annealed coupling
    u = theory.hot_start(SiteRNG(0), 0, 2)
    assert torch.allclose(trainer.theory_at(2).action(u), theory.action(u) * 1.5 / 2.0)
    phi4 = with_params(Phi4(GRID, beta=0.1, lam=0.2), beta=0.4)
    assert phi4.params == {"beta": 0.4, "lambda": 0.2}
