"""Action terms: the parts of an action that HMC integrates on their own time scales.

A theory's action is a sum ``S = sum_t S_t`` of named terms (:meth:`Theory.action_terms`),
e.g. the Schwinger model's ``gauge`` (``S_G``) and ``fermion`` (``phi^+ (D^+ D)^{-1} phi``)
terms. Each term has its own force ``F_t = dS_t/dfield`` (same momentum-space convention as
:meth:`Theory.force`), so a deck can put the expensive, small fermion force on an outer time
scale and the cheap, stiff gauge force inside it (``sampler.levels``;
:func:`kernels.integrators.make_integrator`).

Auxiliary fields (pseudofermions) belong to their term: ``refresh(field, rng, counter,
chain_offset)`` draws them once at the start of every trajectory (heatbath, with the term's
own RNG purpose, keyed by global site so every process grid draws the same field). During the
trajectory they are constant; ``action`` and ``force`` use the current ones. Work counters
(solver iterations) are reported by ``costs()`` (per chain where it makes sense) since the last
``reset_costs()``; HMC resets them at the start of a trajectory and writes them to the record
as ``"<term>.<counter>"``.

Failure policy: a term whose solver does not converge for a chain returns NaN for that chain's
action or force (and counts it in its costs); HMC then rejects that chain and counts it as
non-finite, the other chains are unaffected.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .theory import Theory


class ActionTerm(ABC):
    """One named part ``S_t`` of an action, with its force and optional auxiliary fields."""

    #: the name used in ``sampler.levels[*].terms``
    name: str = "action"

    def refresh(
        self,
        field: torch.Tensor,
        rng: Any,
        counter: int,
        chain_offset: int = 0,
        purpose: int | None = None,
    ) -> None:
        """Draw the auxiliary fields for the trajectory that starts at ``field`` (none here).

        ``purpose``: the RNG purpose of the draws (None: the term's own, the one HMC uses);
        another purpose gives noise independent of every HMC draw with the same seed."""
        return None

    @abstractmethod
    def action(self, field: torch.Tensor) -> torch.Tensor:
        """Global ``S_t`` per chain, shape ``(B,)``."""

    @abstractmethod
    def force(self, field: torch.Tensor) -> torch.Tensor:
        """``dS_t/dfield`` in the momentum space (local block)."""

    def costs(self) -> dict[str, Any]:
        """Work since the last :meth:`reset_costs` (e.g. ``{"cg_iterations": tensor(B)}``)."""
        return {}

    def reset_costs(self) -> None:
        """Zero the work counters."""
        return None


class WholeAction(ActionTerm):
    """The theory's full action as one term (theories without a split)."""

    def __init__(self, theory: Theory, name: str = "action") -> None:
        self.theory = theory
        self.name = name

    def action(self, field: torch.Tensor) -> torch.Tensor:
        """The theory's action."""
        return self.theory.action(field)

    def force(self, field: torch.Tensor) -> torch.Tensor:
        """The theory's force."""
        return self.theory.force(field)


def summed_force(terms: list[ActionTerm]):
    """``field -> sum_t F_t(field)`` for the given terms (one callable for a level)."""
    if len(terms) == 1:
        return terms[0].force

    def force(field: torch.Tensor) -> torch.Tensor:
        out = terms[0].force(field)
        for t in terms[1:]:
            out = out + t.force(field)
        return out

    return force


def select_terms(terms: list[ActionTerm], names: list[str], owner: str) -> list[ActionTerm]:
    """The terms called ``names`` (in that order); a clear error for an unknown name."""
    by_name = {t.name: t for t in terms}
    out = []
    for n in names:
        if n not in by_name:
            raise ValueError(f"{owner} has no action term {n!r}; its terms are {sorted(by_name)}")
        out.append(by_name[n])
    return out
