"""Trivialized-action theory: HMC in the flow's input variable ``V``.

With an invertible flow ``U = F(V)`` the target ``exp(-S(U)) dU`` becomes
``exp(-S~(V)) dV`` with the *trivialized action*

    S~(V) = S(F(V)) - log|det dF/dV|(V)

(Lüscher, CMP 293 (2010) 899; Albandea et al., arXiv:2211.12806). :class:`TransformedTheory`
implements the :class:`kernels.theory.Theory` interface on ``V`` (same field layout, same
momentum space and kinetic term as the wrapped theory), so plain
``HMC(TransformedTheory(theory, flow), ...)`` is trivialized HMC, exact for *any* invertible
flow (trained or not); the Metropolis step uses ``H = K + S~``.

Force: ``dS~/dV`` by autograd through the distributed flow (``torch.autograd.grad`` of the
per-chain global ``S~`` summed over the batch, w.r.t. the local ``V``; the halo exchanges and
the all-reduce of the log-det carry the gradient across ranks). For fields in a group manifold
the theory may define ``force_from_gradient(field, grad)`` to turn the Euclidean gradient into
its momentum-space force; complex fields (SU(N) links) without that hook get the left Lie
derivative ``F = -TA(V G^+)/2`` of :func:`kernels.flows.lie.lie_force_from_gradient`; otherwise
the gradient is the force (phi^4, U(1) angles).

Measurements and saved configurations use the physical field ``U = F(V)``
(:meth:`TransformedTheory.to_physical`); :meth:`TransformedTheory.observables` measures on it.
Starts: :meth:`hot_start`/:meth:`cold_start` map the physical starts back with ``F^{-1}``;
:meth:`prior_start` draws ``V`` from a prior.
"""

from __future__ import annotations

import torch

from ..flows.base import Flow
from ..flows.lie import lie_force_from_gradient
from ..theory import Theory


class TransformedTheory(Theory):
    """``S~(V) = S(F(V)) - log det F(V)`` for a theory and a flow (see module docstring)."""

    def __init__(self, theory: Theory, flow: Flow) -> None:
        super().__init__(theory.grid, dtype=theory.dtype, device=theory.device)
        if flow.grid.shape != theory.grid.shape or flow.grid.local_shape != theory.grid.local_shape:
            raise ValueError(
                f"flow lattice {list(flow.grid.shape)} (local {list(flow.grid.local_shape)}) "
                f"differs from the theory's {list(theory.grid.shape)} "
                f"(local {list(theory.grid.local_shape)}); rebuild the flow with rebuild_for()"
            )
        if flow.first != theory.first:
            raise ValueError(
                f"flow acts on fields with lattice axes at dim {flow.first}, the theory "
                f"{theory.name!r} at dim {theory.first}"
            )
        self.theory = theory
        self.flow = flow
        self.name = theory.name
        self.first = theory.first
        self.is_gauge = theory.is_gauge

    # ------------------------------------------------------------ layout
    def field_shape(self, batch: int) -> tuple[int, ...]:
        return self.theory.field_shape(batch)

    def momentum_shape(self, batch: int) -> tuple[int, ...]:
        return self.theory.momentum_shape(batch)

    @property
    def params(self) -> dict[str, float]:
        return self.theory.params

    # ------------------------------------------------------------ the map
    def to_physical(self, v: torch.Tensor) -> torch.Tensor:
        """``U = F(V)`` (no autograd)."""
        with torch.no_grad():
            return self.flow(v)[0]

    def from_physical(self, u: torch.Tensor) -> torch.Tensor:
        """``V = F^{-1}(U)`` (no autograd)."""
        with torch.no_grad():
            return self.flow.inverse(u)[0]

    # ------------------------------------------------------------ dynamics
    def action_and_physical(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S~(V), U = F(V))``."""
        u, logdet = self.flow(v)
        return self.theory.action(u) - logdet, u

    def action(self, v: torch.Tensor) -> torch.Tensor:
        return self.action_and_physical(v)[0]

    def force(self, v: torch.Tensor) -> torch.Tensor:
        """``dS~/dV`` by autograd through the flow (any dtype the flow runs in)."""
        with torch.enable_grad():
            x = v.detach().requires_grad_(True)
            s = self.action(x)
            (grad,) = torch.autograd.grad(s.sum(), x)
        tangent = getattr(self.theory, "force_from_gradient", None)
        if tangent is None and v.is_complex():
            # SU(N) links: the left Lie derivative of S~ (kernels/flows/lie.py)
            tangent = lie_force_from_gradient
        return tangent(v, grad) if tangent is not None else grad

    def kinetic(self, momentum: torch.Tensor) -> torch.Tensor:
        return self.theory.kinetic(momentum)

    def evolve_field(self, v: torch.Tensor, momentum: torch.Tensor, eps: float) -> torch.Tensor:
        return self.theory.evolve_field(v, momentum, eps)

    def random_momentum(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        return self.theory.random_momentum(rng, counter, batch, chain_offset)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """The theory's projection when the flow commutes with it (periodic angle flows)."""
        return self.theory.project(v) if self.flow.periodic else v

    # ------------------------------------------------------------ starts and measurements
    def cold_start(self, batch: int) -> torch.Tensor:
        """``V = F^{-1}(U_cold)``."""
        return self.from_physical(self.theory.cold_start(batch))

    def hot_start(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """``V = F^{-1}(U_hot)`` with the theory's site-keyed hot start."""
        return self.from_physical(self.theory.hot_start(rng, counter, batch, chain_offset))

    def prior_start(self, prior, rng, counter: int, batch: int, chain_offset: int = 0):
        """``V`` drawn from ``prior`` (e.g. :func:`kernels.flows.priors.prior_for`)."""
        from parallel.rng import PURPOSE_START

        return prior.sample(rng, counter, batch, chain_offset, purpose=PURPOSE_START)

    def observables(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The wrapped theory's observables measured on ``U = F(V)``."""
        with torch.no_grad():
            return self.theory.observables(self.to_physical(v))
