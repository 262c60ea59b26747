"""Acceptance-weighted Q-jump objective for NTHMC on 2D U(1) (kernels.flows.nthmc_qjump).

Checks: with the identity flow the differentiable trajectory's ``dH`` and end point equal an
independent leapfrog with the analytic U(1) force; the loss is the formula of its terms; the
exact gradient (through the trajectory, the Newton inverse and the charges) equals a central
finite difference; a few Adam steps lower the held-out loss on a tiny lattice; bad settings
are clear errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.flows.nthmc_qjump import QJumpConfig, QJumpTrainer, qjump_trajectory
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SHAPE = (4, 4)


def _data(theory, n, counter=0):
    return theory.hot_start(SiteRNG(3), counter, n)


def _flow(grid, scale=0.5):
    torch.manual_seed(2)
    flow = u1_nthmc_flow(grid, hidden=(2,), identity_init=False)
    with torch.no_grad():
        for layer in flow.layers:
            layer.net.net[-1].weight.mul_(scale)
    return flow


def test_identity_flow_trajectory_is_plain_leapfrog():
    grid = single_rank_grid(SHAPE)
    th = U1Gauge(grid, 2.0)
    tt = TransformedTheory(th, u1_nthmc_flow(grid))
    v = _data(th, 2)
    p = th.random_momentum(SiteRNG(1), 0, 2)
    eps, n = 0.2, 3
    x, dh, u0, g0 = qjump_trajectory(tt, v, p, eps, n)
    # independent leapfrog with the analytic force
    y, m = v.clone(), p - 0.5 * eps * th.force(v)
    for k in range(n):
        y = y + eps * m
        m = m - (eps if k < n - 1 else 0.5 * eps) * th.force(y)
    h = (
        th.action(y)
        + 0.5 * m.square().sum((1, 2, 3))
        - th.action(v)
        - 0.5 * p.square().sum((1, 2, 3))
    )
    assert (x.detach() - y).abs().max() < 1e-12
    assert (dh.detach() - h).abs().max() < 1e-11
    assert torch.equal(u0.detach(), v) and (g0.detach() - th.force(v)).abs().max() < 1e-12


def test_loss_terms_and_gradient_equal_finite_difference():
    grid = single_rank_grid(SHAPE)
    th = U1Gauge(grid, 2.0)
    cfg = QJumpConfig(batch=2, n_md=3, step_size=0.3, q_scale=0.5, validate_every=0)
    tr = QJumpTrainer(_flow(grid), th, _data(th, 2), cfg)
    loss_c, acc, dq2, _ = tr.objective_terms(tr.batch_at(0), 0)
    ref = -acc * dq2 / 0.25 + 0.25 / (acc * dq2 + 1e-3)
    assert (loss_c - ref).abs().max() < 1e-12
    assert (acc > 0).all() and (acc <= 1).all() and (dq2 > 0).all()
    p = tr.flow.layers[3].net.net[-1].bias
    loss, _ = tr.loss(tr.batch_at(0))
    (g,) = torch.autograd.grad(loss, p)
    h = 1e-6
    vals = []
    for s in (1, -1):
        with torch.no_grad():
            p[1] += s * h
        vals.append(float(tr.loss(tr.batch_at(0))[0].detach()))
        with torch.no_grad():
            p[1] -= s * h
    num = (vals[0] - vals[1]) / (2 * h)
    assert math.isfinite(float(g[1])) and abs(num) > 1e-4
    assert abs(num - float(g[1])) < 1e-5 * abs(num)


def test_loss_decreases_on_a_tiny_case_and_trainer_restores_best():
    grid = single_rank_grid(SHAPE)
    th = U1Gauge(grid, 2.0)
    train, held = _data(th, 4, 0), _data(th, 4, 1)
    torch.manual_seed(0)
    cfg = QJumpConfig(
        steps=4, batch=4, lr=0.01, n_md=3, step_size=0.3, q_scale=0.5, validate_every=2
    )
    tr = QJumpTrainer(u1_nthmc_flow(grid, hidden=(2,)), th, train, cfg, validation=held)
    # Adam on one fixed momentum draw (common random numbers): the objective goes down
    opt = torch.optim.Adam(tr.flow.parameters(), lr=0.003)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = tr.objective_terms(train, 7)[0].mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # the trainer (a new draw per step, held-out validation): finite, best weights restored
    hist = tr.train()
    assert len(hist) == 4 and all(math.isfinite(m["loss"]) for m in hist)
    assert {"acceptance", "dq2"} <= set(hist[0]) and "val_loss" in hist[1]
    assert tr.validate() == pytest.approx(tr.best_val, rel=1e-12)
    assert tr.summary()["objective"] == "qjump"


def test_bad_settings():
    with pytest.raises(ValueError, match="n_md"):
        QJumpConfig(n_md=0)
    with pytest.raises(ValueError, match="delta"):
        QJumpConfig(delta=0.0)
    grid = single_rank_grid(SHAPE)
    th = U1Gauge(grid, 2.0)
    with pytest.raises(TypeError, match="QJumpConfig"):
        from kernels.flows.force_norm import ForceNormConfig

        QJumpTrainer(u1_nthmc_flow(grid), th, _data(th, 2), ForceNormConfig())


QJUMP_DECK = """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 6}
run:      {seed: 3, thermalization: 2, trajectories: 4, chains: 2, save_every: 2}
output:   {directory: runs/hmc, formats: [hdf5], progress: false}
train:    {architecture: u1_nthmc, options: {hidden: [2]}, loss: qjump, steps: 2,
           batch: 2, lr: 0.01, lr_schedule: constant,
           configurations: [runs/hmc/ensemble_c0.h5], validation: [runs/hmc/ensemble_c1.h5],
           qjump: {n_md: 2, step_size: 0.3, validate_every: 1}, model_name: qjump4}
"""


def test_app_train_qjump(tmp_path):
    import json

    from app.cli import main
    from app.deck import DeckError, loads_deck

    deck = tmp_path / "deck.yaml"
    deck.write_text(QJUMP_DECK)
    assert main(["run", str(deck)]) == 0
    assert main(["train", str(deck), "--no-progress"]) == 0
    folder = tmp_path / "models" / "qjump4"
    (version,) = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    card = json.loads((folder / version / "card.json").read_text())
    assert card["train_config"]["loss"] == "qjump"
    assert card["train_config"]["qjump"]["n_md"] == 2
    assert len(card["history"]) == 2 and "dq2" in card["history"][0]
    with pytest.raises(DeckError, match="qjump needs the 2D u1"):
        loads_deck(
            QJUMP_DECK.replace("name: u1, beta: 2.0", "name: su3, beta: 5.0, action: wilson")
            .replace("[4, 4]", "[2, 2, 2, 2]")
            .replace("u1_nthmc", "su3_nthmc")
        )
    with pytest.raises(DeckError, match="step_size"):
        loads_deck(QJUMP_DECK.replace("step_size: 0.3", "step_size: 0"))
