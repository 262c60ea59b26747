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

Non-blocking exchange (``halo_begin`` -> handle, ``halo_end(handle)``; ``halo_pad`` is the two
back to back). ``halo_begin`` copies the interior into the padded output, fills the halos of
axes held by one rank by local copies, then posts the faces of *every* split axis at once
(``Irecv``/``Isend`` through the mpi4py buffer interface, no pickling) on contiguous buffers
taken from a pool keyed by shape/dtype/device (:data:`parallel.comm.POOL`; no allocation once
a kind of exchange has run). The caller computes on the interior (``handle.padded``) while
the faces travel. ``halo_end`` waits, unpacks the faces with their boundary sign, and fills the
edges/corners between split axes (second and later split axes only: the boxes lying in the
halo of an earlier split axis, one packed message per direction), so the result is the same
array as the sequential axis-by-axis exchange.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import comm as _comm
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


# ------------------------------------------------------------------ non-blocking exchange
_NB_TAG = 5000  # tags of the non-blocking halo: _NB_TAG + 8 mu + 2 round + (side > 0)


def _sides(lo: int, hi: int, n: int) -> list[tuple[int, slice, slice]]:
    """``(side, send, recv)`` along one axis in padded coordinates: the ``lo`` halo (side -1)
    is received from the rank below, which sends its top ``lo`` slices; the ``hi`` halo
    (side +1) from the rank above, which sends its bottom ``hi`` slices."""
    out = []
    if lo:
        out.append((-1, slice(n, lo + n), slice(0, lo)))
    if hi:
        out.append((+1, slice(lo, lo + hi), slice(lo + n, lo + n + hi)))
    return out


class _Message:
    """One posted pair: a receive of several boxes from one neighbour (packed in one pooled
    buffer) and the send of the matching boxes to the other neighbour."""

    __slots__ = ("requests", "recv_buf", "send_buf", "recv_boxes", "sign", "pooled")

    def __init__(self, requests, recv_buf, send_buf, recv_boxes, sign, pooled) -> None:
        self.requests, self.recv_buf, self.send_buf = requests, recv_buf, send_buf
        self.recv_boxes, self.sign = recv_boxes, sign
        self.pooled = pooled  # (send, recv): from the pool (else in place, zero copy)


def _post(
    grid: ProcessGrid,
    out: Array,
    mu: int,
    side: int,
    send_boxes: list[tuple[slice, ...]],
    recv_boxes: list[tuple[slice, ...]],
    tag: int,
    sign: int,
    dst: Array | None = None,
) -> _Message:
    """Pack ``out[send_boxes]`` into one pooled buffer and send it towards ``-side`` along
    ``mu``; post the receive of ``recv_boxes`` of ``dst`` (default ``out``) from the neighbour
    at ``side``. A single contiguous box is sent from / received into the array itself."""
    out = _comm.host_alias(out)
    dst = out if dst is None else _comm.host_alias(dst)
    down, up = grid.neighbours[mu]
    source, dest = (down, up) if side < 0 else (up, down)
    send_buf = None
    if len(send_boxes) == 1:  # a contiguous face (e.g. along the slowest axis) goes as is
        send_buf = _comm.direct_view(out[send_boxes[0]])
    send_pooled = send_buf is None
    if send_pooled:
        send_buf = _comm.pack([out[box] for box in send_boxes])
    recv_buf = None
    if len(recv_boxes) == 1:
        recv_buf = _comm.direct_view(dst[recv_boxes[0]])
    recv_pooled = recv_buf is None
    if recv_pooled:
        recv_buf = _comm.POOL.acquire(out, (math.prod(send_buf.shape),))
    requests = [
        _comm.irecv(grid.cart, recv_buf, source, tag),
        _comm.isend(grid.cart, send_buf, dest, tag),
    ]
    return _Message(requests, recv_buf, send_buf, recv_boxes, sign, (send_pooled, recv_pooled))


