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
from .halo import HaloError, _complete, _empty, _Message, _needs_graph, _post, normalize_signs

_SHIFT_TAG = 6000  # tags of the non-blocking shifts: _SHIFT_TAG + 2 mu + (k < 0)


class ShiftHandle:
    """A shift in flight, from :func:`shift_begin` to :func:`shift_end`. ``result`` holds the
    locally available part (all but the ``|k|`` slices that come from the neighbour) as soon
    as :func:`shift_begin` returns; it is complete after :func:`shift_end`."""

    __slots__ = ("result", "message")

    def __init__(self, result: Array, message: _Message | None) -> None:
        self.result = result
        self.message = message


def _shift_begin_raw(
    x: Array, grid: ProcessGrid, mu: int, k: int, first: int, sign: int
) -> ShiftHandle:
    """Post the one face a shift needs (``|k|`` slices, pooled buffers) and copy the local
    part of the result; along an axis held by one rank the whole shift is a local copy."""
    if k == 0:
        return ShiftHandle(x, None)
    dim = first + mu
    n = x.shape[dim]
    if abs(k) > n:
        raise HaloError(
            f"shift by {k} along axis {mu} is longer than the local extent {n} "
            f"(lattice {list(grid.shape)} on grid {list(grid.grid)})"
        )
    out = _empty(x, tuple(x.shape))
    full = [slice(None)] * x.ndim

    def box(d: int, s: slice) -> tuple[slice, ...]:
        b = list(full)
        b[d] = s
        return tuple(b)

    a = abs(k)
    if k > 0:  # my top k slices come from the bottom k slices of the rank above
        keep, got, face, side = slice(a, n), slice(0, n - a), slice(0, a), +1
        halo = slice(n - a, n)
    else:  # my bottom k slices come from the top k slices of the rank below
        keep, got, face, side = slice(0, n - a), slice(a, n), slice(n - a, n), -1
        halo = slice(0, a)
    out[box(dim, got)] = x[box(dim, keep)]
    bsign = -1 if sign < 0 and grid.is_global_boundary(mu, side) else 1
    if grid.grid[mu] == 1:
        out[box(dim, halo)] = x[box(dim, face)]
        if bsign < 0:
            out[box(dim, halo)] = -out[box(dim, halo)]
        return ShiftHandle(out, None)
    tag = _SHIFT_TAG + 2 * mu + (k < 0)
    # _post receives from the neighbour at `side` and sends to the other one
    msg = _post(grid, x, mu, side, [box(dim, face)], [box(dim, halo)], tag, bsign, dst=out)
    return ShiftHandle(out, msg)


def _shift_end_raw(handle: ShiftHandle) -> Array:
    if handle.message is not None:
        _complete(handle.result, [handle.message])
        handle.message = None
    return handle.result


def _shift_raw(x: Array, grid: ProcessGrid, mu: int, k: int, first: int, sign: int) -> Array:
    return _shift_end_raw(_shift_begin_raw(x, grid, mu, k, first, sign))


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
    mu, sign = _check(x, grid, mu, first, bc)
    k = int(k)
    if (
        sign > 0
        and grid.grid[mu] == 1
        and isinstance(x, torch.Tensor)
        and 0 < abs(k) <= x.shape[first + mu]
    ):
        # periodic axis held by this rank: a pure data movement, the same bits as the pooled
        # path, at a fifth of the Python cost (autograd's roll backward is the inverse roll)
        return torch.roll(x, -k, first + mu)
    if _needs_graph(x):
        return _Shift.apply(x, grid, mu, k, first, sign)
    return _shift_raw(x, grid, mu, k, first, sign)


def shift_begin(
    x: Array,
    grid: ProcessGrid,
    mu: int,
    k: int = 1,
    first: int = 0,
    bc: Sequence[int] | str | None = None,
) -> ShiftHandle:
    """Start :func:`shift` without waiting for the face from the neighbour (``Isend``/
    ``Irecv`` on pooled buffers); :func:`shift_end` returns the shifted array. Every rank
    must begin and end its exchanges in the same order, and ``x`` must not be written before
    :func:`shift_end` (a contiguous face is sent from ``x`` itself). A tensor that requires grad is
    shifted at once through the autograd-aware blocking path."""
    mu, sign = _check(x, grid, mu, first, bc)
    if _needs_graph(x):
        return ShiftHandle(_Shift.apply(x, grid, mu, int(k), first, sign), None)
    return _shift_begin_raw(x, grid, mu, int(k), first, sign)


def shift_end(handle: ShiftHandle) -> Array:
    """Finish :func:`shift_begin`: wait for the face and return the shifted array."""
    return _shift_end_raw(handle)


def _check(
    x: Array, grid: ProcessGrid, mu: int, first: int, bc: Sequence[int] | str | None
) -> tuple[int, int]:
    mu = mu % grid.ndim
    got = x.shape[first + mu]
    if got != grid.local_shape[mu]:
        raise HaloError(
            f"array of shape {tuple(x.shape)} has extent {got} at dim {first + mu}, expected "
            f"the local extent {grid.local_shape[mu]} of lattice axis {mu}"
        )
    return mu, normalize_signs(grid, bc)[mu]
