"""Conditional pseudofermion flow ``phi = f_c(chi | U)`` of the Schwinger model (Abbott et al.,
arXiv:2207.08945), made of gauge-equivariant parallel-transport layers with an exact log-det.

Fields: ``chi``, ``phi`` complex spinors of layout ``(B, 2, Lx, Lt)`` (spin dim 1, as
:mod:`kernels.fermions.wilson`), links ``U_mu(x) = exp(i theta_mu(x))`` from angles
``(B, 2, Lx, Lt)``. Base density of ``chi`` (:class:`ComplexGaussianPrior`): independent
complex Gaussians with ``<|chi|^2> = 1`` per component,

    log r(chi) = -sum_{x,s} |chi_s(x)|^2 - 2 V log(pi)        (2V complex components).

Layer (:class:`PseudofermionCoupling`) with *active* sites of one parity ``p(x) = (x_0 + x_1)
mod 2`` (global coordinates) and *frozen* sites of the other (all nearest neighbours of an
active site are frozen)::

    phi(x) = chi(x)                                          x frozen,
    phi(x) = exp(s(x)) * chi(x) + (B[U] chi_f)(x)              x active,

    (B[U] psi)(x) = sum_mu [ W_{mu,+} U_mu(x) psi(x + mu) + W_{mu,-} U_mu(x - mu)^* psi(x - mu) ],

with learned complex ``2 x 2`` spin matrices ``W`` (shifts with the fermion boundary
conditions: antiperiodic in t, so ``W_{mu,+} = -kappa (1 + g_mu)``, ``W_{mu,-} = -kappa
(1 - g_mu)`` is the hopping term of the heatbath ``D^+``) and a real per-site, per-spin
``s(x) = MLP(features(x))`` of *gauge-invariant* features: ``cos``/``sin`` of the four
plaquettes touching ``x`` and ``log(1 + |chi_f|^2)`` of the four (frozen) neighbours. Since
``s`` and ``B`` depend only on ``U`` and the frozen sites, the Jacobian is triangular with the
diagonal ``exp(s)``; as a real map of ``R^{4V}`` (real and imaginary parts) its log-det is

    log|det d phi / d chi| = 2 sum_{x active} sum_s s_s(x),

and the inverse is exact: ``chi(x) = exp(-s(x)) (phi(x) - (B[U] phi_f)(x))`` on active sites.
Gauge equivariance: under ``U_mu(x) -> g(x) U_mu(x) g(x+mu)^*``, ``chi(x) -> g(x) chi(x)`` (U(1)
``g``) the features are invariant and ``B[U] chi_f`` transforms like ``chi(x)``, so
``f_c(g chi | U^g) = g f_c(chi | U)`` with the same log-det.

Distributed through :func:`parallel.shift` (global parity masks, global sums of the log-det):
the same function for every process grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from parallel import ProcessGrid, shift

from ..fermions.cg import norm2
from ..fermions.wilson import FERMION_BC, GAMMA
from .base import dtype_from_name, global_logdet, logdet_terms, parity_mask
from .grid_stable import log1p
from .u1 import plaquette


class ComplexGaussianPrior:
    """Complex Gaussian spinors, ``<|chi|^2> = 1`` per component (module docstring)."""

    def __init__(self, grid: ProcessGrid, dtype: torch.dtype = torch.float64, device="cpu") -> None:
        self.grid = grid
        self.dtype = dtype
        self.device = torch.device(device)

    @property
    def n_components(self) -> int:
        """Complex components of one global spinor field (``2 V``)."""
        return 2 * self.grid.volume

    def sample(self, rng, counter: int, batch: int, chain_offset: int, purpose: int):
        """``(B, 2, *local)`` complex draws keyed by (purpose, counter, global site, chain)."""
        from ..theories.schwinger import complex_noise

        z = complex_noise(rng, self.grid, purpose, counter, batch, (), chain_offset, self.device)
        return z if self.dtype == torch.float64 else z.to(torch.complex64)

    def log_prob(self, chi: torch.Tensor) -> torch.Tensor:
        """``log r(chi) = -|chi|^2 - 2 V log(pi)`` per chain (global, grid-independent)."""
        return -norm2(chi, self.grid) - self.n_components * math.log(math.pi)


def links(theta: torch.Tensor) -> torch.Tensor:
    """``U_mu(x) = exp(i theta_mu(x))`` (differentiable in ``theta``)."""
    return torch.complex(torch.cos(theta), torch.sin(theta))


def heatbath_weights(kappa: float) -> torch.Tensor:
    """``W`` of the hopping term of ``D^+`` (``-kappa (1 +- g_mu)``), shape
    ``(2 mu, 2 direction, 2, 2)`` complex; direction 0 is ``+mu``, 1 is ``-mu``."""
    one = torch.eye(2, dtype=torch.complex128)
    w = torch.zeros(2, 2, 2, 2, dtype=torch.complex128)
    for mu in range(2):
        w[mu, 0] = -kappa * (one + GAMMA[mu])
        w[mu, 1] = -kappa * (one - GAMMA[mu])
    return w


class PseudofermionCoupling(nn.Module):
    """One parity layer of the conditional flow (module docstring)."""

    n_features = 12

    def __init__(
        self,
        grid: ProcessGrid,
        parity: int,
        hidden: int = 8,
        init_kappa: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if grid.ndim != 2:
            raise ValueError(f"the pseudofermion flow is 2D, lattice {list(grid.shape)}")
        if any(n % 2 for n in grid.shape):
            raise ValueError(f"parity layers need even extents, lattice {list(grid.shape)}")
        self.grid = grid
        self.parity = int(parity) % 2
        self.register_buffer("active", parity_mask(grid, self.parity, dtype=dtype))
        w = torch.view_as_real(heatbath_weights(init_kappa)).to(dtype)
        #: ``W`` as (mu, direction, 2, 2, re/im)
        self.weight = nn.Parameter(w.clone())
        self.net = nn.Sequential(
            nn.Conv2d(self.n_features, hidden, 1, dtype=dtype),
            nn.Tanh(),
            nn.Conv2d(hidden, 2, 1, dtype=dtype),
        )
        nn.init.zeros_(self.net[2].weight)  # starts with s = 0 (A = 1)
        nn.init.zeros_(self.net[2].bias)

    def _shift(self, x: torch.Tensor, mu: int, k: int, first: int, bc=None) -> torch.Tensor:
        return shift(x, self.grid, mu, k, first=first, bc=bc)

    def transport(self, psi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``B[U] psi`` (parallel transport from the nearest neighbours, spin matrices W)."""
        w = torch.view_as_complex(self.weight.contiguous()).to(psi.dtype)
        batch = psi.shape[0]
        out = torch.zeros_like(psi)
        for mu in range(2):
            fwd = u[:, mu].unsqueeze(1) * self._shift(psi, mu, 1, 2, FERMION_BC)
            bwd = self._shift(u[:, mu].conj().unsqueeze(1) * psi, mu, -1, 2, FERMION_BC)
            term = w[mu, 0] @ fwd.reshape(batch, 2, -1) + w[mu, 1] @ bwd.reshape(batch, 2, -1)
            out = out + term.reshape(psi.shape)
        return out

    def features(self, theta: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        """Gauge-invariant features ``(B, 12, *local)``: cos/sin of the plaquettes at ``x``,
        ``x - 0``, ``x - 1``, ``x - 0 - 1`` and ``log(1 + |chi_f|^2)`` at ``x +- mu``."""
        p = plaquette(theta, self.grid, 0, 1)
        p0 = self._shift(p, 0, -1, 1)
        plaqs = [p, p0, self._shift(p, 1, -1, 1), self._shift(p0, 1, -1, 1)]
        dens = log1p((frozen.real**2 + frozen.imag**2).sum(dim=1))  # grid-stable
        nbs = [self._shift(dens, mu, k, 1) for mu in range(2) for k in (1, -1)]
        feats = [torch.cos(q) for q in plaqs] + [torch.sin(q) for q in plaqs] + nbs
        return torch.stack(feats, dim=1).to(self.active.dtype)

    def _coefficients(self, theta: torch.Tensor, frozen: torch.Tensor):
        u = links(theta).to(frozen.dtype)
        s = self.net(self.features(theta, frozen)) * self.active
        return s, self.transport(frozen, u)

    def forward(self, chi: torch.Tensor, theta: torch.Tensor):  # type: ignore[override]
        """``(phi, log-det terms)``: ``2 s`` per active site and component, ``(B, ...)``
        (summed exactly over the lattice by the caller, so the total is grid-independent)."""
        frozen = chi * (1.0 - self.active)
        s, b = self._coefficients(theta, frozen)
        phi = frozen + self.active * (torch.exp(s) * chi + b)
        return phi, 2.0 * s

    def inverse(self, phi: torch.Tensor, theta: torch.Tensor):
        """``(chi, log|det d chi / d phi| terms)``: the exact inverse of :meth:`forward`."""
        frozen = phi * (1.0 - self.active)
        s, b = self._coefficients(theta, frozen)
        chi = frozen + self.active * torch.exp(-s) * (phi - b)
        return chi, -2.0 * s


class ConditionalPseudofermionFlow(nn.Module):
    """``phi = f_c(chi | U)``: parity layers alternating even, odd, even, ... (module doc).

    ``forward(chi, theta) -> (phi, log|det dphi/dchi|)``, ``inverse(phi, theta) -> (chi,
    log|det dchi/dphi|)``; log-dets global per chain, ``(B,)`` (real ``4V``-dim Jacobian).
    """

    def __init__(self, grid: ProcessGrid, layers: list[PseudofermionCoupling]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("the conditional pseudofermion flow needs at least one layer")
        self.grid = grid
        self.layers = nn.ModuleList(layers)
        self.architecture: dict[str, Any] | None = None

    def forward(self, chi: torch.Tensor, theta: torch.Tensor):  # type: ignore[override]
        """``(phi, global log-det)``."""
        terms = []
        for layer in self.layers:
            chi, d = layer(chi, theta)
            terms.append(logdet_terms(d))
        return chi, global_logdet(torch.cat(terms, dim=1), self.grid)

    def inverse(self, phi: torch.Tensor, theta: torch.Tensor):
        """``(chi, global log|det dchi/dphi|)``."""
        terms = []
        for layer in reversed(self.layers):
            phi, d = layer.inverse(phi, theta)
            terms.append(logdet_terms(d))
        return phi, global_logdet(torch.cat(terms, dim=1), self.grid)


def pseudofermion_flow(
    grid: ProcessGrid,
    n_layers: int = 4,
    hidden: int = 8,
    init_kappa: float = 0.0,
    dtype: str | torch.dtype = "float64",
) -> ConditionalPseudofermionFlow:
    """``n_layers`` parity layers (even first); ``init_kappa > 0`` starts the transport of the
    first two layers at the hopping term of the heatbath ``D^+`` with that kappa (then
    ``phi = D^+ chi`` up to ``O(kappa^2)`` on the odd sites), the others at zero."""
    if int(n_layers) < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    dt = dtype_from_name(dtype)
    layers = [
        PseudofermionCoupling(grid, i % 2, int(hidden), float(init_kappa) if i < 2 else 0.0, dt)
        for i in range(int(n_layers))
    ]
    flow = ConditionalPseudofermionFlow(grid, layers)
    flow.architecture = {
        "n_layers": int(n_layers),
        "hidden": int(hidden),
        "init_kappa": float(init_kappa),
        "dtype": str(dt).removeprefix("torch."),
    }
    return flow