def _complete(out: Array, messages: list[_Message]) -> None:
    """Wait for ``messages``, unpack the received boxes into ``out`` (with their sign) and
    return the buffers to the pool."""
    _comm.waitall([r for m in messages for r in m.requests])
    out = _comm.host_alias(out)
    for m in messages:
        send_pooled, recv_pooled = m.pooled
        if send_pooled:
            _comm.POOL.release(m.send_buf)
        if not recv_pooled:  # received in place
            if m.sign < 0:
                np.negative(m.recv_buf, out=m.recv_buf)
            continue
        if len(m.recv_boxes) == 1:
            view = out[m.recv_boxes[0]]
            _comm.unpack(m.recv_buf.reshape(tuple(view.shape)), view, m.sign)
            _comm.POOL.release(m.recv_buf)
            continue
        at = 0
        for box in m.recv_boxes:
            view = out[box]
            size = math.prod(view.shape)
            _comm.unpack(m.recv_buf[at : at + size].reshape(tuple(view.shape)), view, m.sign)
            at += size
        _comm.POOL.release(m.recv_buf)


class HaloHandle:
    """An exchange in flight, from :func:`halo_begin` to :func:`halo_end`.

    ``padded`` is the output array: its interior (the local block) and the halos along axes
    held by one rank (local periodic copies) are valid as soon as :func:`halo_begin` returns;
    the halos along split axes are valid after :func:`halo_end`. Compute on the interior
    while the faces travel.
    """

    def __init__(
        self,
        padded: Array,
        grid: ProcessGrid,
        widths: Widths,
        first: int,
        signs: Signs,
        split: list[int],
        messages: list[_Message],
        done: bool,
        region: list[slice] | None = None,
    ) -> None:
        self.padded = padded
        self.grid = grid
        self.widths = widths
        self.first = first
        self.signs = signs
        self.split = split
        self.messages = messages
        self.done = done
        #: per array dim: the padded extent along unsplit axes, the interior along split ones
        self.region = region

    def progress(self) -> bool:
        """Let the faces in flight advance (non-blocking ``MPI_Testall``); call it between
        pieces of interior work. True when every face has arrived."""
        return _comm.progress([r for m in self.messages for r in m.requests])

    @property
    def split_axes(self) -> tuple[int, ...]:
        """Lattice axes whose halos cross ranks (received in :func:`halo_end`)."""
        return tuple(self.split)


def _boundary_sign(grid: ProcessGrid, signs: Signs, mu: int, side: int) -> int:
    return -1 if signs[mu] < 0 and grid.is_global_boundary(mu, side) else 1


def _begin_raw(x: Array, grid: ProcessGrid, widths: Widths, first: int, signs: Signs) -> HaloHandle:
    """Copy the interior into the padded output, fill the halos of axes held by one rank
    (local copies, edges and corners among them included), then post the faces of every
    split axis at once (their extent along the local axes padded, along the other split axes
    the interior). Edges/corners between split axes follow in :func:`_end_raw`."""
    shape = list(x.shape)
    for mu, (lo, hi) in enumerate(widths):
        shape[first + mu] += lo + hi
    exchanged = [mu for mu, (lo, hi) in enumerate(widths) if lo or hi]
    if not exchanged:
        return HaloHandle(x, grid, widths, first, signs, [], [], True)
    out = _empty(x, tuple(shape))
    region = [slice(None)] * len(shape)
    for mu, (lo, _) in enumerate(widths):
        region[first + mu] = slice(lo, lo + grid.local_shape[mu])
    out[tuple(region)] = x
    local = [mu for mu in exchanged if grid.grid[mu] == 1]
    split = [mu for mu in exchanged if grid.grid[mu] > 1]
    for mu in local:  # periodic copies on this rank; later axes copy the padded extent
        dim = first + mu
        lo, hi = widths[mu]
        for side, send, recv in _sides(lo, hi, grid.local_shape[mu]):
            src, dst = list(region), list(region)
            src[dim], dst[dim] = send, recv
            out[tuple(dst)] = out[tuple(src)]
            if _boundary_sign(grid, signs, mu, side) < 0:
                out[tuple(dst)] = -out[tuple(dst)]
        region[dim] = slice(None)
    messages = []
    for mu in split:
        dim = first + mu
        lo, hi = widths[mu]
        for side, send, recv in _sides(lo, hi, grid.local_shape[mu]):
            src, dst = list(region), list(region)
            src[dim], dst[dim] = send, recv
            tag = _NB_TAG + 8 * mu + (side > 0)
            sign = _boundary_sign(grid, signs, mu, side)
            messages.append(_post(grid, out, mu, side, [tuple(src)], [tuple(dst)], tag, sign))
    return HaloHandle(out, grid, widths, first, signs, split, messages, not split, region)


