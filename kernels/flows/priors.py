"""Base (prior) distributions of flows, drawn with the site-keyed RNG.

Draws are keyed by ``(seed, purpose, counter, global site, chain)``
(:class:`parallel.rng.SiteRNG`), so a batch of prior fields is the same global field for any
process grid, and training/proposals are reproducible from the seed and a counter.

* :class:`NormalPrior`: independent ``N(0, sigma^2)`` per real variable (phi^4),
  ``log r(v) = sum_x [-v(x)^2 / (2 sigma^2) - log(sigma sqrt(2 pi))]``;
* :class:`UniformAnglePrior`: Haar measure on U(1) links, angles uniform on ``(-pi, pi)``,
  ``log r = -N_links log(2 pi)`` (a constant; the density is 2 pi-periodic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from parallel import ProcessGrid, lattice_sum
from parallel.rng import PURPOSE_USER

#: RNG purpose of prior draws during training (proposals use ``PURPOSE_PROPOSAL``)
PURPOSE_TRAIN = PURPOSE_USER + 1


class Prior:
    """A base distribution on the theory's field layout."""

    def __init__(
        self,
        grid: ProcessGrid,
        lead: Sequence[int] = (),
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.grid = grid
        self.lead = tuple(int(n) for n in lead)
        self.first = 1 + len(self.lead)
        self.dtype = dtype
        self.device = torch.device(device)

    @property
    def n_variables(self) -> int:
        """Number of real variables of one global field."""
        return math.prod(self.lead) * self.grid.volume

    def sample(
        self, rng, counter: int, batch: int, chain_offset: int = 0, purpose: int = PURPOSE_TRAIN
    ) -> torch.Tensor:
        """A batch of ``batch`` draws keyed by (purpose, counter, global site, chain)."""
        raise NotImplementedError

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """Global ``log r(v)`` per chain, ``(B,)``."""
        raise NotImplementedError


class NormalPrior(Prior):
    """Independent Gaussians ``N(0, sigma^2)`` on every variable."""

    def __init__(self, grid: ProcessGrid, lead: Sequence[int] = (), sigma: float = 1.0, **kw):
        super().__init__(grid, lead, **kw)
        self.sigma = float(sigma)

    def sample(self, rng, counter, batch, chain_offset=0, purpose=PURPOSE_TRAIN):
        """Standard normal draws times ``sigma``, keyed by global site."""
        z = rng.normal(
            self.grid,
            purpose,
            counter,
            batch,
            lead=self.lead,
            chain_offset=chain_offset,
            dtype=self.dtype,
            device=self.device,
        )
        return self.sigma * z

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """``log r(v)`` per chain (global)."""
        quad = lattice_sum(v * v, self.grid, self.first) / (2.0 * self.sigma**2)
        return -quad - self.n_variables * (math.log(self.sigma) + 0.5 * math.log(2.0 * math.pi))


class UniformAnglePrior(Prior):
    """Haar measure on U(1) links: angles uniform on ``(-pi, pi)``."""

    def sample(self, rng, counter, batch, chain_offset=0, purpose=PURPOSE_TRAIN):
        """Uniform angles on ``(-pi, pi)``, keyed by global site."""
        u = rng.uniform(
            self.grid,
            purpose,
            counter,
            batch,
            lead=self.lead,
            chain_offset=chain_offset,
            dtype=self.dtype,
            device=self.device,
        )
        return 2.0 * math.pi * u - math.pi

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """``log r(v) = -n log(2 pi)`` per chain."""
        c = -self.n_variables * math.log(2.0 * math.pi)
        return torch.full((v.shape[0],), c, dtype=v.dtype, device=v.device)


def prior_for(theory, sigma: float = 1.0) -> Prior:
    """The natural prior of a theory, from its descriptor (:mod:`kernels.theories`): Haar
    for U(1) angles (``uniform_angle``), ``N(0, sigma^2)`` for real fields (``normal``)."""
    from ..theories import REGISTRY

    lead = theory.field_shape(1)[1 : theory.first]
    kw = {"dtype": theory.dtype, "device": theory.device}
    desc = REGISTRY.get(getattr(theory, "name", ""))
    kind = desc.prior if desc is not None else "normal"
    if kind == "uniform_angle":
        return UniformAnglePrior(theory.grid, lead, **kw)
    if kind != "normal" or theory.field_shape(1)[theory.first + theory.grid.ndim :]:
        raise ValueError(f"no default prior for the field layout of theory {theory.name!r}")
    return NormalPrior(theory.grid, lead, sigma=sigma, **kw)
