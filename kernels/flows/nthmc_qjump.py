"""Acceptance-weighted topological-charge jump objective for NTHMC on 2D U(1).

Instead of shaping the force (:mod:`kernels.flows.force_norm`), train the transformation for
what HMC is run for: large accepted moves of the topological charge. From configurations
``U`` of a plain-HMC ensemble, ``V = F^{-1}(U)``, momenta ``P ~ N(0, 1)`` (site-keyed
:class:`parallel.rng.SiteRNG`, so the same on any process grid), one short trivialized
leapfrog trajectory of ``n_md`` steps of size ``eps`` on ``H = S~(V) + P^2/2`` with
``S~(V) = S(F(V)) - log|det dF/dV|`` gives ``(V', P')``, ``dH`` and ``U' = F(V')``. Per chain::

    A    = min(1, exp(-dH))                                 (Metropolis acceptance)
    dQ^2 = (Q(U') - Q(U_0))^2,   Q = (1/2pi) sum_x sin theta_P(x)   (smooth charge)
    L    = -A dQ^2 / q0^2  +  lambda q0^2 / (A dQ^2 + delta)

the L2HMC-style expected-squared-jump loss (Levy, Hoffman, Sohl-Dickstein, ICLR 2018, with the
reciprocal term that penalises chains that do not move; ``q0`` sets the scale, ``delta`` keeps
it finite). ``U_0 = F(V)`` equals ``U`` up to the inverse's tolerance. The whole trajectory
is differentiated: every force ``dS~/dV`` is taken with ``create_graph=True`` through the flow,
so ``dL/dtheta`` is exact (checked against finite differences, tests/test_nthmc_qjump.py);
the cost is a double backward through ``n_md + 1`` force evaluations. With
``exact_gradient`` the starting point ``V = F^{-1}(U)`` carries the implicit gradient of the
Newton inverse too (the exact gradient over a fixed ensemble of ``U``).

:class:`QJumpTrainer` reuses :class:`kernels.flows.force_norm.ForceNormTrainer`'s loop
(replicated weights, all-reduced gradients, held-out validation with a fixed momentum draw,
early stopping, best weights restored). The transformation never changes what is sampled
(trivialized HMC is exact for any invertible ``F``); the objective only decides which ``F``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from parallel import global_sum
from parallel.rng import SiteRNG

from ..samplers.trivialized import TransformedTheory
from .force_norm import ForceNormConfig, ForceNormTrainer
from .metrics import replica_mean


def _gradient(transformed: TransformedTheory, v: torch.Tensor) -> torch.Tensor:
    """``dS~/dV`` (angles: the force), differentiable in ``V`` and the parameters."""
    s = transformed.action(v).sum()
    (g,) = torch.autograd.grad(s, v, create_graph=True)
    return g


def _kinetic(p: torch.Tensor, grid) -> torch.Tensor:
    return global_sum(0.5 * p.square().reshape(p.shape[0], -1).sum(1), grid)


def qjump_trajectory(
    transformed: TransformedTheory, v: torch.Tensor, p: torch.Tensor, eps: float, n_md: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(V', dH, U_0, F~(V))``: ``n_md`` leapfrog steps on ``S~(V) + P^2/2`` from ``(V, P)``,
    differentiable in the flow parameters (and in ``V`` when it carries a gradient);
    ``U_0 = F(V)``."""
    grid = transformed.grid
    with torch.enable_grad():
        x = v if v.requires_grad else v.detach().requires_grad_(True)
        g0 = g = _gradient(transformed, x)
        h0 = transformed.action(x) + _kinetic(p, grid)
        u0 = transformed.flow(x)[0]
        mom = p - 0.5 * eps * g
        for k in range(n_md):
            x = x + eps * mom
            g = _gradient(transformed, x)
            mom = mom - (eps if k < n_md - 1 else 0.5 * eps) * g
        h1 = transformed.action(x) + _kinetic(mom, grid)
    return x, h1 - h0, u0, g0


