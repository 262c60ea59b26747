"""Real scalar phi^4 theory on a periodic hypercubic lattice (2D in the decks, any dimension).

Action (the "beta/lambda" parametrisation, docs/conventions.md)::

    S[phi] = sum_x [ -beta sum_mu phi(x + mu) phi(x) + phi(x)^2 + lambda (phi(x)^2 - 1)^2 ]

Force (the gradient of the action, ``dpi/dt = -F``)::

    F(x) = dS/dphi(x) = -beta sum_mu [phi(x + mu) + phi(x - mu)] + 2 phi(x)
                        + 4 lambda phi(x) (phi(x)^2 - 1)

Field layout: ``(B, L_0, ..., L_{d-1})`` local block, ``first = 1``; the *last* lattice axis is
time ``t`` (used by the time-slice correlator). Momenta are standard normal,
``K = (1/2) sum_x pi(x)^2``, drift ``phi -> phi + eps pi``.

Free theory (``lambda = 0``): ``S = (1/2) phi^T A phi`` with
``A(p) = 2 - 2 beta sum_mu cos p_mu = beta (m^2 + sum_mu 4 sin^2(p_mu / 2))``,
``m^2 = 2/beta - 2d``; stable for ``beta < 1/d``. See :func:`free_propagator_two_point`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from parallel import ProcessGrid, lattice_sum, row_sum, shift

from ..theory import RealFieldTheory


class Phi4(RealFieldTheory):
    """phi^4 theory ``S = sum_x [-beta sum_mu phi_{x+mu} phi_x + phi_x^2 + lam (phi_x^2-1)^2]``.

    The quartic coupling is ``lam`` (Python keyword) or ``lambda`` (deck key):
    ``Phi4(grid, beta=0.5, lam=0.1)`` and ``Phi4(grid, beta=0.5, **{"lambda": 0.1})`` are
    the same theory.
    """

    name = "phi4"
    first = 1
    is_gauge = False

    def __init__(
        self,
        grid: ProcessGrid,
        beta: float,
        lam: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        **couplings: float,
    ) -> None:
        super().__init__(grid, dtype=dtype, device=device)
        if "lambda" in couplings:
            if lam is not None:
                raise TypeError("give the quartic coupling once, as lam or as lambda")
            lam = couplings.pop("lambda")
        if couplings:
            raise TypeError(f"Phi4 got unknown couplings {sorted(couplings)}")
        if lam is None:
            raise TypeError("Phi4 needs the quartic coupling lam (deck key: lambda)")
        self.beta = float(beta)
        self.lam = float(lam)

    # ------------------------------------------------------------ layout
    def field_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.grid.local_shape)

    @property
    def params(self) -> dict[str, float]:
        return {"beta": self.beta, "lambda": self.lam}

    def _shift(self, phi: torch.Tensor, mu: int, k: int) -> torch.Tensor:
        return shift(phi, self.grid, mu, k, first=1)

    # ------------------------------------------------------------ dynamics
    def action_density(self, phi: torch.Tensor) -> torch.Tensor:
        """Local action density ``s(x)`` with ``S = sum_x s(x)``, shape of ``phi``."""
        hop = sum(self._shift(phi, mu, 1) for mu in range(self.grid.ndim))
        phi2 = phi * phi
        return -self.beta * phi * hop + phi2 + self.lam * (phi2 - 1.0) ** 2

    def action(self, phi: torch.Tensor) -> torch.Tensor:
        return lattice_sum(self.action_density(phi), self.grid, 1)

    def force(self, phi: torch.Tensor) -> torch.Tensor:
        nb = sum(self._shift(phi, mu, 1) + self._shift(phi, mu, -1) for mu in range(self.grid.ndim))
        return -self.beta * nb + 2.0 * phi + 4.0 * self.lam * phi * (phi * phi - 1.0)

    # ------------------------------------------------------------ starts
    def cold_start(self, batch: int) -> torch.Tensor:
        """All ``phi(x) = 0``."""
        return torch.zeros(self.field_shape(batch), dtype=self.dtype, device=self.device)

    def hot_start(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Independent standard-normal ``phi(x)`` (site-keyed, purpose ``PURPOSE_START``)."""
        from parallel.rng import PURPOSE_START

        return rng.normal(
            self.grid,
            PURPOSE_START,
            counter,
            batch,
            chain_offset=chain_offset,
            dtype=self.dtype,
            device=self.device,
        )

    # ------------------------------------------------------------ measurements
    def magnetisation(self, phi: torch.Tensor) -> torch.Tensor:
        """``M = (1/V) sum_x phi(x)`` per chain, shape ``(B,)``."""
        return lattice_sum(phi, self.grid, 1) / self.grid.volume

    def time_slices(self, phi: torch.Tensor) -> torch.Tensor:
        """``Phi(t) = sum_{x: x_t = t} phi(x)`` on the global time axis, shape ``(B, L_t)``.

        Time is the last lattice axis. Each rank contributes its local time slices to the
        rows ``(b, t0 + t)``; the sums are exact (correctly rounded, grid-independent).
        """
        t_axis = self.grid.ndim - 1
        lt, local_lt = self.grid.shape[t_axis], self.grid.local_shape[t_axis]
        t0 = self.grid.offset[t_axis]
        batch = phi.shape[0]
        slices = phi.movedim(1 + t_axis, 1).reshape(batch * local_lt, -1)
        t_glob = torch.arange(t0, t0 + local_lt, device=phi.device)
        rows = (torch.arange(batch, device=phi.device).unsqueeze(1) * lt + t_glob).reshape(-1)
        return row_sum(slices, self.grid, rows, batch * lt).reshape(batch, lt)

    def two_point(self, phi: torch.Tensor) -> torch.Tensor:
        """Zero-momentum time-slice correlator per chain, shape ``(B, L_t)``::

            C(t) = 1 / (L_t V_s) sum_{t0} Phi(t0) Phi(t0 + t)     (t0 + t mod L_t)

        with ``Phi`` from :meth:`time_slices` and ``V_s = V / L_t``. The disconnected part
        (``V_s <M>^2``, zero in the symmetric phase) is not subtracted.
        """
        big_phi = self.time_slices(phi)
        lt = big_phi.shape[1]
        ar = torch.arange(lt, device=big_phi.device)
        idx = (ar[:, None] + ar[None, :]) % lt  # idx[t0, t] = t0 + t
        return torch.einsum("bs,bst->bt", big_phi, big_phi[:, idx]) / self.grid.volume

    def observables(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-chain measurements (global):

        * ``M``: magnetisation per site ``(1/V) sum_x phi(x)``, shape ``(B,)``;
        * ``abs_M``: ``|M|``;
        * ``V_M2``: ``V M^2``; the susceptibility is estimated by the analysis as
          ``chi = V (<M^2> - <|M|>^2) = <V_M2> - V <abs_M>^2``;
        * ``action``: ``S / V``, the action per site;
        * ``two_point``: ``C(t)`` of :meth:`two_point`, shape ``(B, L_t)`` (the one
          non-scalar entry).
        """
        vol = self.grid.volume
        m = self.magnetisation(phi)
        return {
            "M": m,
            "abs_M": m.abs(),
            "V_M2": vol * m * m,
            "action": self.action(phi) / vol,
            "two_point": self.two_point(phi),
        }


# ------------------------------------------------------------------ free theory, analysis
def free_propagator_two_point(shape: Sequence[int], beta: float) -> np.ndarray:
    """Exact ``<C(t)>`` of :meth:`Phi4.two_point` at ``lambda = 0``, shape ``(L_t,)``.

    With ``S = (1/2) phi^T A phi`` and ``A(p) = 2 - 2 beta sum_mu cos p_mu`` the propagator is
    ``<phi(x) phi(y)> = (1/V) sum_p e^{ip(x-y)} / A(p)``. Summing over the spatial sites of
    two time slices keeps only zero spatial momentum, so (independently of the spatial size)::

        <C(t)> = (1/L_t) sum_{k=0}^{L_t-1} cos(p_k t) / (2 - 2 beta (d - 1) - 2 beta cos p_k),
        p_k = 2 pi k / L_t.

    Requires ``beta < 1/d`` (positive ``A``).
    """
    shape = tuple(int(s) for s in shape)
    d, lt = len(shape), shape[-1]
    if not beta < 1.0 / d:
        raise ValueError(f"the free theory needs beta < 1/d = {1.0 / d}, got {beta}")
    p = 2.0 * np.pi * np.arange(lt) / lt
    a = 2.0 - 2.0 * beta * (d - 1) - 2.0 * beta * np.cos(p)
    t = np.arange(lt)
    return (np.cos(np.outer(t, p)) / a).sum(axis=1) / lt


def correlation_length(c: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Second-moment correlation length from the time-slice correlator ``C(t)`` (last axis).

    With ``G(p) = sum_t C(t) cos(p t)`` (the propagator at zero spatial momentum) and the
    smallest momentum ``p_1 = 2 pi / L_t``::

        xi_2 = sqrt(G(0) / G(p_1) - 1) / (2 sin(p_1 / 2))

    For the free theory ``G(p) ~ 1 / (m^2 + 4 sin^2(p/2))`` this is exactly ``1/m``,
    ``m^2 = 2/beta - 2d``, on any volume. Returns NaN where ``G(0)/G(p_1) < 1`` (no positive
    mass) or ``G(p_1) <= 0``. Apply it to an ensemble *average* of ``C`` (a ratio of means),
    not chain by chain.
    """
    is_np = not isinstance(c, torch.Tensor)
    ct = torch.as_tensor(np.asarray(c)) if is_np else c
    lt = ct.shape[-1]
    t = torch.arange(lt, dtype=ct.dtype, device=ct.device)
    p1 = 2.0 * math.pi / lt
    g0 = ct.sum(dim=-1)
    g1 = (ct * torch.cos(p1 * t)).sum(dim=-1)
    ratio = g0 / g1 - 1.0
    xi = torch.sqrt(ratio) / (2.0 * math.sin(p1 / 2.0))
    xi = torch.where((g1 > 0) & (ratio >= 0), xi, torch.full_like(xi, float("nan")))
    return xi.numpy() if is_np else xi
