"""Gauge-equivariant parallel-transport convolution (nearest-neighbour, any dimension).

For a field ``psi`` with ``C`` channels, in the fundamental representation
``(B, C, *local, N)`` or the adjoint ``(B, C, *local, N, N)`` (matrix form), and links
``U_mu(x)`` of shape ``(B, Nd, *local, N, N)`` (:class:`kernels.theories.su3.SU3Gauge`)::

    out(x) = W_0 psi(x) + sum_mu [ W_{mu,+} T_{mu,+} psi(x) + W_{mu,-} T_{mu,-} psi(x) ]

    fundamental:  T_{mu,+} psi(x) = U_mu(x) psi(x + mu),
                  T_{mu,-} psi(x) = U_mu(x - mu)^+ psi(x - mu),
    adjoint:      T_{mu,+} psi(x) = U_mu(x) psi(x + mu) U_mu(x)^+,
                  T_{mu,-} psi(x) = U_mu(x - mu)^+ psi(x - mu) U_mu(x - mu),

with real channel-mixing matrices ``W`` of shape ``(C_out, C_in)`` acting on the channel index
only (no bias: a constant would break covariance). Under a gauge transformation
``U_mu(x) -> g(x) U_mu(x) g(x + mu)^+``, ``psi(x) -> g(x) psi(x)`` (adjoint:
``g psi g^+``) every transported term transforms like ``psi(x)``, so ``out -> g out``
(``g out g^+``): the layer is gauge *equivariant* (cf. the lattice gauge-equivariant CNNs of
Favoni, Ipp, Müller, Schuh, PRL 128 (2022) 032003).

Distributed with :func:`parallel.shift` (``bc`` per axis, e.g. antiperiodic time for
fermions), so it equals the single-rank result on any process grid; autograd-aware.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from parallel import ProcessGrid, shift

from ..groups.su_n import dagger

REPRESENTATIONS = ("fundamental", "adjoint")


class ParallelTransportConv(nn.Module):
    """Nearest-neighbour parallel-transport convolution (module docstring).

    ``forward(psi, u)``: ``psi`` ``(B, C_in, *local, N)`` (fundamental) or
    ``(B, C_in, *local, N, N)`` (adjoint), ``u`` the links; returns ``(B, C_out, ...)``.
    """

    def __init__(
        self,
        grid: ProcessGrid,
        in_channels: int,
        out_channels: int,
        representation: str = "fundamental",
        bc: Sequence[int] | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}")
        self.grid = grid
        self.representation = representation
        self.bc = bc
        nd = grid.ndim
        dt = dtype or torch.get_default_dtype()
        self.weight_0 = nn.Parameter(torch.empty(out_channels, in_channels, dtype=dt))
        self.weight_fwd = nn.Parameter(torch.empty(nd, out_channels, in_channels, dtype=dt))
        self.weight_bwd = nn.Parameter(torch.empty(nd, out_channels, in_channels, dtype=dt))
        bound = 1.0 / math.sqrt(in_channels * (2 * nd + 1))
        for w in (self.weight_0, self.weight_fwd, self.weight_bwd):
            nn.init.uniform_(w, -bound, bound)

    @property
    def _trail(self) -> int:
        return 1 if self.representation == "fundamental" else 2

    def transport(self, psi: torch.Tensor, u: torch.Tensor, mu: int, k: int) -> torch.Tensor:
        """``T_{mu,+} psi`` (``k = +1``) or ``T_{mu,-} psi`` (``k = -1``), shape of ``psi``."""
        g = self.grid
        umu = u[:, mu].unsqueeze(1)  # (B, 1, *local, N, N)
        fund = self.representation == "fundamental"
        if k > 0:
            nb = shift(psi, g, mu, 1, first=2, bc=self.bc)
            if fund:
                return (umu @ nb.unsqueeze(-1)).squeeze(-1)
            return umu @ nb @ dagger(umu)
        if fund:
            local = (dagger(umu) @ psi.unsqueeze(-1)).squeeze(-1)
        else:
            local = dagger(umu) @ psi @ umu
        return shift(local, g, mu, -1, first=2, bc=self.bc)

    def forward(self, psi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The parallel-transported convolution of ``psi`` with the links ``u``."""
        nd = self.grid.ndim
        if psi.ndim != 2 + nd + self._trail:
            raise ValueError(
                f"{self.representation} field needs {2 + nd + self._trail} dims "
                f"(B, C, *local, colour), got shape {tuple(psi.shape)}"
            )

        def mix(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("oc,bc...->bo...", w.to(x.dtype), x)

        out = mix(self.weight_0, psi)
        for mu in range(nd):
            out = out + mix(self.weight_fwd[mu], self.transport(psi, u, mu, +1))
            out = out + mix(self.weight_bwd[mu], self.transport(psi, u, mu, -1))
        return out

    def extra_repr(self) -> str:
        """Layer settings for ``repr``."""
        o, i = self.weight_0.shape
        return f"{i}, {o}, representation={self.representation}, ndim={self.grid.ndim}"
