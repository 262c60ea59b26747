"""Distributed lattice shift.

Convention: ``shift(x, grid, mu, k)[n] = s * x[n + k e_mu]``, i.e. the field at the site
``k`` steps *forward* along ``mu`` is brought to ``n`` (``torch.roll(x, -k, dim)`` on one rank).
``s = -1`` if the step crosses the global boundary of an antiperiodic axis, else ``+1``.
So the forward plaquette reads ``U_mu(n) U_nu(n+mu) U_mu(n+nu)^+ U_nu(n)^+`` with
``U_nu(n+mu) = shift(U_nu, mu, +1)``.

Only the ``|k|`` boundary slices cross ranks (one-sided exchange). The adjoint of a shift by
``k`` is the shift by ``-k`` with the same boundary condition; the autograd backward uses it,
so gradients (and gradients of gradients) are exact across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .comm import Array
from .grid import ProcessGrid
from .halo import HaloError, _cat, _exchange, _needs_graph, _take, normalize_signs


def _shift_raw(x: Array, grid: ProcessGrid, mu: int, k: int, first: int, sign: int) -> Array:
    if k == 0:
        return x
    dim = first + mu
    n = x.shape[dim]
    if abs(k) > n:
        raise HaloError(
            f"shift by {k} along axis {mu} is longer than the local extent {n} "
            f"(lattice {list(grid.shape)} on grid {list(grid.grid)})"
        )
    if k > 0:
        # my top k slices come from the bottom k slices of the rank above
        halo = _exchange(grid, _take(x, dim, 0, k), dim, mu, -1, 2000 + 2 * mu)
        if sign < 0 and grid.is_global_boundary(mu, +1):
            halo = -halo
        return _cat([_take(x, dim, k, n), halo], dim)
    k = -k
    halo = _exchange(grid, _take(x, dim, n - k, n), dim, mu, +1, 2001 + 2 * mu)
    if sign < 0 and grid.is_global_boundary(mu, -1):
        halo = -halo
    return _cat([halo, _take(x, dim, 0, n - k)], dim)


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, mu, k, first, sign):  # type: ignore[override]
        ctx.spec = (grid, mu, k, first, sign)
        return _shift_raw(x, grid, mu, k, first, sign)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        grid, mu, k, first, sign = ctx.spec
        return (_Shift.apply(g, grid, mu, -k, first, sign), None, None, None, None, None)


def shift(
    x: Array,
    grid: ProcessGrid,
    mu: int,
    k: int = 1,
    first: int = 0,
    bc: Sequence[int] | str | None = None,
) -> Array:
    """Field at ``n + k e_mu`` brought to ``n`` (numpy or torch; autograd-aware).

    ``first`` is the array dim of lattice axis 0; ``bc`` the boundary condition per axis.
    """
    mu = mu % grid.ndim
    got = x.shape[first + mu]
    if got != grid.local_shape[mu]:
        raise HaloError(
            f"array of shape {tuple(x.shape)} has extent {got} at dim {first + mu}, expected "
            f"the local extent {grid.local_shape[mu]} of lattice axis {mu}"
        )
    sign = normalize_signs(grid, bc)[mu]
    if _needs_graph(x):
        return _Shift.apply(x, grid, mu, int(k), first, sign)
    return _shift_raw(x, grid, mu, int(k), first, sign)
