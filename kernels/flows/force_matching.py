"""Force-matching / force-reduction training of a flow on configurations (NTHMC approach).

Trivialized HMC runs on ``S~(V) = S(F(V)) - log|det dF/dV|``; its cost is set by the size of
the force ``F~ = dS~/dV`` (step size ~ 1 / force). Following Jin's neural-network field
transformation HMC (X.-Y. Jin, PoS LATTICE2021 (2022) 600, arXiv:2201.01862) the flow is
trained to make that force small (or close to a target force ``T``, e.g. that of a cheaper or
smoother action) on configurations of the ensemble::

    L = mean_chains [ (1/n) sum_{variables i} |F~_i(V) - T_i(V)|^p ],      p = 2 by default,

where a *variable* is one link (``|f|^2 = sum_a f_a^2 = -2 Tr F^2``, the 8 algebra components of
the left Lie derivative, :mod:`kernels.flows.lie`) or one real field component (phi^4, U(1)
angles), and ``n`` their global number per chain. Configurations ``U ~ exp(-S)`` (e.g. from
plain HMC) are mapped to ``V = F^{-1}(U)`` with the current flow (no gradient through the
inverse; then ``V ~ exp(-S~)``, the distribution trivialized HMC samples), or used as ``V``
directly (``map_back=False``).

The loss needs the derivative of the force with respect to the flow parameters: ``F~`` is
computed with ``create_graph=True`` and ``L.backward()`` differentiates twice through the
distributed flow (the shifts and halo exchanges of :mod:`parallel` are autograd-aware to
second order; the log-det is all-reduced with the autograd-aware ``global_sum``). Weights are
replicated (:func:`parallel.broadcast_parameters`); every rank's backward gives the gradient
of its local sites, :func:`parallel.allreduce_gradients` sums it over the domain group and
averages over replica groups, so every rank takes the same Adam step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from parallel import allreduce_gradients, broadcast_parameters, global_sum

from ..samplers.trivialized import TransformedTheory
from ..theory import Theory
from .base import Flow
from .metrics import replica_mean
from .pullback import pullback_force
from .train import StepLoop

Target = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def trivialized_force(
    theory: TransformedTheory,
    v: torch.Tensor,
    create_graph: bool = True,
    physical_force: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``F~ = dS~/dV`` in the momentum space (SU(N): left Lie derivative), local block.

    The one trivialized force (:func:`kernels.flows.pullback.pullback_force`). With
    ``create_graph=True`` the result stays differentiable with respect to the flow's
    parameters (double backward); ``v`` itself is treated as data. ``physical_force``: the
    physical force pulled back (default ``theory.theory.force``; with ``create_graph`` it must
    be differentiable in ``U``, e.g. :class:`kernels.flows.force_norm_fermions.FullForce`).
    """
    return pullback_force(
        theory.flow,
        theory.theory,
        v,
        physical_force or theory.theory.force,
        create_graph=create_graph,
    )


class CouplingTarget:
    """Force matching to another coupling: ``T(V) = dS_target/dV``, the plain force of
    ``target`` (the same theory, e.g. at a coarser ``beta``) at the trivialized variables.

    nthmc's SU(3) recipe (Jin, arXiv:2201.01862): with ``F~_beta(V) ~ F_target(V)`` the
    trivialized action is ``S_target(V) + const``, so HMC on ``V`` moves like plain HMC at the
    target coupling while ``U = F(V)`` samples ``beta`` exactly. Differentiable in ``V`` (the
    exact-gradient path of :class:`kernels.flows.force_norm.ForceNormTrainer`).
    """

    def __init__(self, theory: Theory, target: Theory) -> None:
        if type(target) is not type(theory):
            raise ValueError(
                f"the target force must come from the same theory ({type(theory).__name__}), "
                f"got {type(target).__name__}"
            )
        if tuple(target.grid.shape) != tuple(theory.grid.shape):
            raise ValueError(
                f"target theory on lattice {list(target.grid.shape)}, the theory is on "
                f"{list(theory.grid.shape)}"
            )
        self.target = target
        self.description = "force at " + ", ".join(
            f"{k}={v:g}" for k, v in target.params.items() if isinstance(v, (int, float))
        )

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``T(V)``: the target theory's force at ``V``."""
        return self.target.force(v)


def variable_norms(f: torch.Tensor, theory: Theory) -> torch.Tensor:
    """``|f_i|`` per variable: per link ``sqrt(sum_a f_a^2) = sqrt(2 sum_ij |F_ij|^2)`` for
    complex (algebra-matrix) forces, ``|f|`` per component for real ones; shape
    ``(B, n_local)``."""
    b = f.shape[0]
    if f.is_complex():
        sq = 2.0 * (f.real.square() + f.imag.square()).sum((-1, -2))
        return sq.reshape(b, -1).clamp_min(0.0).sqrt()
    return f.reshape(b, -1).abs()


def force_loss_per_chain(
    f: torch.Tensor, theory: Theory, target: torch.Tensor | None = None, power: float = 2.0
) -> torch.Tensor:
    """``(1/n) sum_i |f_i - t_i|^p`` per chain (global over the lattice), shape ``(B,)``."""
    d = f if target is None else f - target
    if power == 2.0:  # smooth at zero force
        if d.is_complex():
            per = 2.0 * (d.real.square() + d.imag.square()).sum((-1, -2))
        else:
            per = d.square()
        per = per.reshape(d.shape[0], -1)
    else:
        per = variable_norms(d, theory).pow(power)
    n = per.shape[1] * theory.grid.size
    return global_sum(per.sum(1), theory.grid) / n


