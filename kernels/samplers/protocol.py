"""The sampler protocol: what the run loop, the benchmarks and the trainers may rely on.

A sampler advances a batch of ``B`` independent Markov chains (the leading axis of the
*chain variable*, a tensor on this rank's local domain) by one update::

    state, record = sampler.trajectory(state, counter, chain_offset, tune=False)

* ``state`` is the chain variable: the field itself for HMC and flow Metropolis, the flow's
  input ``V`` for trivialized HMC. Anything else a sampler keeps per chain (flow Metropolis:
  the log weight of the current configuration) is internal and part of :meth:`state_dict`.
* ``counter`` (the trajectory number) keys every random draw of the update (momenta,
  auxiliary fields, proposals, accept/reject) through the site-keyed RNG, so the chains are the
  same on every process grid and a resumed run repeats the uninterrupted one bit for bit.
* ``to_physical(state)`` is the field that is measured and saved (``U = F(V)``);
  ``from_physical(u)`` maps a physical start back to the chain variable.
* ``state_dict()`` / ``load_state_dict()`` hold plain Python values (step size, tuner,
  counters) for checkpoints; ``finish_tuning()`` freezes any adaptation at the end of
  thermalisation.

Every update ends in the same Metropolis-Hastings test (:func:`metropolis`): the proposal is
accepted iff ``u_b < exp(-dH_b + log|J_b|)`` with ``u_b`` a per-chain uniform identical on every
rank. ``dH`` is the change of the (extended) Hamiltonian and ``log|J|`` the log-Jacobian of a
non-volume-preserving proposal map (L2HMC); for independence Metropolis ``dH = -(log w' -
log w)`` so that ``exp(-dH)`` is the Metropolis ratio and ``<exp(-dH)> = 1`` at equilibrium as
for HMC. Chains with a non-finite ``dH`` (or force, or a solver that did not converge) are
rejected and counted.

The record (:class:`Record`) has a shared core written by the run loop for every sampler, plus
``extra``: sampler-specific per-chain columns (tensors of shape ``(B,)``) or scalars, and
``costs``: per-action-term work counters (e.g. ``fermion.cg_iterations``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(kw_only=True)
class Record:
    """What one update of a batch of chains did; per-chain tensors have shape ``(B,)`` and
    are global quantities, identical on every rank of a domain group."""

    #: the counter that keyed the update's random draws (the trajectory number)
    counter: int
    #: change of the (extended) Hamiltonian; NaN/Inf for non-finite chains
    dH: torch.Tensor
    #: Metropolis decision (always False for non-finite chains)
    accepted: torch.Tensor
    #: ``min(1, exp(-dH + log|J|))`` (0 for non-finite chains)
    acceptance_probability: torch.Tensor
    #: ``exp(-dH)`` as computed (its mean is 1 at equilibrium for volume-preserving updates)
    exp_minus_dH: torch.Tensor
    #: chains with a non-finite force, ``dH`` or solver failure (rejected)
    nonfinite: torch.Tensor
    n_nonfinite: int = 0
    #: outer step size and step count (0 for samplers without molecular dynamics)
    step_size: float = 0.0
    n_steps: int = 0
    #: force evaluations in this update (all levels and terms together)
    n_force: int = 0
    #: seconds for this update on this rank
    wall_time: float = 0.0
    #: log-Jacobian of the proposal map per chain (None: volume preserving)
    log_jacobian: torch.Tensor | None = None
    #: reversibility check (None when not done): ``max |phi_back - phi_0|`` and ``|dH_back|``
    reversibility_field_error: torch.Tensor | None = None
    reversibility_dH_error: torch.Tensor | None = None
    #: sampler-specific columns: per-chain tensors ``(B,)`` or plain scalars
    extra: dict[str, Any] = field(default_factory=dict)
    #: per-term work counters, ``"<term>.<what>"`` -> per-chain tensor or int
    costs: dict[str, Any] = field(default_factory=dict)

    @property
    def acceptance(self) -> float:
        """Fraction of chains that accepted."""
        return float(self.accepted.double().mean())

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (lists per chain) for JSON lines and HDF5 tables."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().tolist()
            elif isinstance(value, dict):
                value = {
                    k: v.detach().cpu().tolist() if isinstance(v, torch.Tensor) else v
                    for k, v in value.items()
                }
            out[key] = value
        return out


@dataclass(frozen=True)
class MetropolisResult:
    """Outcome of :func:`metropolis` per chain."""

    accepted: torch.Tensor
    acceptance_probability: torch.Tensor
    exp_minus_dH: torch.Tensor


def metropolis(
    dH: torch.Tensor,
    uniform: torch.Tensor,
    log_jacobian: torch.Tensor | None = None,
    bad: torch.Tensor | None = None,
) -> MetropolisResult:
    """The Metropolis-Hastings test shared by every sampler.

    Accept chain ``b`` iff ``uniform_b < exp(-dH_b + log|J_b|)`` and the chain is finite;
    ``acceptance_probability = min(1, exp(-dH + log|J|))`` (0 for ``bad`` or non-finite
    chains). ``uniform`` must be the same on every rank of a lattice (site-keyed chain draws).
    """
    with torch.no_grad():
        exp_mdh = torch.exp(-dH)
        if log_jacobian is None:
            ratio = exp_mdh
        else:
            ratio = torch.exp(-dH + log_jacobian.to(dH.dtype))
        invalid = ~torch.isfinite(dH)
        if log_jacobian is not None:
            invalid = invalid | ~torch.isfinite(log_jacobian)
        if bad is not None:
            invalid = invalid | bad
        u = uniform.to(device=dH.device)
        accepted = (u < ratio) & ~invalid
        prob = torch.where(invalid, torch.zeros_like(ratio), ratio.clamp(max=1.0))
    return MetropolisResult(accepted, prob, exp_mdh)


def take_accepted(
    accepted: torch.Tensor,
    proposal: torch.Tensor,
    current: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per chain: the proposal where ``accepted``, else the current field (bit for bit).

    ``project`` (e.g. ``theory.project``: reunitarise links, wrap angles) is applied to the
    proposal when any chain accepts, so rejected chains keep their field unchanged.
    """
    with torch.no_grad():
        mask = accepted.to(current.device).view((current.shape[0],) + (1,) * (current.ndim - 1))
        if project is not None and bool(accepted.any()):
            proposal = project(proposal)
        return torch.where(mask, proposal, current)


