"""The exact-determinant marginal of the Schwinger model, for flows on small lattices.

Integrating out the pseudofermions leaves the gauge-field density

    p(U) = exp(-S_G(U)) det(D^+ D)(U) / Z = exp(-S_eff(U)) / Z,
    S_eff(U) = S_G(U) - 2 log|det D(U)|          (det D is real: g5-hermiticity),

with ``D`` the Wilson-Dirac operator of :mod:`kernels.fermions.wilson` (antiperiodic in t).
:class:`SchwingerMarginal` is a :class:`kernels.theory.Theory` whose action is ``S_eff``,
computed from the *dense* ``2V x 2V`` matrix of ``D`` (the matrix-free operator applied to
the unit vectors, differentiable in the links) and ``torch.linalg.slogdet``. So a gauge flow
can be trained by reverse KL on it (:class:`kernels.flows.train.Trainer`) and used for flow
independence Metropolis (:class:`kernels.samplers.flow_metropolis.FlowMetropolis`): exact
for any flow, no pseudofermions, no solver.

Cost ``O(V^3)`` per configuration and ``O(V^2)`` memory: refused above
:data:`MAX_SITES` sites with a clear error. The dense matrix needs the whole lattice on one
rank: the domain group must be a single rank (replica groups, i.e. independent chains on
other ranks, are fine). The force is the autograd gradient of ``S_eff`` (small lattices only).
"""

from __future__ import annotations

import torch

from ..fermions.wilson import WilsonDirac
from ..theories.schwinger import Schwinger
from ..theories.u1 import U1Gauge

#: largest lattice volume for the dense determinant (a 2048 x 2048 complex matrix per chain)
MAX_SITES = 1024


class MarginalSizeError(ValueError):
    """The lattice is too large (or split over ranks) for the dense determinant."""


def dense_dirac(theta: torch.Tensor, grid, kappa: float) -> torch.Tensor:
    """Dense ``D`` per chain, shape ``(B, 2V, 2V)``, index ``s V + x Lt + t``; differentiable in
    ``theta`` (the matrix-free operator applied to the unit vectors)."""
    vol = grid.volume
    n = 2 * vol
    batch = theta.shape[0]
    op = WilsonDirac(grid, theta.repeat_interleave(n, dim=0), kappa, differentiable=True)
    eye = torch.eye(n, dtype=op.dtype, device=theta.device).reshape(n, 2, *grid.local_shape)
    cols = op.apply(eye.repeat(batch, 1, 1, 1))
    return cols.reshape(batch, n, n).transpose(1, 2)


class SchwingerMarginal(U1Gauge):
    """Theory with ``S_eff = S_G - 2 log|det D|`` (module docstring) on U(1) angles."""

    #: the physics of "schwinger" (same field, prior and observables), marginalised
    name = "schwinger"

    def __init__(self, theory: Schwinger) -> None:
        grid = theory.grid
        super().__init__(grid, theory.beta, dtype=theory.dtype, device=theory.device)
        if grid.size != 1:
            raise MarginalSizeError(
                f"the exact-determinant marginal needs the whole lattice on one rank; the "
                f"domain group has {grid.size} ranks (use replicas for more chains)"
            )
        if grid.volume > MAX_SITES:
            raise MarginalSizeError(
                f"the exact-determinant marginal is for lattices of at most {MAX_SITES} sites "
                f"(a dense {2 * MAX_SITES}^2 matrix per chain); lattice {list(grid.shape)} has "
                f"{grid.volume}: use pseudofermion HMC or trivialized HMC instead"
            )
        self.theory = theory
        self.kappa = theory.kappa

    @property
    def params(self) -> dict[str, float]:
        """The couplings ``beta`` and ``kappa``."""
        return {"beta": self.beta, "kappa": self.kappa}

    def log_det(self, theta: torch.Tensor) -> torch.Tensor:
        """``log|det D|`` per chain (differentiable)."""
        return torch.linalg.slogdet(dense_dirac(theta, self.grid, self.kappa))[1]

    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """``S_eff = S_G - 2 log|det D|`` per chain (the Nf = 2 marginal, dense determinant)."""
        return U1Gauge.action(self, theta) - 2.0 * self.log_det(theta).to(theta.dtype)

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """``dS_eff/dtheta`` by autograd through the dense determinant."""
        with torch.enable_grad():
            x = theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.action(x).sum(), x)
        return g

    def observables(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Schwinger theory's observables."""
        return self.theory.observables(theta)
