"""Training a field transformation *for HMC*: force-norm losses, validation, early stopping.

NTHMC (Jin, arXiv:2201.01862; He, Jin, Osborn, Zhao, arXiv:2511.02018) does not trivialize the
theory; it makes HMC's job easier by lowering (and evening out) the trivialized force
``F~ = dS~/dV`` with ``S~(V) = S(F(V)) - log|det dF/dV|``, whose largest values set the stable
step size. On configurations ``U`` of a plain-HMC ensemble, mapped to ``V = F^{-1}(U)`` (no
gradient through the inverse), the objectives per chain are (``a_i = |F~_i|`` per variable,
``n`` variables on the whole lattice)::

    force_p:    L_p   = (1/n) sum_i a_i^p                       (+ linf_weight * L_inf)
    force_linf: L_inf = M + (1/kappa) log[(1/n) sum_i exp(kappa (a_i - M))],   M = max_i a_i

With a *target force* ``T`` (force matching, nthmc's SU(3) recipe: ``T(V)`` the plain force
of the same theory at a coarser coupling ``target_beta``, :func:`coupling_target`) both
objectives act on ``a_i = |F~_i(V) - T_i(V)|``: trivialized HMC at ``beta`` then moves ``V``
like plain HMC at ``target_beta`` (``S~ ~ S_target + const``), where the autocorrelations are
shorter, while ``U = F(V)`` is exactly distributed at ``beta``.

``L_inf`` (log-mean-exp) lies between the mean and the maximum of ``a`` and tends to the
maximum as ``kappa -> infinity``; ``M`` is a detached global maximum (the value is independent
of it). The force comes from :func:`kernels.flows.pullback.pullback_force` with
``create_graph=True`` (double backward through the distributed flow).

Held-out validation: every ``validate_every`` steps the loss on the validation configurations
(no parameter gradient); the best parameters so far are kept, and training stops when the
validation loss has not improved by ``min_delta`` in ``patience`` validations; the best
parameters are restored at the end (the starting parameters, validated first as
``initial_val``, count as a candidate). Distributed exactly like
:class:`kernels.flows.force_matching.ForceMatchingTrainer` (replicated weights, gradients
summed over the domain group and averaged over replica groups; the global max and the sums are
over the domain group).

Physical force (``physical=``): by default ``theory.force``. With auxiliary fields
(pseudofermions) pass an object with ``prepare(u, counter, chain_offset)`` (draws them at the
physical configurations of a batch) and ``__call__(u)`` (the physical force, differentiable in
``U``): :class:`kernels.flows.force_norm_fermions.FullForce` for the Schwinger model. Training
step ``s`` draws with counter ``s + 1`` (chain offset 0); validation batch ``i`` draws with
counter 0 and chain offset ``i`` (the same noise at every validation).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from parallel import global_max, global_sum

from .force_matching import (
    ForceMatchingConfig,
    ForceMatchingTrainer,
    force_loss_per_chain,
    trivialized_force,
    variable_norms,
)
from .metrics import replica_mean
from .pullback import force_from_gradient, gradient_from_force

OBJECTIVES = ("force_p", "force_linf")


def force_through_inverse(transformed, u: torch.Tensor, with_v: bool = False, physical_force=None):
    """``F~(V)`` at ``V = F^{-1}(U)`` differentiable in the parameters along *both* paths:
    the force's own dependence and ``V``'s (the implicit gradient of the iterative inverse,
    :func:`kernels.flows.base.implicit_newton_step`), i.e. the exact gradient of
    ``E_U[L(F~(F^{-1}(U)))]`` over a fixed ensemble of ``U``. Same VJP as
    :func:`kernels.flows.pullback.pullback_force`, without detaching ``V``. ``with_v``:
    return ``(F~, V)`` (``V`` differentiable in the parameters, for a target ``T(V)``).
    ``physical_force``: the (differentiable) physical force, default ``theory.force``."""
    flow, theory = transformed.flow, transformed.theory
    physical_force = physical_force or theory.force
    with torch.enable_grad():
        v, _ = flow.inverse(u.detach())
        x = v if v.requires_grad else v.requires_grad_(True)
        uu, logdet = flow(x)
        g = gradient_from_force(theory, uu, physical_force(uu))
        (grad,) = torch.autograd.grad(
            [uu, logdet], x, [g, torch.full_like(logdet, -1.0)], create_graph=True
        )
    f = force_from_gradient(theory, x, grad)
    return (f, x) if with_v else f


def log_mean_exp_norm(f: torch.Tensor, theory, kappa: float) -> torch.Tensor:
    """Soft maximum ``M + (1/kappa) log mean exp(kappa (|f_i| - M))`` per chain, ``(B,)``."""
    a = variable_norms(f, theory)
    m_local = a.detach().max(dim=1).values.cpu().numpy()
    m = torch.as_tensor(
        np.asarray(global_max(m_local, theory.grid)), dtype=a.dtype, device=a.device
    )
    s = global_sum(torch.exp(kappa * (a - m.unsqueeze(1))).sum(1), theory.grid)
    n = a.shape[1] * theory.grid.size
    return m + torch.log(s / n) / kappa


@dataclass
class ForceNormConfig(ForceMatchingConfig):
    """Hyper-parameters of force-norm training (on top of :class:`ForceMatchingConfig`)."""

    #: ``force_p`` | ``force_linf``
    objective: str = "force_p"
    #: ``kappa`` of the log-mean-exp soft maximum
    kappa: float = 2.0
    #: weight of ``L_inf`` added to ``L_p`` (objective ``force_p``)
    linf_weight: float = 0.0
    #: validate every this many steps (0: never; then no early stopping)
    validate_every: int = 10
    #: stop after this many validations without improvement (0: never stop early)
    patience: int = 0
    min_delta: float = 0.0
    #: with ``map_back``: differentiate through ``V = F^{-1}(U)`` too (the exact gradient
    #: over a fixed ensemble; without it the data move under the optimiser)
    exact_gradient: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {list(OBJECTIVES)}")
        if not self.kappa > 0 or self.linf_weight < 0:
            raise ValueError("kappa must be > 0 and linf_weight >= 0")
        if self.validate_every < 0 or self.patience < 0:
            raise ValueError("validate_every and patience must be >= 0")


class ForceNormTrainer(ForceMatchingTrainer):
    """``ForceNormTrainer(flow, theory, train_configs, config, validation=val_configs)``.

    ``history`` rows add ``val_loss`` on validation steps; after :meth:`train`,
    ``best_step``/``best_val`` describe the restored parameters, ``stopped_early`` says
    whether patience ran out, ``train_time`` is the wall time of the steps.
    """

    def __init__(
        self,
        flow,
        theory,
        configurations,
        config=None,
        validation=None,
        target=None,
        physical=None,
    ) -> None:
        super().__init__(flow, theory, configurations, config or ForceNormConfig(), target)
        #: the physical force and its auxiliary-field draws (module docstring); None: theory.force
        self.physical = physical
        if not isinstance(self.config, ForceNormConfig):
            raise TypeError("ForceNormTrainer needs a ForceNormConfig")
        self.validation = validation
        self.best_val = math.inf
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_validations = 0
        self.stopped_early = False
        self.train_time = 0.0
        self.initial_val: float | None = None

    def objective(self, f: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Per-chain objective of the trivialized force ``f`` at ``v``, of ``f - T(v)`` with a
        target ``T`` (see module docstring)."""
        cfg = self.config
        if self.target is not None:
            t = self.target(v) if callable(self.target) else self.target
            f = f - t
        if cfg.objective == "force_linf":
            return log_mean_exp_norm(f, self.theory, cfg.kappa)
        out = force_loss_per_chain(f, self.theory, None, cfg.power)
        if cfg.linf_weight > 0:
            out = out + cfg.linf_weight * log_mean_exp_norm(f, self.theory, cfg.kappa)
        return out

    def prepare(self, configs: torch.Tensor, counter: int, chain_offset: int = 0) -> None:
        """Draw the physical force's auxiliary fields (pseudofermions) at the physical
        configurations of ``configs`` (``U``, or ``F(V)`` without ``map_back``); no-op without
        ``physical``."""
        if self.physical is None:
            return
        with torch.no_grad():
            u = configs if self.config.map_back else self.flow(configs.detach())[0]
            self.physical.prepare(u.detach(), counter, chain_offset)

    def batch_at(self, step: int) -> torch.Tensor:
        """The configurations of ``step``; draws their auxiliary fields with counter
        ``step + 1`` (:meth:`prepare`)."""
        configs = super().batch_at(step)
        self.prepare(configs, step + 1)
        return configs

    def loss(self, configs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean objective, F~)`` on a batch (differentiable in the parameters); with ``map_back``
        and ``exact_gradient`` also through ``V = F^{-1}(U)`` (:func:`force_through_inverse`).
        Auxiliary fields must have been drawn for ``configs`` (:meth:`prepare`)."""
        if self.config.map_back and self.config.exact_gradient:
            f, v = force_through_inverse(
                self.transformed, configs, with_v=True, physical_force=self.physical
            )
            return self.objective(f, v).mean(), f
        v = self.inputs(configs)
        f = trivialized_force(self.transformed, v, create_graph=True, physical_force=self.physical)
        return self.objective(f, v).mean(), f

    def evaluate(self, configs: torch.Tensor, counter: int = 0, chain_offset: int = 0) -> float:
        """The mean objective on ``configs`` (mean over replica groups), no parameter update;
        auxiliary fields drawn with ``(counter, chain_offset)``."""
        self.prepare(configs, counter, chain_offset)
        v = self.inputs(configs)
        f = trivialized_force(self.transformed, v, create_graph=False, physical_force=self.physical)
        with torch.no_grad():
            return replica_mean(float(self.objective(f, v).mean()), self.grid)

    def validate(self) -> float:
        """Validation loss over all validation configurations (in batches; batch ``i`` draws
        its auxiliary fields with counter 0, chain offset ``i``)."""
        val = self.validation
        b = self.config.batch
        parts = [
            self.evaluate(val[i : i + b], 0, i) * len(val[i : i + b]) for i in range(0, len(val), b)
        ]
        return sum(parts) / len(val)

    def step(self) -> dict[str, float]:
        """One Adam step, plus a validation (best-state bookkeeping, patience) when due."""
        t0 = time.perf_counter()
        stats = getattr(self.physical, "stats", None)
        it0 = stats.iterations if stats is not None else 0
        m = super().step()
        if stats is not None:
            m["cg_iterations"] = stats.iterations - it0
        cfg = self.config
        if (
            self.validation is not None
            and cfg.validate_every
            and (self.step_count % cfg.validate_every == 0)
        ):
            val = self.validate()
            m["val_loss"] = val
            if val < self.best_val - cfg.min_delta:
                self.best_val, self.best_step, self.bad_validations = val, self.step_count, 0
                self.best_state = copy.deepcopy(self.flow.state_dict())
            else:
                self.bad_validations += 1
                if cfg.patience and self.bad_validations >= cfg.patience:
                    self.stopped_early = True
        self.train_time += time.perf_counter() - t0
        return m

    def train(self, steps: int | None = None, callback=None) -> list[dict[str, float]]:
        """Run up to ``config.steps`` steps in total (or ``steps`` more), stopping early when
        patience runs out; restores the best validated parameters and returns the history."""
        end = self.config.steps if steps is None else self.step_count + int(steps)
        if self.validation is not None and self.config.validate_every and self.best_state is None:
            # the starting point competes too: training that never improves on it restores it
            self.initial_val = self.validate()
            self.best_val, self.best_step = self.initial_val, self.step_count
            self.best_state = copy.deepcopy(self.flow.state_dict())
        while self.step_count < end and not self.stopped_early:
            m = self.step()
            if callback is not None:
                callback(m)
        if self.best_state is not None:
            self.flow.load_state_dict(self.best_state)
        return self.history

    def summary(self) -> dict[str, Any]:
        """What to record with the model: objective, steps, best validation, timing."""
        cfg = self.config
        return {
            "objective": cfg.objective,
            "target": getattr(self.target, "description", None),
            "physical_force": getattr(self.physical, "description", "theory force"),
            "power": cfg.power,
            "kappa": cfg.kappa,
            "steps": self.step_count,
            "best_step": self.best_step,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "stopped_early": self.stopped_early,
            "train_time": self.train_time,
        }