@dataclass
class QJumpConfig(ForceNormConfig):
    """Settings of :class:`QJumpTrainer` (on top of :class:`ForceNormConfig`'s loop settings;
    its force objective settings are unused)."""

    #: leapfrog steps and step size of the short trajectory
    n_md: int = 4
    step_size: float = 0.25
    #: scale ``q0`` of the charge jump and weight ``lambda`` of the reciprocal term
    q_scale: float = 1.0
    reciprocal_weight: float = 1.0
    delta: float = 1e-3
    #: seed of the momentum draws (step ``k`` uses counter ``k``; validation a fixed one)
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_md < 1 or not self.step_size > 0 or not self.q_scale > 0:
            raise ValueError("qjump needs n_md >= 1, step_size > 0 and q_scale > 0")
        if self.reciprocal_weight < 0 or not self.delta > 0:
            raise ValueError("qjump needs reciprocal_weight >= 0 and delta > 0")


#: momentum counter of the validation draw (training steps use 0, 1, 2, ...)
VALIDATION_COUNTER = 2**31


class QJumpTrainer(ForceNormTrainer):
    """``QJumpTrainer(flow, u1_theory, train_configs, QJumpConfig(...), validation=...)``.

    ``history`` rows add ``acceptance`` and ``dq2`` (means over the batch and replicas)."""

    def __init__(self, flow, theory, configurations, config=None, validation=None) -> None:
        config = config or QJumpConfig()
        if not isinstance(config, QJumpConfig):
            raise TypeError("QJumpTrainer needs a QJumpConfig")
        if not hasattr(theory, "topological_charge"):
            raise ValueError(f"qjump needs a theory with a topological charge, not {theory!r}")
        super().__init__(flow, theory, configurations, config, validation)
        self.rng = SiteRNG(config.seed)
        self.last: dict[str, float] = {}

    def objective_terms(self, configs: torch.Tensor, counter: int):
        """``(L, A, dQ^2, F~(V))`` per chain for the momenta of ``counter``; with
        ``map_back`` and ``exact_gradient`` ``V = F^{-1}(U)`` carries the implicit gradient
        of the inverse (the exact gradient over a fixed ensemble)."""
        cfg = self.config
        if not cfg.map_back:
            v = configs.detach()
        elif cfg.exact_gradient and torch.is_grad_enabled():
            v = self.flow.inverse(configs.detach())[0]
        else:
            with torch.no_grad():
                v = self.flow.inverse(configs.detach())[0]
        b = v.shape[0]
        p = self.theory.random_momentum(self.rng, counter, b, self.grid.replica * b).to(v.dtype)
        x, dh, u0, g0 = qjump_trajectory(self.transformed, v, p, cfg.step_size, cfg.n_md)
        u1 = self.transformed.flow(x)[0]
        q0, q1 = self.theory.topological_charge(u0), self.theory.topological_charge(u1)
        acc = torch.exp(torch.clamp(-dh, max=0.0))
        dq2 = (q1 - q0).square()
        jump = acc * dq2
        s2 = cfg.q_scale**2
        loss = -jump / s2 + cfg.reciprocal_weight * s2 / (jump + cfg.delta)
        return loss, acc, dq2, g0

    def loss(self, configs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean L, F~ at V)`` for this step's momentum draw (differentiable)."""
        loss, acc, dq2, g0 = self.objective_terms(configs, self.step_count)
        self.last = {
            "acceptance": replica_mean(float(acc.detach().mean()), self.grid),
            "dq2": replica_mean(float(dq2.detach().mean()), self.grid),
        }
        return loss.mean(), g0

    def evaluate(self, configs: torch.Tensor, counter: int = 0, chain_offset: int = 0) -> float:
        """Mean ``L`` with the fixed validation momenta (no parameter update). ``counter`` and
        ``chain_offset`` (:meth:`ForceNormTrainer.validate`'s auxiliary-field draw) are not
        used: every validation batch sees the momenta of ``VALIDATION_COUNTER``."""
        loss = self.objective_terms(configs, VALIDATION_COUNTER)[0]
        return replica_mean(float(loss.detach().mean()), self.grid)

    def step(self) -> dict[str, float]:
        """One Adam step (:meth:`ForceNormTrainer.step`) plus acceptance and ``dQ^2``."""
        m = super().step()
        m.update(self.last)
        return m

    def summary(self) -> dict:
        """Model-card summary with the trajectory settings."""
        s = super().summary()
        cfg = self.config
        s.update(objective="qjump", n_md=cfg.n_md, step_size=cfg.step_size)
        s.pop("power", None), s.pop("kappa", None)
        return s
