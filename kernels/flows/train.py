"""Reverse-KL self-training of a flow from its prior (no configurations needed).

Loss (Albergo, Kanwar, Shanahan 2019; Kanwar et al. 2020) for ``V ~ r`` (the prior),
``U = F(V)``, ``log q(U) = log r(V) - log|det dF/dV|``::

    L = E_r[ log q(U) + S(U) ] = KL(q || p) - log Z,       p = exp(-S) / Z,

estimated on a batch of ``B`` prior draws per replica group (mean over the batch). Gradients
flow through the flow's parameters (reparametrisation). Prior draws are keyed by
``(seed, PURPOSE_TRAIN, step, global site, chain)`` with ``chain = replica * B + b``, so a
training run is reproducible and the same for every process grid.

Distribution: weights are replicated (:func:`parallel.broadcast_parameters` at the start);
after ``backward`` every rank holds the gradient of its local sites' contributions (the
log-det and the action are all-reduced with the autograd-aware ``global_sum``), which
:func:`parallel.allreduce_gradients` sums over the domain group and averages over replica
groups, so every rank takes the same Adam step.

Annealing: with ``anneal_steps > 0`` the coupling ``anneal_param`` (default ``beta``) rises
linearly from ``anneal_start`` to the theory's value over the first ``anneal_steps`` steps.
LR schedule: ``constant``, ``cosine`` (to ``lr_min`` at ``steps``), ``exponential``
(``gamma`` per step) or ``step`` (``gamma`` every ``lr_step`` steps), on top of Adam.

Metrics per step (identical on every rank): ``loss`` (mean over replicas), ``kl`` (the
estimate ``log mean w - mean log w``), ``ess`` (``(sum w)^2 / (N sum w^2)`` over the batch of
all replicas), ``log_w_mean/std``, ``lr``, the annealed coupling, and every
``force_every`` steps the RMS per variable of the physical force ``dS/dU`` and of the
trivialized force ``dS~/dV`` on the batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from parallel import allreduce_gradients, broadcast_parameters, global_sum
from parallel.rng import SiteRNG

from ..theory import Theory
from .base import Flow
from .metrics import ess_from_log_weights, kl_estimate, replica_mean
from .priors import PURPOSE_TRAIN, Prior, prior_for
from .pullback import pullback_force


@dataclass
class TrainConfig:
    """Hyper-parameters of reverse-KL training (all plain values, stored in checkpoints)."""

    steps: int = 1000
    #: chains per replica group and step
    batch: int = 64
    lr: float = 1e-3
    #: ``constant`` | ``cosine`` | ``exponential`` | ``step``
    lr_schedule: str = "cosine"
    lr_min: float = 1e-5
    gamma: float = 0.5
    lr_step: int = 1000
    weight_decay: float = 0.0
    #: clip the gradient norm (None: no clipping)
    grad_clip: float | None = None
    anneal_steps: int = 0
    anneal_param: str = "beta"
    anneal_start: float = 0.0
    #: force norms every this many steps (0: never)
    force_every: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine", "exponential", "step"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}")
        if self.steps < 0 or self.batch < 1:
            raise ValueError("steps must be >= 0 and batch >= 1")


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    lrs = torch.optim.lr_scheduler
    if cfg.lr_schedule == "cosine":
        return lrs.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1), eta_min=cfg.lr_min)
    if cfg.lr_schedule == "exponential":
        return lrs.ExponentialLR(opt, gamma=cfg.gamma)
    if cfg.lr_schedule == "step":
        return lrs.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.gamma)
    return lrs.LambdaLR(opt, lambda _: 1.0)


def with_params(theory: Theory, **changes: float) -> Theory:
    """A copy of ``theory`` with some couplings changed (same grid, dtype, device)."""
    params = {**theory.params, **changes}
    return type(theory)(theory.grid, dtype=theory.dtype, device=theory.device, **params)


def rms_per_variable(f: torch.Tensor, theory: Theory) -> float:
    """``sqrt(<|f|^2>)`` over all variables of all chains (global)."""
    sq = global_sum(f.detach().abs().pow(2).sum(), theory.grid)
    n = f.numel() * theory.grid.size
    return math.sqrt(float(sq) / n)


class StepLoop:
    """The step loop shared by the trainers: they provide ``config.steps``, ``step_count``,
    ``step() -> metrics`` and ``history``."""

    def train(self, steps: int | None = None, callback=None) -> list[dict[str, float]]:
        """Run up to ``config.steps`` steps in total (or ``steps`` more); returns the history."""
        end = self.config.steps if steps is None else self.step_count + int(steps)
        while self.step_count < end:
            m = self.step()
            if callback is not None:
                callback(m)
        return self.history


class Trainer(StepLoop):
    """Reverse-KL trainer: ``Trainer(flow, theory).train()``; ``history`` holds the metrics.

    ``rng`` (a :class:`parallel.rng.SiteRNG`, default seed 0) keys the prior draws with the
    step number as counter; its seed and the step count are the whole RNG state.
    """

    def __init__(
        self,
        flow: Flow,
        theory: Theory,
        config: TrainConfig | None = None,
        prior: Prior | None = None,
        rng: SiteRNG | None = None,
    ) -> None:
        self.flow = flow
        self.theory = theory
        self.grid = theory.grid
        self.config = config or TrainConfig()
        self.prior = prior or prior_for(theory)
        self.rng = rng or SiteRNG(0)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.train_time = 0.0
        broadcast_parameters(flow, self.grid)
        cfg = self.config
        self.optimizer = torch.optim.Adam(
            flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scheduler = _make_scheduler(self.optimizer, cfg)
        self._theories: dict[float, Theory] = {}

    # ------------------------------------------------------------ annealing
    def coupling_at(self, step: int) -> float:
        """The annealed coupling at optimisation step ``step``."""
        cfg = self.config
        target = float(self.theory.params[cfg.anneal_param])
        if cfg.anneal_steps <= 0 or step >= cfg.anneal_steps:
            return target
        return cfg.anneal_start + (target - cfg.anneal_start) * step / cfg.anneal_steps

    def theory_at(self, step: int) -> Theory:
        """The theory at the annealed coupling of ``step`` (cached per value)."""
        value = self.coupling_at(step)
        if value == float(self.theory.params.get(self.config.anneal_param, math.nan)):
            return self.theory
        if value not in self._theories:
            self._theories = {value: with_params(self.theory, **{self.config.anneal_param: value})}
        return self._theories[value]

    # ------------------------------------------------------------ one step
    def loss_terms(
        self, step: int, theory: Theory | None = None, need_v_grad: bool = False
    ) -> dict[str, torch.Tensor]:
        """Prior batch of ``step``, flowed: ``v, u, log_q, action, loss`` (differentiable)."""
        theory = theory or self.theory_at(step)
        b = self.config.batch
        v = self.prior.sample(self.rng, step, b, self.grid.replica * b, purpose=PURPOSE_TRAIN)
        if need_v_grad:
            v.requires_grad_(True)
        u, logdet = self.flow(v)
        log_q = self.prior.log_prob(v) - logdet
        action = theory.action(u)
        return {
            "v": v,
            "u": u,
            "logdet": logdet,
            "log_q": log_q,
            "action": action,
            "loss": (log_q + action).mean(),
        }

    def step(self) -> dict[str, float]:
        """One optimisation step; returns (and records) its metrics."""
        t0 = time.perf_counter()
        cfg, step = self.config, self.step_count
        theory = self.theory_at(step)
        want_force = cfg.force_every > 0 and step % cfg.force_every == 0
        self.flow.train()
        terms = self.loss_terms(step, theory)
        metrics: dict[str, float] = {}
        if want_force:
            v = terms["v"].detach()
            f_v = pullback_force(self.flow, theory, v, theory.force)
            metrics["force_trivialized_rms"] = rms_per_variable(f_v, theory)
            with torch.no_grad():
                metrics["force_rms"] = rms_per_variable(theory.force(terms["u"].detach()), theory)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        allreduce_gradients(self.flow, self.grid)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        log_w = -(terms["action"] + terms["log_q"]).detach()
        metrics.update(
            step=step,
            loss=replica_mean(float(terms["loss"].detach()), self.grid),
            kl=kl_estimate(log_w, self.grid),
            ess=ess_from_log_weights(log_w, self.grid),
            log_w_mean=replica_mean(float(log_w.mean()), self.grid),
            log_w_std=replica_mean(float(log_w.std()) if log_w.numel() > 1 else 0.0, self.grid),
            lr=lr,
            **{cfg.anneal_param: self.coupling_at(step)},
        )
        self.step_count += 1
        dt = time.perf_counter() - t0
        self.train_time += dt
        metrics["time"] = dt
        self.history.append(metrics)
        return metrics

    @torch.no_grad()
    def log_weights(
        self, batch: int, counter: int = 2**31, theory: Theory | None = None
    ) -> torch.Tensor:
        """``log w = -S(F(v)) - log q`` of a fresh batch of prior draws keyed by ``counter``.

        ``-mean(log w)`` is ``KL(q || p) - log Z``: with a known ``log Z`` (e.g.
        :mod:`kernels.theories.u1_exact`) it gives the exact KL divergence.
        """
        theory = theory or self.theory
        v = self.prior.sample(self.rng, counter, batch, self.grid.replica * batch)
        u, logdet = self.flow(v)
        return -(theory.action(u) + self.prior.log_prob(v) - logdet)

    def evaluate(self, batch: int, counter: int = 2**31, theory: Theory | None = None):
        """``(kl, ess)`` of the current flow on a fresh batch (draws keyed by ``counter``)."""
        log_w = self.log_weights(batch, counter, theory)
        return kl_estimate(log_w, self.grid), ess_from_log_weights(log_w, self.grid)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Trainer state (flow, optimiser, scheduler, RNG, step, history) for checkpoints."""
        return {
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "rng": self.rng.state(),
            "config": asdict(self.config),
            "history": list(self.history),
            "train_time": self.train_time,
            "architecture": self.flow.architecture,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])
        self.rng = SiteRNG.from_state(state["rng"])
        self.history = list(state.get("history", []))
        self.train_time = float(state.get("train_time", 0.0))
