"""Trivialized-action theory: HMC in the flow's input variable ``V``.

With an invertible flow ``U = F(V)`` the target ``exp(-S(U)) dU`` becomes
``exp(-S~(V)) dV`` with the *trivialized action*

    S~(V) = S(F(V)) - log|det dF/dV|(V)

(Lüscher, CMP 293 (2010) 899; Albandea et al., arXiv:2211.12806). :class:`TransformedTheory`
implements the :class:`kernels.theory.Theory` interface on ``V`` (same field layout, same
momentum space and kinetic term as the wrapped theory), so plain
``HMC(TransformedTheory(theory, flow), ...)`` is trivialized HMC, exact for *any* invertible
flow (trained or not); the Metropolis step uses ``H = K + S~``.

Force: the physical force at ``U = F(V)`` pulled back through the distributed flow by one
vector-Jacobian product, minus the log-det gradient (:func:`kernels.flows.pullback.
pullback_force`; the halo exchanges and the all-reduce of the log-det carry the gradient across
ranks). The physical theory's analytic force is used, never autograd through the action or a
solver; the SU(N) Lie-derivative conversions live in :mod:`kernels.flows.pullback`.

Action terms (:mod:`kernels.action`): the transformed theory has one term per physical term
(same name, ``S_t(F(V))``) plus ``logdet`` (``-log|det dF/dV|``), so a deck can put, e.g., the
pulled-back fermion force on an outer time scale and ``gauge`` + ``logdet`` inside it; a level
with several terms costs one flow forward/backward. Auxiliary fields are drawn at the physical
field: ``refresh(V)`` refreshes the physical theory at ``U = F(V)`` (pseudofermion heatbath
``phi = D(U)^+ chi``).

Measurements and saved configurations use the physical field ``U = F(V)``
(:meth:`TransformedTheory.to_physical`); :meth:`TransformedTheory.observables` measures on it.
Starts: :meth:`hot_start`/:meth:`cold_start` map the physical starts back with ``F^{-1}``;
:meth:`prior_start` draws ``V`` from a prior.
"""

from __future__ import annotations

import torch

from ..action import ActionTerm, select_terms
from ..flows.base import Flow
from ..flows.pullback import pullback_force
from ..theory import Theory

LOGDET_TERM = "logdet"


class _NamedTerm(ActionTerm):
    """A term of the transformed theory: its action through the flow; forces go through
    :meth:`TransformedTheory.term_force` (one pullback per level)."""

    def __init__(self, owner: TransformedTheory, name: str) -> None:
        self.owner = owner
        self.name = name

    def action(self, v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            u, logdet = self.owner.flow(v)
            if self.name == LOGDET_TERM:
                return -logdet
            phys = select_terms(self.owner.theory.action_terms(), [self.name], "theory")[0]
            return phys.action(u)

    def force(self, v: torch.Tensor) -> torch.Tensor:
        return self.owner.term_force([self.name])(v)


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
        """The wrapped theory's field layout."""
        return self.theory.field_shape(batch)

    def momentum_shape(self, batch: int) -> tuple[int, ...]:
        """The wrapped theory's momentum layout."""
        return self.theory.momentum_shape(batch)

    @property
    def params(self) -> dict[str, float]:
        """The wrapped theory's couplings."""
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
        """``S~(V) = S(F(V)) - log|det dF/dV|`` per chain."""
        return self.action_and_physical(v)[0]

    def force(self, v: torch.Tensor) -> torch.Tensor:
        """``dS~/dV``: the physical force pulled back through the flow, minus the log-det
        gradient (:func:`kernels.flows.pullback.pullback_force`)."""
        return pullback_force(self.flow, self.theory, v, self.theory.force)

    # ------------------------------------------------------------ action terms
    def action_terms(self) -> list[ActionTerm]:
        """One term per physical term (same names) plus ``logdet``."""
        if getattr(self, "_terms", None) is None:
            names = [t.name for t in self.theory.action_terms()] + [LOGDET_TERM]
            self._terms = [_NamedTerm(self, n) for n in names]
        return self._terms

    def term_force(self, names: list[str]):
        """Force of the named terms: one pullback of their summed physical force (and the
        log-det gradient if ``logdet`` is among them)."""
        names = list(names)
        select_terms(self.action_terms(), names, f"trivialized {self.name!r}")
        physical = [n for n in names if n != LOGDET_TERM]
        with_logdet = LOGDET_TERM in names
        phys_force = self.theory.term_force(physical) if physical else None

        def force(v: torch.Tensor) -> torch.Tensor:
            return pullback_force(self.flow, self.theory, v, phys_force, with_logdet=with_logdet)

        return force

    def refresh(
        self,
        v: torch.Tensor,
        rng,
        counter: int,
        chain_offset: int = 0,
        purpose: int | None = None,
    ) -> None:
        """Auxiliary fields of the physical theory, drawn at ``U = F(V)``."""
        terms = self.theory.action_terms()
        if any(type(t).refresh is not ActionTerm.refresh for t in terms):
            self.theory.refresh(self.to_physical(v), rng, counter, chain_offset, purpose)

    def reset_costs(self) -> None:
        """Zero the physical theory's work counters."""
        self.theory.reset_costs()

    def costs(self) -> dict[str, object]:
        """The physical theory's work counters."""
        return self.theory.costs()

    def kinetic(self, momentum: torch.Tensor) -> torch.Tensor:
        """The wrapped theory's kinetic energy."""
        return self.theory.kinetic(momentum)

    def evolve_field(self, v: torch.Tensor, momentum: torch.Tensor, eps: float) -> torch.Tensor:
        """The wrapped theory's drift (``V`` lives where ``U`` does)."""
        return self.theory.evolve_field(v, momentum, eps)

    def random_momentum(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """The wrapped theory's momenta."""
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