def _end_raw(handle: HaloHandle) -> Array:
    """Wait for the faces, then fill the edges/corners between split axes: along each split
    axis after the first, the boxes that lie in the halo of an earlier split axis are sent
    (packed in one message per direction), one axis after the other."""
    if handle.done:
        return handle.padded
    out, grid, widths, first = handle.padded, handle.grid, handle.widths, handle.first
    _complete(out, handle.messages)
    handle.messages = []
    region = handle.region
    split = handle.split
    for k, mu in enumerate(split[1:], 1):
        dim = first + mu
        lo, hi = widths[mu]
        contexts = []
        for j, e in enumerate(split[:k]):
            elo, ehi = widths[e]
            for _, _, halo in _sides(elo, ehi, grid.local_shape[e]):
                ctx = list(region)
                for d in split[:j]:
                    ctx[first + d] = slice(None)
                ctx[first + e] = halo
                contexts.append(ctx)
        if not contexts:
            continue
        messages = []
        for side, send, recv in _sides(lo, hi, grid.local_shape[mu]):
            sends, recvs = [], []
            for ctx in contexts:
                src, dst = list(ctx), list(ctx)
                src[dim], dst[dim] = send, recv
                sends.append(tuple(src))
                recvs.append(tuple(dst))
            tag = _NB_TAG + 8 * mu + 2 + (side > 0)
            sign = _boundary_sign(grid, handle.signs, mu, side)
            messages.append(_post(grid, out, mu, side, sends, recvs, tag, sign))
        _complete(out, messages)
    handle.done = True
    return out


def _pad_raw(x: Array, grid: ProcessGrid, widths: Widths, first: int, signs: Signs) -> Array:
    """Blocking halo: :func:`_begin_raw` then :func:`_end_raw`. The padded array equals the
    wrapped global field around the local block (edges and corners included)."""
    return _end_raw(_begin_raw(x, grid, widths, first, signs))


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


def halo_begin(
    x: Array,
    grid: ProcessGrid,
    width: int | Sequence[int] | Sequence[tuple[int, int]] = 1,
    axes: Sequence[int] | None = None,
    first: int = 0,
    bc: Sequence[int] | str | None = None,
) -> HaloHandle:
    """Start :func:`halo_pad` without waiting: the faces of every split axis are posted at
    once (``Isend``/``Irecv`` on pooled buffers) and the handle is returned.

    ``handle.padded`` holds the interior and the halos along axes held by one rank right
    away; :func:`halo_end` waits for the faces, fills the edges/corners between split axes,
    and returns the padded array (equal to :func:`halo_pad`). Every rank must begin and end
    its exchanges in the same order. Until :func:`halo_end`, read ``handle.padded`` only and
    only its interior and unsplit-axis halos: a contiguous face is sent from, and a contiguous
    halo received into, the padded array itself. A tensor that requires grad is padded at
    once through the autograd-aware blocking path (nothing left to overlap).
    """
    widths = normalize_widths(grid, width, axes)
    signs = normalize_signs(grid, bc)
    _check_layout(x, grid, first)
    if _needs_graph(x):
        out = _HaloPad.apply(x, grid, widths, first, signs)
        return HaloHandle(out, grid, widths, first, signs, [], [], True)
    return _begin_raw(x, grid, widths, first, signs)


def halo_end(handle: HaloHandle) -> Array:
    """Finish the exchange of :func:`halo_begin`; returns the padded array."""
    return _end_raw(handle)


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
