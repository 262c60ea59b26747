"""NTHMC on the Schwinger model trained on the force HMC integrates (issue 15 item 5).

Trivialized HMC on ``S~(V) = S_G(F(V)) + S_pf(F(V)) - log|det dF/dV|`` integrates

    F~(V) = (dU/dV)^T [F_G(U) + F_pf(U)] - d log|det dF/dV| / dV,      U = F(V),

with ``S_pf = sum_terms phi^+ (...)^{-1} phi`` (plain and Hasenbusch ratio terms of
:mod:`kernels.theories.schwinger`). In the Schwinger model the pseudofermion force dominates,
so the force-norm objectives of :mod:`kernels.flows.force_norm` are taken on this *full*
force: :class:`FullForce` is the physical force ``F_G + F_pf`` with ``F_pf`` differentiable in
``U`` through the implicit solve of :mod:`kernels.fermions.implicit` (the parameter gradient of
``|F~|^p`` needs ``d F_pf / dU``: one more CG per solve in the backward, no differentiation
through CG iterations). ``fermions=False`` gives the gauge force only (``F_G`` pulled back plus
the log-det force; the "trained on the gauge force" baseline).

**Pseudofermions** (``prepare``). For each training configuration ``U`` (physical, from a
plain-HMC ensemble) the heatbath of the theory at ``U``: ``phi = D^+ chi`` (ratio terms
``phi = D_1^{-+} D^+ chi``), ``chi`` complex Gaussian from :class:`parallel.rng.SiteRNG`
``(seed)`` with its own purpose :data:`PURPOSE_PF_TRAIN` (not the one HMC draws its
pseudofermions with, so training noise is independent of the noise of any run with the same
seed, e.g. the run that made the training ensemble), counter and chain offset given by the
trainer (training step ``s``: counter ``s + 1``, a fresh draw every step; validation: counter
0, chain offset = index in the validation set, the same draw at every validation; replica
groups' counters shifted by :data:`REPLICA_STRIDE`). So the
loss is ``E_U E_chi L(F~)``, estimated with one draw per configuration and step, reproducible
from ``seed`` on any process grid (site-keyed RNG).

Public API: :func:`schwinger_force_norm_trainer` (``fermions=True`` by default); from a deck
``train: {architecture: schwinger_nthmc, loss: force_norm, force_norm: {fermion_force:
true}}`` (docs/nthmc.md).
"""

from __future__ import annotations

import torch

from parallel.rng import PURPOSE_USER, SiteRNG

from ..fermions.implicit import SolveStats, pseudofermion_force

#: RNG purpose of the training pseudofermions (HMC's heatbath uses PURPOSE_PSEUDOFERMION)
PURPOSE_PF_TRAIN = PURPOSE_USER + 14

#: counter stride between replica groups of the pseudofermion draws (counters < 2^32)
REPLICA_STRIDE = 1 << 24


class FullForce:
    """The physical force of a Schwinger theory for force-norm training: ``F_G + F_pf``
    (``fermions=True``) or ``F_G``; differentiable in ``U`` (module docstring)."""

    def __init__(self, theory, seed: int = 0, fermions: bool = True) -> None:
        if not hasattr(theory, "pseudofermion_terms"):
            raise TypeError(
                f"FullForce needs a theory with pseudofermions (schwinger), got {theory.name!r}"
            )
        self.theory = theory
        self.fermions = bool(fermions)
        self.seed = int(seed)
        self.rng = SiteRNG(self.seed)
        #: CG work of the differentiable solves (forward and backward)
        self.stats = SolveStats()
        self.description = "gauge + pseudofermion + log-det" if fermions else "gauge + log-det"
        self._gauge = theory.term_force(["gauge"])

    def prepare(self, u: torch.Tensor, counter: int, chain_offset: int = 0) -> None:
        """Heatbath of every pseudofermion term at the physical configurations ``u`` (replica
        group ``r`` draws with counter ``counter + r * REPLICA_STRIDE``: independent noise on
        every replica's configurations)."""
        if self.fermions:
            c = int(counter) + self.theory.grid.replica * REPLICA_STRIDE
            self.theory.refresh(u.detach(), self.rng, c, chain_offset, PURPOSE_PF_TRAIN)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """``F_G(u) [+ F_pf(u)]``, differentiable in ``u``."""
        f = self._gauge(u)
        if self.fermions:
            f = f + pseudofermion_force(self.theory, u, self.stats)
        return f


def schwinger_force_norm_trainer(
    flow,
    theory,
    configurations,
    config=None,
    validation=None,
    *,
    fermions: bool = True,
    seed: int = 0,
):
    """A :class:`kernels.flows.force_norm.ForceNormTrainer` of ``flow`` (e.g.
    :func:`kernels.flows.nthmc_u1.u1_nthmc_flow`) on a Schwinger ``theory`` whose objective acts
    on the full trivialized force (gauge + pseudofermion + log-det; ``fermions=False``: gauge +
    log-det), pseudofermions drawn from ``seed`` (module docstring)."""
    from .force_norm import ForceNormConfig, ForceNormTrainer

    return ForceNormTrainer(
        flow,
        theory,
        configurations,
        config or ForceNormConfig(),
        validation=validation,
        physical=FullForce(theory, seed, fermions),
    )