def force_matching_loss(
    theory: TransformedTheory, v: torch.Tensor, target: Target = None, power: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, F~)``: the loss (scalar, mean over the chains of this replica group,
    differentiable in the flow parameters) and the trivialized force it was built from."""
    f = trivialized_force(theory, v, create_graph=True)
    t = target(v) if callable(target) else target
    per_chain = force_loss_per_chain(f, theory.theory, None if t is None else t.detach(), power)
    return per_chain.mean(), f


@dataclass
class ForceMatchingConfig:
    """Hyper-parameters of force-matching training (plain values, stored in checkpoints)."""

    steps: int = 100
    #: configurations per step (and replica group)
    batch: int = 4
    lr: float = 1e-3
    #: ``constant`` | ``cosine`` (to ``lr_min`` at ``steps``)
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    #: exponent ``p`` of the loss
    power: float = 2.0
    grad_clip: float | None = None
    #: configurations are physical ``U``: train at ``V = F^{-1}(U)`` (else use them as ``V``)
    map_back: bool = True

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}")
        if self.steps < 0 or self.batch < 1 or not self.power > 0:
            raise ValueError("steps must be >= 0, batch >= 1 and power > 0")


class ForceMatchingTrainer(StepLoop):
    """``ForceMatchingTrainer(flow, theory, configurations).train()``.

    ``configurations``: a tensor ``(N, ...)`` of local blocks of ``N`` configurations (the same
    chains on every rank of a domain group; give each replica group its own), cycled in
    batches of ``config.batch``; or a callable ``step -> (batch, ...)`` tensor (e.g. fresh
    HMC configurations). ``target``: ``None`` (force reduction), a tensor, or a callable
    ``V -> T(V)``. ``history`` holds per-step metrics, identical on every rank of a domain
    group: ``loss`` (mean over replicas), ``force_rms`` (RMS per variable of ``F~``), ``lr``.
    """

    def __init__(
        self,
        flow: Flow,
        theory: Theory,
        configurations: torch.Tensor | Callable[[int], torch.Tensor],
        config: ForceMatchingConfig | None = None,
        target: Target = None,
    ) -> None:
        self.flow = flow
        self.theory = theory
        self.transformed = TransformedTheory(theory, flow)
        self.grid = theory.grid
        self.config = config or ForceMatchingConfig()
        self.configurations = configurations
        self.target = target
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        broadcast_parameters(flow, self.grid)
        cfg = self.config
        self.optimizer = torch.optim.Adam(flow.parameters(), lr=cfg.lr)
        if cfg.lr_schedule == "cosine":
            self.scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(cfg.steps, 1), eta_min=cfg.lr_min
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    def batch_at(self, step: int) -> torch.Tensor:
        """The configurations of ``step`` (physical or ``V``, as given)."""
        if callable(self.configurations):
            return self.configurations(step)
        n, b = self.configurations.shape[0], self.config.batch
        idx = (step * b + torch.arange(b)) % n
        return self.configurations[idx.to(self.configurations.device)]

    def inputs(self, configs: torch.Tensor) -> torch.Tensor:
        """``V`` for the loss: ``F^{-1}(U)`` with the current flow, or the configurations."""
        if not self.config.map_back:
            return configs.detach()
        with torch.no_grad():
            return self.flow.inverse(configs.detach())[0]

    def loss(self, configs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, F~)`` on a batch of configurations (differentiable in the parameters)."""
        v = self.inputs(configs)
        return force_matching_loss(self.transformed, v, self.target, self.config.power)

    def evaluate(self, configs: torch.Tensor) -> float:
        """The loss on ``configs`` (mean over replica groups), no parameter update."""
        v = self.inputs(configs)
        f = trivialized_force(self.transformed, v, create_graph=False)
        t = self.target(v) if callable(self.target) else self.target
        with torch.no_grad():
            per = force_loss_per_chain(f, self.theory, t, self.config.power)
        return replica_mean(float(per.mean()), self.grid)

    def step(self) -> dict[str, float]:
        """One Adam step; returns (and records) its metrics."""
        t0 = time.perf_counter()
        cfg = self.config
        self.flow.train()
        loss, f = self.loss(self.batch_at(self.step_count))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        allreduce_gradients(self.flow, self.grid)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            ms = force_loss_per_chain(f.detach(), self.theory, None, 2.0).mean()
        metrics = {
            "step": self.step_count,
            "loss": replica_mean(float(loss.detach()), self.grid),
            "force_rms": math.sqrt(replica_mean(float(ms), self.grid)),
            "lr": lr,
            "time": time.perf_counter() - t0,
        }
        self.step_count += 1
        self.history.append(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Trainer state (flow, optimiser, scheduler, step, history) for checkpoints."""
        return {
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "config": asdict(self.config),
            "history": list(self.history),
            "architecture": self.flow.architecture,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])
        self.history = list(state.get("history", []))
        broadcast_parameters(self.flow, self.grid)
