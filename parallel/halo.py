"""Halo exchange: pad the local domain with copies of the neighbouring ranks' sites.

For a field ``x`` whose lattice axes start at array dim ``first`` (leading dims: batch,
direction, ...; trailing dims: colour, spin, ...), ``H = halo_pad`` returns the local block
extended by ``lo`` sites below and ``hi`` sites above along each exchanged lattice axis:

    (H x)[n] = s(n) * x[n mod L]        for n in [o - lo, o + l + hi)

where ``o``/``l`` are the local offset/extent and ``s(n) = -1`` for an antiperiodic axis each
time ``n`` lies across the global boundary (else +1). Axes are exchanged one after the other,
each including the halos of the axes before it, so corner/edge sites are filled too (needed
by diagonal stencils and k x k convolutions).

The adjoint ``H^T`` (``halo_pad_adjoint``) sends each halo value back to the rank that owns
the site and *adds* it there, with the same sign. ``halo_pad`` on a tensor that requires
grad runs as a ``torch.autograd.Function`` whose backward is ``H^T`` (itself differentiable,
so double backward works): ``<H x, y> = <x, H^T y>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .comm import Array, is_torch, sendrecv
from .grid import ProcessGrid

Widths = tuple[tuple[int, int], ...]
Signs = tuple[int, ...]


class HaloError(ValueError):
    """A halo exchange was asked for that the local domain cannot serve."""


# ------------------------------------------------------------------ argument handling
def normalize_widths(
    grid: ProcessGrid,
    width: int | Sequence[int] | Sequence[tuple[int, int]] = 1,
    axes: Sequence[int] | None = None,
) -> Widths:
    """Per-axis ``(lo, hi)`` halo widths; axes not in ``axes`` get ``(0, 0)``."""
    nd = grid.ndim
    axes = tuple(range(nd)) if axes is None else tuple(a % nd for a in axes)
    if isinstance(width, (int, np.integer)):
        per_axis = [(int(width), int(width))] * nd
    else:
        width = list(width)
        if len(width) != nd:
            raise HaloError(f"halo width {width} needs one entry per lattice axis ({nd})")
        per_axis = [(int(w), int(w)) if np.isscalar(w) else (int(w[0]), int(w[1])) for w in width]
    out = []
    for mu in range(nd):
        lo, hi = per_axis[mu] if mu in axes else (0, 0)
        if lo < 0 or hi < 0:
            raise HaloError(f"halo width along axis {mu} must be >= 0, got {(lo, hi)}")
        if max(lo, hi) > grid.local_shape[mu]:
            raise HaloError(
                f"halo width {max(lo, hi)} along axis {mu} is wider than the local extent "
                f"{grid.local_shape[mu]} (lattice {list(grid.shape)} on grid "
                f"{list(grid.grid)}); use fewer ranks along this axis"
            )
        out.append((lo, hi))
    return tuple(out)


def normalize_signs(grid: ProcessGrid, bc: Sequence[int] | str | None) -> Signs:
    """Boundary signs per axis: +1 periodic, -1 antiperiodic (``"periodic"`` / ``"antiperiodic"``
    or a sequence of +-1 / names)."""
    nd = grid.ndim
    if bc is None:
        return (1,) * nd
    if isinstance(bc, str):
        bc = [bc] * nd
    bc = list(bc)
    if len(bc) != nd:
        raise HaloError(f"boundary conditions {bc} need one entry per lattice axis ({nd})")
    names = {"periodic": 1, "antiperiodic": -1, 1: 1, -1: -1}
    try:
        return tuple(names[b] for b in bc)
    except KeyError as err:
        raise HaloError(f"unknown boundary condition {err.args[0]!r}") from None


# ------------------------------------------------------------------ array helpers
def _take(x: Array, dim: int, start: int, stop: int) -> Array:
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, stop)
    return x[tuple(index)]


def _cat(parts: list[Array], dim: int) -> Array:
    if is_torch(parts[0]):
        return torch.cat(parts, dim=dim)
    return np.concatenate(parts, axis=dim)


def _copy(x: Array) -> Array:
    return x.clone() if is_torch(x) else x.copy()


def _tag(mu: int, k: int) -> int:
    return 1000 + 4 * mu + k


def _exchange(grid: ProcessGrid, send: Array, dim: int, mu: int, towards: int, tag: int) -> Array:
    """Send ``send`` to the neighbour at ``towards`` (+-1) along ``mu``; receive the matching
    block from the opposite neighbour. With one rank along ``mu`` it is a local copy."""
    if grid.grid[mu] == 1:
        return _copy(send)
    down, up = grid.neighbours[mu]
    dest, source = (up, down) if towards > 0 else (down, up)
    return sendrecv(grid.cart, send, dest, tuple(send.shape), source, tag)


# ------------------------------------------------------------------ raw kernels
def _empty(x: Array, shape: tuple[int, ...]) -> Array:
    if is_torch(x):
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    return np.empty(shape, dtype=x.dtype)


def _pad_raw(x: Array, grid: ProcessGrid, widths: Widths, first: int, signs: Signs) -> Array:
    """Copy the interior once into the padded output, then fill the faces axis by axis; the
    region exchanged along axis ``mu`` spans the already padded extent of the axes before it
    (so edges and corners are filled) and the interior of the axes after it."""
    shape = list(x.shape)
    for mu, (lo, hi) in enumerate(widths):
        shape[first + mu] += lo + hi
    if tuple(shape) == tuple(x.shape):
        return x
    out = _empty(x, tuple(shape))
    interior = [slice(None)] * len(shape)
    for mu, (lo, _) in enumerate(widths):
        interior[first + mu] = slice(lo, lo + grid.local_shape[mu])
    out[tuple(interior)] = x
    region = list(interior)
    for mu, (lo, hi) in enumerate(widths):
        dim = first + mu
        n = grid.local_shape[mu]
        if lo:
            region[dim] = slice(lo + n - lo, lo + n)  # my top `lo` slices go up
            halo = _exchange(grid, out[tuple(region)], dim, mu, +1, _tag(mu, 0))
            if signs[mu] < 0 and grid.is_global_boundary(mu, -1):
                halo = -halo
            region[dim] = slice(0, lo)
            out[tuple(region)] = halo
        if hi:
            region[dim] = slice(lo, lo + hi)  # my bottom `hi` slices go down
            halo = _exchange(grid, out[tuple(region)], dim, mu, -1, _tag(mu, 1))
            if signs[mu] < 0 and grid.is_global_boundary(mu, +1):
                halo = -halo
            region[dim] = slice(lo + n, lo + n + hi)
            out[tuple(region)] = halo
        region[dim] = slice(None)  # later axes exchange the padded extent of this one
    return out


def _adjoint_raw(g: Array, grid: ProcessGrid, widths: Widths, first: int, signs: Signs) -> Array:
    for mu in reversed(range(len(widths))):
        lo, hi = widths[mu]
        if lo == 0 and hi == 0:
            continue
        dim = first + mu
        n = g.shape[dim] - lo - hi
        core = _copy(_take(g, dim, lo, lo + n))
        if lo:
            glo = _take(g, dim, 0, lo)
            if signs[mu] < 0 and grid.is_global_boundary(mu, -1):
                glo = -glo
            back = _exchange(grid, glo, dim, mu, -1, _tag(mu, 2))
            _take(core, dim, n - lo, n)[...] += back
        if hi:
            ghi = _take(g, dim, lo + n, lo + n + hi)
            if signs[mu] < 0 and grid.is_global_boundary(mu, +1):
                ghi = -ghi
            back = _exchange(grid, ghi, dim, mu, +1, _tag(mu, 3))
            _take(core, dim, 0, hi)[...] += back
        g = core
    return g


# ------------------------------------------------------------------ autograd
class _HaloPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, widths, first, signs):  # type: ignore[override]
        ctx.spec = (grid, widths, first, signs)
        return _pad_raw(x, grid, widths, first, signs)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return (_HaloPadAdjoint.apply(g, *ctx.spec), None, None, None, None)


class _HaloPadAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, grid, widths, first, signs):  # type: ignore[override]
        ctx.spec = (grid, widths, first, signs)
        return _adjoint_raw(g, grid, widths, first, signs)

    @staticmethod
    def backward(ctx, h):  # type: ignore[override]
        return (_HaloPad.apply(h, *ctx.spec), None, None, None, None)


def _needs_graph(x: Array) -> bool:
    return is_torch(x) and torch.is_grad_enabled() and x.requires_grad


# ------------------------------------------------------------------ public API
def halo_pad(
    x: Array,
    grid: ProcessGrid,
    width: int | Sequence[int] | Sequence[tuple[int, int]] = 1,
    axes: Sequence[int] | None = None,
    first: int = 0,
    bc: Sequence[int] | str | None = None,
) -> Array:
    """Return ``x`` padded with halos of ``width`` along ``axes`` (all lattice axes by default).

    ``width`` is an int, one int per lattice axis, or ``(lo, hi)`` per axis. ``first`` is the
    array dim of lattice axis 0; ``bc`` the boundary condition per axis (periodic default).
    Works for numpy arrays and torch tensors (autograd-aware).
    """
    widths = normalize_widths(grid, width, axes)
    signs = normalize_signs(grid, bc)
    _check_layout(x, grid, first)
    if _needs_graph(x):
        return _HaloPad.apply(x, grid, widths, first, signs)
    return _pad_raw(x, grid, widths, first, signs)


def halo_pad_adjoint(
    g: Array,
    grid: ProcessGrid,
    width: int | Sequence[int] | Sequence[tuple[int, int]] = 1,
    axes: Sequence[int] | None = None,
    first: int = 0,
    bc: Sequence[int] | str | None = None,
) -> Array:
    """The adjoint ``H^T`` of :func:`halo_pad`: halo entries of the padded array ``g`` are
    returned (with their boundary sign) to the owning ranks and added to the owned sites."""
    widths = normalize_widths(grid, width, axes)
    signs = normalize_signs(grid, bc)
    if _needs_graph(g):
        return _HaloPadAdjoint.apply(g, grid, widths, first, signs)
    return _adjoint_raw(g, grid, widths, first, signs)


def _check_layout(x: Array, grid: ProcessGrid, first: int) -> None:
    got = tuple(x.shape[first : first + grid.ndim])
    if got != grid.local_shape:
        raise HaloError(
            f"array of shape {tuple(x.shape)} has {got} at lattice dims {first}.."
            f"{first + grid.ndim - 1}, expected the local shape {grid.local_shape}"
        )