class NonFiniteTrajectoryWarning(RuntimeWarning):
    """Some chains had a NaN/Inf force, energy change or log-Jacobian; they were rejected."""


def report_nonfinite(
    sampler: str,
    counter: int,
    bad: torch.Tensor,
    chain_offset: int,
    is_root: bool,
    category: type[Warning] = NonFiniteTrajectoryWarning,
) -> int:
    """Count the rejected non-finite chains of one update and warn once (domain root only).

    Returns the number of bad chains (for ``Record.n_nonfinite`` and the sampler's running
    total). The warning names the sampler, the trajectory counter and the global chain indices.
    """
    n_bad = int(bad.sum())
    if n_bad and is_root:
        chains = [chain_offset + int(b) for b in torch.nonzero(bad).flatten()]
        warnings.warn(
            f"{sampler} trajectory {counter}: {n_bad} chain(s) {chains} had a non-finite "
            f"force, dH or log-Jacobian and were rejected",
            category,
            stacklevel=3,
        )
    return n_bad


@runtime_checkable
class Sampler(Protocol):
    """The interface of every sampler (HMC, trivialized HMC, flow Metropolis, L2HMC, ...)."""

    #: deck name of the sampler (``hmc``, ``trivialized_hmc``, ``flow_metropolis``, ...)
    name: str

    def trajectory(
        self,
        state: torch.Tensor,
        counter: int,
        chain_offset: int = 0,
        *,
        tune: bool = False,
    ) -> tuple[torch.Tensor, Record]:
        """One update of every chain in the batch; returns the new state and its record."""
        ...

    def to_physical(self, state: torch.Tensor) -> torch.Tensor:
        """The physical field of the chain variable (what is measured and saved)."""
        ...

    def from_physical(self, field: torch.Tensor) -> torch.Tensor:
        """The chain variable of a physical field (for starts from a configuration)."""
        ...

    def finish_tuning(self) -> None:
        """End any adaptation (step size) at the end of thermalisation."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...
