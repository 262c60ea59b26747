"""The interface every lattice theory implements; samplers and flows use only this.

A theory owns its field layout on the local domain of a :class:`parallel.ProcessGrid`:

* ``field_shape(B)`` is the local shape of a batch of ``B`` fields, e.g. scalar
  ``(B, *local)``, U(1) angles ``(B, Nd, *local)``, SU(N) ``(B, Nd, *local, N, N)`` complex;
* ``first`` is the array dim of lattice axis 0 in a field (1 for scalars, 2 for gauge fields).

Molecular dynamics convention (docs/conventions.md): the Hamiltonian is
``H = K(pi) + S(phi)``; ``force(phi)`` returns ``F = dS/dphi`` in the tangent space of the
field (for SU(N): ``F = sum_a T_a d/dw_a S(exp(w_b T_b) U)``, the left Lie derivative, with
anti-Hermitian generators ``T_a``, ``Tr T_a T_b = -delta_ab / 2``), so that the equations of
motion are ``dpi/dt = -F`` and ``dphi/dt = pi`` (``dU/dt = P U``).

All per-chain quantities (``action``, ``kinetic``, observables) are *global*: summed over the
whole lattice (all ranks of the domain group) and returned with shape ``(B,)``, identical on
every rank of the domain group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch

from parallel import ProcessGrid

from .action import ActionTerm, WholeAction, select_terms, summed_force


class ResidentMD(Protocol):
    """Molecular dynamics in a kernel backend's own layout for one trajectory (e.g. the
    ``vnode`` SU(3) layout), so that the layout conversion is paid once per trajectory
    instead of once per force and drift. The integrator calls :meth:`enter`, then only
    :meth:`force`, :meth:`evolve` and ``pi.sub_(F, alpha=h)`` on the returned momentum (an
    element-wise update: any layout works), then :meth:`leave`. Forces and momenta are
    tensors with the chain as their leading dim (the integrator's per-chain NaN check).

    Optional, not declared here (a subclass must not inherit a stub): ``kick(phi, pi, h)``,
    ``pi - h F(phi)`` in place, the force and the update in one pass. Where it exists and the
    integrator has one level, the integrator merges the kicks that meet at a step boundary
    (same ``phi``) into one and calls it instead of :meth:`force` and ``pi.sub_``: one kick
    per force evaluation (``kernels.backends.vnode.PackedMD.kick``)."""

    def enter(self, field: torch.Tensor, momentum: torch.Tensor) -> tuple[object, torch.Tensor]:
        """``(phi, pi)`` in the resident layout (copies: the inputs are not modified)."""

    def force(self, phi: object) -> torch.Tensor:
        """The force of the theory at ``phi``, in the layout of ``pi``."""

    def evolve(self, phi: object, pi: torch.Tensor, eps: float) -> object:
        """The drift of length ``eps`` (a new ``phi``)."""

    def leave(self, phi: object, pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(field, momentum)`` in the theory's layout."""

    def action(self, phi: object) -> torch.Tensor | None:
        """Optional: the theory's action ``(B,)`` at ``phi``, bit for bit ``theory.action``
        of the field :meth:`leave` would return (the integrator asks at the start and at the
        end when the sampler wants the Hamiltonian's actions), or None where it cannot."""


class Theory(ABC):
    """A lattice field theory on a distributed lattice."""

    name: str = "theory"
    #: array dim of lattice axis 0 in a field
    first: int = 1
    #: True when the field lives in a group (compact variables, exponential update)
    is_gauge: bool = False

    def __init__(
        self,
        grid: ProcessGrid,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.grid = grid
        self.dtype = dtype
        self.device = torch.device(device)

    # ------------------------------------------------------------ layout
    @abstractmethod
    def field_shape(self, batch: int) -> tuple[int, ...]:
        """Local shape of a batch of fields on this rank."""

    def momentum_shape(self, batch: int) -> tuple[int, ...]:
        """Local shape of a batch of conjugate momenta (default: the field shape)."""
        return self.field_shape(batch)

    @property
    def params(self) -> dict[str, float]:
        """Couplings that define the physics (stored in ensembles and checkpoints)."""
        return {}

    # ------------------------------------------------------------ dynamics
    @abstractmethod
    def action(self, field: torch.Tensor) -> torch.Tensor:
        """Global action per chain, shape ``(B,)``; differentiable with autograd."""

    @abstractmethod
    def force(self, field: torch.Tensor) -> torch.Tensor:
        """Analytic ``dS/dfield`` in the momentum space, local shape ``momentum_shape``."""

    @abstractmethod
    def kinetic(self, momentum: torch.Tensor) -> torch.Tensor:
        """Global kinetic energy per chain, shape ``(B,)``."""

    @abstractmethod
    def evolve_field(self, field: torch.Tensor, momentum: torch.Tensor, eps: float) -> torch.Tensor:
        """Field after a drift of length ``eps``: ``phi + eps pi`` or ``exp(eps P) U``."""

    @abstractmethod
    def random_momentum(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Gaussian momenta distributed as ``exp(-K)``, keyed by global site (any grid gives
        the same global field). ``rng`` is a :class:`parallel.rng.SiteRNG`."""

    def resident_md(self, field: torch.Tensor, forces: list) -> ResidentMD | None:
        """A faster representation of ``(field, momentum)`` for a whole MD trajectory whose
        level forces are ``forces`` (:class:`ResidentMD`), or None (the default): the
        integrator then works on the fields as they are."""
        return None

    def has_resident_md(self) -> bool:
        """Whether this theory can offer a :meth:`resident_md` at all (it overrides it):
        samplers then take the Hamiltonian's actions from the integrator
        (``integrate(actions=True)``), where side-effect free :meth:`action` s allow."""
        return type(self).resident_md is not Theory.resident_md

    # ------------------------------------------------------------ starts and measurements
    @abstractmethod
    def cold_start(self, batch: int) -> torch.Tensor:
        """Ordered start (zero field / unit links)."""

    @abstractmethod
    def hot_start(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Disordered start keyed by global site."""

    @abstractmethod
    def observables(self, field: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-chain global observables, each of shape ``(B,)``."""

    def project(self, field: torch.Tensor) -> torch.Tensor:
        """Bring a field back onto its manifold (reunitarise links); identity by default."""
        return field

    # ------------------------------------------------------------ action terms
    def action_terms(self) -> list[ActionTerm]:
        """The named parts ``S = sum_t S_t`` of the action (:mod:`kernels.action`).

        Default: the whole action as one term, called ``gauge`` for gauge theories and
        ``action`` otherwise. Theories with auxiliary fields or a useful split (the Schwinger
        model: ``gauge``, ``fermion``) return one object per term, the same objects on every
        call (they hold the auxiliary fields).
        """
        if getattr(self, "_whole_action", None) is None:
            self._whole_action = [WholeAction(self, "gauge" if self.is_gauge else "action")]
        return self._whole_action

    def refresh(
        self,
        field: torch.Tensor,
        rng,
        counter: int,
        chain_offset: int = 0,
        purpose: int | None = None,
    ) -> None:
        """Draw every term's auxiliary fields for a trajectory starting at ``field``
        (``purpose``: see :meth:`kernels.action.ActionTerm.refresh`)."""
        for term in self.action_terms():
            term.refresh(field, rng, counter, chain_offset, purpose)

    def term_force(self, names: list[str]):
        """``field -> F`` of the sum of the named terms (one level of a nested integrator)."""
        return summed_force(select_terms(self.action_terms(), list(names), f"theory {self.name!r}"))

    def reset_costs(self) -> None:
        """Zero every term's work counters (start of a trajectory)."""
        for term in self.action_terms():
            term.reset_costs()

    def costs(self) -> dict[str, object]:
        """Work counters of every term since :meth:`reset_costs`, as ``"<term>.<counter>"``."""
        return {f"{t.name}.{k}": v for t in self.action_terms() for k, v in t.costs().items()}


class RealFieldTheory(Theory):
    """A theory whose field takes values in R^n (a scalar, or unwrapped U(1) angles).

    Momenta are standard normal per real degree of freedom (site-keyed, purpose
    ``PURPOSE_MOMENTUM``), ``K = (1/2) sum pi^2`` and the drift is ``phi + eps pi``.
    """

    def kinetic(self, momentum: torch.Tensor) -> torch.Tensor:
        """``K = (1/2) sum pi^2`` per chain (global)."""
        from parallel import lattice_sum

        return 0.5 * lattice_sum(momentum * momentum, self.grid, 1)

    def evolve_field(self, field: torch.Tensor, momentum: torch.Tensor, eps: float) -> torch.Tensor:
        """``phi + eps pi``."""
        return field + eps * momentum

    def random_momentum(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Standard normal momenta per real degree of freedom (site-keyed, ``PURPOSE_MOMENTUM``)."""
        from parallel.rng import PURPOSE_MOMENTUM

        return rng.normal(
            self.grid,
            PURPOSE_MOMENTUM,
            counter,
            batch,
            lead=tuple(self.field_shape(1)[1 : self.first]),
            chain_offset=chain_offset,
            dtype=self.dtype,
            device=self.device,
        )
