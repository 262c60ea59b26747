"""NTHMC on several time scales, and step-size tuning on a few chains.

**Split action** (:class:`FlowSplitTheory`). The trivialized action
``S~(V) = S(F(V)) - log|det dF/dV|`` of a near-identity field transformation differs from the
plain action at ``V`` by a smooth correction. Its terms (:mod:`kernels.action`) are::

    <t>_plain        = S_t(V)                        for each physical term t in ``inner``
    flow_correction  = S(F(V)) - log|det dF/dV|(V) - sum_{t in inner} S_t(V)

so their sum is exactly ``S~`` and a deck can put the cheap plain gauge force (no flow) on the
inner time scale and the flow correction, whose force needs one flow forward and backward
(:func:`kernels.flows.pullback.pullback_force`), outside
(``make_integrator(theory, levels=[LevelSpec(("flow_correction",), n), LevelSpec(
("gauge_plain",), m)])``). The correction's force is the pulled-back force minus the plain
forces at ``V``; a level holding every term costs a single pullback. Physical terms that are
not ``inner`` (e.g. a fermion term) are part of ``flow_correction``; auxiliary fields are still
drawn at ``U = F(V)`` (:meth:`TransformedTheory.refresh`).

**Tuning on few chains** (:func:`tune_on_few_chains`). The transformed force costs a network
forward and backward, so the step size is tuned by dual averaging (:class:`HMC` with
``target_acceptance``) on a small batch for a few trajectories, then frozen and reused by the
production run with many chains (the acceptance depends on the per-chain ``dH``, not on the
number of chains).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..action import ActionTerm, select_terms
from ..flows.base import Flow
from ..flows.pullback import pullback_force
from ..theory import Theory
from .hmc import HMC
from .trivialized import TransformedTheory

CORRECTION_TERM = "flow_correction"
PLAIN_SUFFIX = "_plain"


class _SplitTerm(ActionTerm):
    def __init__(self, owner: FlowSplitTheory, name: str) -> None:
        self.owner = owner
        self.name = name

    def action(self, v: torch.Tensor) -> torch.Tensor:
        o = self.owner
        with torch.no_grad():
            if self.name != CORRECTION_TERM:
                return o._physical([self.name.removesuffix(PLAIN_SUFFIX)])[0].action(v)
            u, logdet = o.flow(v)
            out = o.theory.action(u) - logdet
            for t in o._physical(o.inner):
                out = out - t.action(v)
            return out

    def force(self, v: torch.Tensor) -> torch.Tensor:
        return self.owner.term_force([self.name])(v)


class FlowSplitTheory(TransformedTheory):
    """``S~`` split into ``<t>_plain`` terms at ``V`` and a ``flow_correction`` (see module
    docstring). ``inner``: physical term names evaluated without the flow (default
    ``("gauge",)``)."""

    def __init__(self, theory: Theory, flow: Flow, inner: Sequence[str] = ("gauge",)) -> None:
        super().__init__(theory, flow)
        self.inner = list(inner)
        if not self.inner:
            raise ValueError("FlowSplitTheory needs at least one inner (plain) term")
        select_terms(theory.action_terms(), self.inner, f"theory {theory.name!r}")

    def _physical(self, names: Sequence[str]) -> list[ActionTerm]:
        return select_terms(self.theory.action_terms(), list(names), f"theory {self.name!r}")

    def action_terms(self) -> list[ActionTerm]:
        if getattr(self, "_split_terms", None) is None:
            names = [t + PLAIN_SUFFIX for t in self.inner] + [CORRECTION_TERM]
            self._split_terms = [_SplitTerm(self, n) for n in names]
        return self._split_terms

    def term_force(self, names: list[str]):
        """Force of the named split terms (one pullback if the correction is among them)."""
        names = list(names)
        select_terms(self.action_terms(), names, f"split trivialized {self.name!r}")
        plain = [n.removesuffix(PLAIN_SUFFIX) for n in names if n != CORRECTION_TERM]
        with_corr = CORRECTION_TERM in names
        # plain forces at V that do not cancel: +plain if only the plain term, -plain if only
        # the correction (which subtracts every inner term)
        signs = {t: 0.0 for t in self.inner}
        for t in plain:
            signs[t] += 1.0
        if with_corr:
            for t in self.inner:
                signs[t] -= 1.0
        active = [(t, s) for t, s in signs.items() if s != 0.0]
        pulled = self.theory.force if with_corr else None

        def force(v: torch.Tensor) -> torch.Tensor:
            out = None
            if pulled is not None:
                out = pullback_force(self.flow, self.theory, v, pulled, with_logdet=True)
            for t, s in active:
                f = s * self.theory.term_force([t])(v)
                out = f if out is None else out + f
            return out

        return force


def tune_on_few_chains(
    hmc: HMC, v: torch.Tensor, n_trajectories: int, counter: int = 1, chain_offset: int = 0
) -> tuple[int, torch.Tensor]:
    """Dual-averaging step-size tuning on the (few) chains ``v``, then freeze.

    ``hmc`` must have ``target_acceptance``. Returns ``(n_steps, v)``: the frozen outer step
    count (also set on ``hmc``) and the chains after tuning. Trajectories use counters
    ``counter .. counter + n_trajectories - 1``.
    """
    if hmc.target_acceptance is None:
        raise ValueError("tune_on_few_chains needs HMC(target_acceptance=...)")
    for t in range(int(n_trajectories)):
        v, _ = hmc.trajectory(v, counter + t, chain_offset, tune=True)
    hmc.finish_tuning()
    return hmc.n_steps, v
