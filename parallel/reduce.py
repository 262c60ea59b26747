"""Global reductions, broadcasts, gather/scatter of fields, and gradient all-reduce.

Two kinds of global sum (docs/conventions.md, "Reductions"):

* **Exact, grid-independent** (:func:`lattice_sum`, :func:`lattice_mean`,
  :func:`exact_segment_sum`, :func:`exact_sum`): the *correctly rounded* sum of every local
  element over the domain group. Every double is an integer multiple of ``2^-1074``; the
  values are split exactly over fixed-point slots of 28 bits at absolute positions
  (``q = (r + 1.5 2^(c+52)) - 1.5 2^(c+52)``: a few vectorized float64 passes on the
  tensor's device), each slot is summed exactly in float64 and becomes an int64, the slots
  are summed over ranks with one integer ``Allreduce`` (exact, so order-free), and each
  output is rounded once from a Python integer. The result is a pure function of the global
  field: identical for every process grid, rank order and device. Use it for everything that
  feeds a decision or a record (actions, kinetic energy, ``dH``, observables, CG dot
  products, file headers). Exact for up to ``2^34`` summed elements; nan/inf elements give
  the IEEE value of the exact sum (see :func:`exact_segment_sum`).
* **Fast** (:func:`global_sum`): a float ``Allreduce`` of per-rank values. Its rounding depends
  on how the lattice is split, in the last bits. Use it for training losses and gradients,
  diagnostics, and counts.

Both are autograd-aware with the same gradient: ``y = sum x`` on every rank, so the backward
broadcasts the cotangent, ``dL/dx = dL/dy`` (built from differentiable ops, so double
backward works). Parameter gradients computed this way are the rank-local parts of the full
gradient; :func:`allreduce_gradients` sums them over the domain group (one lattice) and
averages over replica groups (independent chains), as in data-parallel training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from .comm import Array, allreduce, bcast_array, is_torch
from .grid import ProcessGrid
from .optional_jit import optional_jit


class _GlobalSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm):  # type: ignore[override]
        return allreduce(comm, x, MPI.SUM)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None


def global_sum(x: Array, grid: ProcessGrid) -> Array:
    """Fast element-wise sum of ``x`` over the domain group (autograd-aware for tensors).

    Not grid-independent in the last bits when ``x`` holds per-rank partial sums of floats:
    for training losses, gradients and counts. Records and decisions use :func:`lattice_sum`.
    """
    if grid.size == 1:
        return x
    if is_torch(x) and torch.is_grad_enabled() and x.requires_grad:
        return _GlobalSum.apply(x, grid.cart)
    if np.isscalar(x) or isinstance(x, float | int):
        return grid.cart.allreduce(x, op=MPI.SUM)
    return allreduce(grid.cart, x, MPI.SUM)


# --------------------------------------------------------------------------- exact sums
#: bits per slot of the fixed-point accumulator (see :func:`exact_segment_sum`)
_W = 28
#: slots ``k`` hold multiples of ``2^(-1074 + k W)``; enough to reach ``2^1024``
_NSLOT = (1023 + 1074) // _W + 1
#: per-row elements summed in float64 per level (each level term is ``< 2^(W+1)`` units)
_CHUNK = 1 << (52 - _W - 1)
#: largest number of summed elements (global) for which the int64 slot sums cannot overflow
MAX_EXACT_ELEMENTS = 1 << (62 - _W)
#: columns after the slots: counts of nan, +inf, -inf elements, and of all elements
_NAN, _PINF, _NINF, _COUNT = range(_NSLOT, _NSLOT + 4)
#: the dense Allreduce buffer is used up to this many int64 entries (else: a range first)
_DENSE = 1 << 14
_SMALLEST_NORMAL = 2.2250738585072014e-308


def _slot_of(e: int) -> int:
    """The slot ``k`` with ``c_k = -1074 + k W <= e < c_k + W`` (clamped to the slot range)."""
    return min(max((e + 1074) // _W, 0), _NSLOT - 1)


def _levels(r: torch.Tensor, q: torch.Tensor, k_top: int, k_bot: int) -> torch.Tensor:
    """Split ``r`` (``(rows, n)`` float64; consumed, ``q`` is scratch of its shape) into its
    parts on the slots ``k_top .. k_bot`` and sum each part per row. Returns
    ``(k_top - k_bot + 1, rows)`` float64: in units of ``2^c_k`` (so integers below
    ``2^53``, exact) for the slots with ``c_k > 971``, else the plain sums (multiples of
    ``2^c_k`` below ``2^(c_k + 53)``, exact).

    Slot ``c``: ``q = (r + M) - M`` with ``M = 1.5 2^(c+52)`` is ``r`` rounded to a multiple of
    ``2^c`` (exact IEEE arithmetic for ``|r| < 2^(c+51)``), and ``r - q`` is exact; above
    ``c = 971`` (``M`` would overflow) ``q = r - fmod(r, 2^c)`` (truncation, also exact), scaled
    by ``2^-c`` so that its sum cannot overflow. The last slot takes what is left (all of it
    multiples of ``2^c``)."""
    sums = []
    for k in range(k_top, k_bot - 1, -1):
        c = -1074 + k * _W
        if k == k_bot:
            q, r = r, q  # the rest
        elif c + 52 <= 1023:
            m = 1.5 * 2.0 ** (c + 52)
            torch.add(r, m, out=q)
            q.sub_(m)
            r.sub_(q)
        else:
            torch.fmod(r, 2.0**c, out=q)  # the remainder
            r, q = q, r.sub_(q)
        if c > 971:
            q.mul_(2.0**-c)
        sums.append(q.sum(dim=1))
    return torch.stack(sums)


def _rounded(total: int, base: int) -> float:
    """The double nearest to ``total * 2^base`` (round half even; +-inf on overflow)."""
    if total == 0:
        return 0.0
    try:
        if total.bit_length() <= 1000:
            f = math.ldexp(float(total), base)  # float(int) is correctly rounded
            if abs(f) >= _SMALLEST_NORMAL:  # a normal result: that one rounding is all
                return f
        if base >= 0:
            return float(total << base)
        return total / (1 << -base)  # int / int is correctly rounded, subnormals included
    except OverflowError:
        return math.inf if total > 0 else -math.inf


_WORK: dict[torch.device, torch.Tensor] = {}
_VIEWS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
#: the largest workspace kept between calls (float64 elements, two buffers)
_WORK_MAX = 1 << 21


def _workspace(shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 scratch tensors of ``shape``; up to ``_WORK_MAX`` elements they are kept
    between calls (fresh large allocations cost page faults on every call on CPU)."""
    n = shape[0] * shape[1]
    if n > _WORK_MAX:
        return torch.empty(shape, dtype=torch.float64, device=device), torch.empty(
            shape, dtype=torch.float64, device=device
        )
    key = (device, shape)
    views = _VIEWS.get(key)
    if views is None:
        work = _WORK.get(device)
        if work is None or work.shape[1] < n:
            work = _WORK[device] = torch.empty(
                (2, max(n, 4096)), dtype=torch.float64, device=device
            )
            for k in [k for k in _VIEWS if k[0] == device]:
                del _VIEWS[k]
        views = _VIEWS[key] = (work[0, :n].view(shape), work[1, :n].view(shape))
    return views


def _prepare(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, float, float]:
    """``(r, q, specials, top, bottom)``: ``r`` a float64 copy of ``v`` (``(rows, n)``) with its
    nan/inf elements set to 0, ``q`` scratch of the same shape, the nan/+inf/-inf counts per
    row ``(rows, 3)``, and the largest and smallest non-zero ``|r|`` (0 if none)."""
    r, q = _workspace(tuple(v.shape), v.device)
    r.copy_(v)
    specials = np.zeros((r.shape[0], 3), dtype=np.int64)
    if not r.numel():
        return r, q, specials, 0.0, 0.0
    top = float(torch.abs(r, out=q).amax(dim=1).max())
    if not math.isfinite(top):
        for j, mask in enumerate((torch.isnan(r), r == math.inf, r == -math.inf)):
            specials[:, j] = mask.sum(dim=1).cpu().numpy()
        r.masked_fill_(~torch.isfinite(r), 0.0)
        top = float(torch.abs(r, out=q).amax(dim=1).max())
    if top == 0.0:
        return r, q, specials, 0.0, 0.0
    # smallest non-zero |r|: the bit patterns of |r| are ordered like the values; 0 -> max
    bits = q.view(torch.int64).sub_(1).bitwise_and_((1 << 63) - 1)
    low = int(bits.amin(dim=1).min()) + 1
    return r, q, specials, top, float(np.array(low, dtype=np.int64).view(np.float64))


def _combine(buf: np.ndarray, width: int, k_lo: int) -> list[float]:
    """The rounded outputs from the all-reduced slots ``buf[:, :width]`` (slot ``k_lo`` first)
    and the nan/+inf/-inf counts ``buf[:, width:width+3]``."""
    out = [0.0] * buf.shape[0]
    used = np.flatnonzero(buf[:, :width].any(axis=0))
    if used.size:
        lo, hi = int(used[0]), int(used[-1])
        shifts = [_W * j for j in range(hi - lo + 1)]
        base = -1074 + _W * (k_lo + lo)
        for i, row in enumerate(buf[:, lo : hi + 1].tolist()):
            out[i] = _rounded(sum(x << s for x, s in zip(row, shifts) if x), base)
    for i in np.flatnonzero(buf[:, width : width + 3].any(axis=1)).tolist():
        nan, pinf, ninf = buf[i, width : width + 3].tolist()
        out[i] = math.nan if nan or (pinf and ninf) else (math.inf if pinf else -math.inf)
    return out


#: up to this many elements on one rank, :func:`exact_segment_sum` uses ``math.fsum`` ...
_FSUM_MAX = 1 << 12
#: ... or up to this many where the compiled loops apply (:func:`_jit_slots`): measured on the
#: dev VM (2026-12-04, one row) fsum 0.040 / 0.137 ms against 0.038 / 0.041 ms at 1024 / 4096
_FSUM_MAX_JIT = 1 << 10


def _fsum_rows(v: torch.Tensor) -> torch.Tensor | None:
    """``math.fsum`` of each row (correctly rounded, like the slot method, so the same
    result): cheaper per call for small inputs on one rank. None when ``fsum`` cannot
    (an intermediate overflow, ``inf - inf``); the slot method then handles it."""
    try:
        out = [math.fsum(row) for row in v.detach().to("cpu", torch.float64).tolist()]
    except (OverflowError, ValueError):
        return None
    return torch.tensor(out, dtype=torch.float64, device=v.device)


def _slot_range(top: float, bottom: float) -> tuple[int, int]:
    """The slots of the largest and of the lowest bit in use (``top``, ``bottom`` > 0)."""
    return _slot_of(math.frexp(top)[1] - 1), _slot_of(max(math.frexp(bottom)[1] - 1 - 52, -1074))


def _torch_slots(v2: torch.Tensor):
    """``(specials, k_top, k_bot, local, pieces)``: the nan/+inf/-inf counts per row, the slot
    range and the slot totals ``local`` (``(levels, rows x pieces)`` int64, slot ``k_top``
    first; None when every value is 0) by vectorised torch passes on ``v2``'s device; rows
    longer than ``_CHUNK`` come in ``pieces`` (each summed exactly in float64)."""
    nrow, n = v2.shape
    r, q, specials, top, bottom = _prepare(v2)
    pieces = max(1, -(-n // _CHUNK))
    if pieces > 1:  # rows in pieces of _CHUNK elements, each summed exactly in float64
        r = torch.nn.functional.pad(r, (0, pieces * _CHUNK - n)).reshape(nrow * pieces, _CHUNK)
        q = torch.empty_like(r)
    if top == 0.0:
        return specials, -1, _NSLOT, None, pieces
    k_top, k_bot = _slot_range(top, bottom)
    sums = _levels(r, q, k_top, k_bot).cpu().numpy()  # (levels, rows), slot k_top first
    scale = -1074 + _W * np.arange(k_top, k_bot - 1, -1)
    scale[scale > 971] = 0  # those come in units of 2^c (see _levels)
    local = np.ldexp(sums, -scale[:, None]).astype(np.int64)  # exact integers < 2^53
    return specials, k_top, k_bot, local, pieces


_SUM_JIT: list = []
#: below this many elements the compiled call (~0.035 ms fixed) is not used
_SUM_JIT_MIN = 1 << 10


def _sum_jit():
    """:mod:`parallel.exact_sum_jit` when numba is installed and ``TRIVHMC_SUM_JIT`` is not
    ``0``; else None (the torch passes: the same sums)."""
    if not _SUM_JIT:
        _SUM_JIT.append(optional_jit("exact_sum_jit", "TRIVHMC_SUM_JIT"))
    return _SUM_JIT[0]


def _jit_applies(v2: torch.Tensor) -> bool:
    """True when :func:`_jit_slots` would run its compiled loops on ``v2`` (numba, CPU input
    of at least ``_SUM_JIT_MIN`` elements)."""
    return v2.device.type == "cpu" and v2.numel() >= _SUM_JIT_MIN and _sum_jit() is not None


def _jit_slots(v2: torch.Tensor):
    """:func:`_torch_slots` by two compiled loops (:mod:`parallel.exact_sum_jit`) for CPU
    input of at least ``_SUM_JIT_MIN`` elements; None where that does not apply (no numba, a
    device tensor, values beyond ``~2^999``, whose top slots the torch path scales)."""
    if not _jit_applies(v2):
        return None
    jit = _sum_jit()
    x = np.ascontiguousarray(v2.to(torch.float64).numpy())
    specials = np.zeros((x.shape[0], 3), dtype=np.int64)
    top_bits, low_bits = jit.scan(x.view(np.int64), specials)
    if top_bits == 0:
        return specials, -1, _NSLOT, None, 1
    top, bottom = (float(np.int64(b).view(np.float64)) for b in (top_bits, low_bits))
    k_top, k_bot = _slot_range(top, bottom)
    if -1074 + _W * k_top > 971:
        return None
    local = np.zeros((k_top - k_bot + 1, x.shape[0]), dtype=np.int64)
    jit.slot_sums(x, k_top, k_bot, _W, local)
    return specials, k_top, k_bot, local, 1


def exact_segment_sum(
    values: Array,
    comm: MPI.Comm | None = None,
    rows: torch.Tensor | None = None,
    nseg: int | None = None,
) -> torch.Tensor:
    """Correctly rounded sums of the rows of ``values`` (shape ``(r, n)``, this rank's part),
    summed over ``comm``; float64 tensor of shape ``(S,)`` on ``values``' device, identical on
    every rank. No autograd.

    By default row ``i`` adds to output ``i`` (``S = r``, the same on every rank). With
    ``rows`` (``(r,)`` integers) and ``nseg = S`` (the same on every rank), row ``i`` adds to
    output ``rows[i]``, so ranks may hold different parts (e.g. their time slices).

    Method (a fixed-point accumulator with absolute, rank-independent slots): every double is
    an integer multiple of ``2^-1074``; slot ``k`` holds the multiples of
    ``2^c_k, c_k = -1074 + 28 k`` below ``2^(c_k + 28)``. The values are split exactly over
    the slots their bits occupy (three float64 passes per slot, vectorized on the tensor's
    device); each slot part is summed per row in float64, which is exact (integers below
    ``2^53`` in units of ``2^c_k``), and becomes an int64. One integer ``Allreduce`` sums the
    slots over ranks (exact, so order-free), and each output is rounded once from the Python
    integer ``sum_k S_k 2^(28 k)``. The result is a pure function of the global values:
    identical for every process grid, rank order and device.

    Limits and special values: exact for up to ``2^34`` elements in all (a ``ValueError`` on
    every rank beyond). An output with a NaN element, or with both ``+inf`` and ``-inf``, is
    NaN; else one with ``+inf`` (``-inf``) elements is ``+inf`` (``-inf``) - the IEEE value of
    the exact sum, independent of order. A finite sum beyond the double range is ``+-inf``.
    Subnormal elements and results are exact / correctly rounded.
    """
    v = torch.as_tensor(values).detach()
    if v.is_complex():
        raise TypeError("exact_segment_sum of a complex tensor: sum .real and .imag")
    nrow = v.shape[0]
    nseg = nrow if nseg is None else int(nseg)
    v2 = v.reshape(nrow, math.prod(v.shape[1:]))
    n = v2.shape[1]
    parallel = comm is not None and comm.Get_size() > 1
    seg = None
    if rows is not None:
        seg = torch.as_tensor(rows).cpu().numpy().astype(np.int64)
        if seg.shape != (nrow,) or (nrow and (seg.min() < 0 or seg.max() >= nseg)):
            raise ValueError(f"rows must be {nrow} integers in [0, {nseg}), got {seg.tolist()}")
    fsum_max = min(_FSUM_MAX, _FSUM_MAX_JIT) if _jit_applies(v2) else _FSUM_MAX
    if seg is None and not parallel and 0 < v2.numel() <= fsum_max:
        small = _fsum_rows(v2)  # one rank, few elements: math.fsum (also correctly rounded)
        if small is not None:
            return small
    specials, k_top, k_bot, local, pieces = _jit_slots(v2) or _torch_slots(v2)
    # the slot columns k_lo .. k_hi of the one integer Allreduce (the same on every rank)
    if not parallel:
        k_lo, k_hi = (k_bot, k_top) if local is not None else (0, -1)
    elif nseg * (_NSLOT + 4) <= _DENSE:
        k_lo, k_hi = 0, _NSLOT - 1
    else:  # many outputs: agree on the slot range first
        rng = np.array([-k_bot, k_top], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, rng, op=MPI.MAX)
        k_lo, k_hi = -int(rng[0]), int(rng[1])
    width = max(k_hi - k_lo + 1, 0)
    buf = np.zeros((nseg, width + 4), dtype=np.int64)
    cols = np.arange(k_top, k_bot - 1, -1) - k_lo
    if seg is None and pieces == 1:  # row i -> output i
        if local is not None:
            buf[:, cols] = local.T
        buf[:, width : width + 3] = specials
        buf[:, width + 3] = n
    else:
        seg = np.arange(nrow) if seg is None else seg
        if local is not None:
            np.add.at(buf, (np.repeat(seg, pieces)[None, :], cols[:, None]), local)
        np.add.at(buf, (seg[:, None], width + np.arange(3)[None, :]), specials)
        np.add.at(buf, (seg, width + 3), n)
    if parallel:
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    _check_count(int(buf[:, width + 3].sum()))
    out = torch.from_numpy(np.array(_combine(buf, width, k_lo), dtype=np.float64))
    return out if v.device.type == "cpu" else out.to(v.device)


def _check_count(count: int) -> None:
    if count > MAX_EXACT_ELEMENTS:
        raise ValueError(
            f"exact sum over {count} elements: at most 2^{62 - _W} = {MAX_EXACT_ELEMENTS} "
            "are supported (int64 slot sums)"
        )


def slot_exponent(k: int) -> int:
    """``c_k = -1074 + k W``: slot ``k`` of :func:`exact_segment_sum` holds the multiples of
    ``2^c_k`` below ``2^(c_k + W)`` (``W = 28``)."""
    return -1074 + k * _W


def slot_of(e: int) -> int:
    """The slot holding the bit ``2^e`` (:func:`slot_exponent`)."""
    return _slot_of(e)


def round_slot_totals(totals: np.ndarray, k_lo: int, count: int) -> torch.Tensor:
    """Correctly rounded ``sum_j totals[i, j] 2^c_(k_lo + j)`` per row ``i`` (float64 CPU tensor):
    the last step of :func:`exact_segment_sum` for a kernel that splits its values over the
    slots itself (:mod:`kernels.backends.u1_kernels`). ``totals`` are int64 slot sums already
    summed over every rank (identical everywhere, so the result is too), of ``count`` finite
    values in all."""
    _check_count(count)
    rows, width = totals.shape
    buf = np.zeros((rows, width + 4), dtype=np.int64)
    buf[:, :width] = totals
    return torch.from_numpy(np.array(_combine(buf, width, k_lo), dtype=np.float64))


def exact_sum(values: Array, comm: MPI.Comm | None = None) -> float:
    """Correctly rounded sum of all of ``values`` (this rank's part), summed over ``comm``;
    the same float on every rank and for every split of the values over ranks."""
    if not is_torch(values):
        values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    return float(exact_segment_sum(values.reshape(1, -1), comm)[0])


class _ExactRowSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm, rows, nseg):  # type: ignore[override]
        ctx.save_for_backward(rows)
        ctx.shape = tuple(x.shape)
        return exact_segment_sum(x, comm, rows=rows, nseg=nseg).to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        return g[rows].unsqueeze(1).expand(ctx.shape), None, None, None


def row_sum(
    x: torch.Tensor, grid: ProcessGrid, rows: torch.Tensor | None = None, nseg: int | None = None
) -> torch.Tensor:
    """Autograd-aware :func:`exact_segment_sum` over the domain group of a real ``(r, n)``
    tensor: ``y[rows[i]] += sum_j x[i, j]`` on every rank, correctly rounded; the backward
    hands each row the cotangent of its output."""
    rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
    nseg = x.shape[0] if nseg is None else nseg
    return _ExactRowSum.apply(x, grid.cart if grid.size > 1 else None, rows, nseg)


def _lattice_exact(x: torch.Tensor, grid: ProcessGrid, first: int, keep_trailing: bool):
    """The value of :func:`lattice_sum` (no autograd)."""
    lead, nd = tuple(x.shape[:first]), grid.ndim
    trail = tuple(x.shape[first + nd :]) if keep_trailing else ()
    v = x.detach()
    if trail:  # trailing dims become output rows: (lead, trail, lattice)
        lat = list(range(first, first + nd))
        v = v.permute(*range(first), *range(first + nd, x.ndim), *lat)
    nseg = math.prod(lead + trail)
    comm = grid.cart if grid.size > 1 else None
    per_row = v.numel() // nseg if nseg else math.prod(v.shape[len(lead + trail) :])
    return exact_segment_sum(v.reshape(nseg, per_row), comm).to(x.dtype).reshape(lead + trail)


class _ExactLatticeSum(torch.autograd.Function):
    """``y[lead(, trail)] = sum over the lattice (and trailing) dims``, correctly rounded;
    backward broadcasts the cotangent (as the plain sum does)."""

    @staticmethod
    def forward(ctx, x, grid, first, keep_trailing):  # type: ignore[override]
        lead, nd = tuple(x.shape[:first]), grid.ndim
        trail = tuple(x.shape[first + nd :]) if keep_trailing else ()
        y = _lattice_exact(x, grid, first, keep_trailing)
        ctx.shape, ctx.view = (
            tuple(x.shape),
            lead + (1,) * nd + (trail or (1,) * (x.ndim - first - nd)),
        )
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g.reshape(ctx.view).expand(ctx.shape), None, None, None


def lattice_sum(x: Array, grid: ProcessGrid, first: int, keep_trailing: bool = False) -> Array:
    """Exact (correctly rounded, grid-independent) sum over the lattice dims
    ``first .. first+ndim-1`` of the global lattice, per leading index.

    Trailing dims (after the lattice dims) are summed too unless ``keep_trailing``.
    Autograd-aware; complex tensors are summed per real and imaginary part.
    """
    if not is_torch(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return lattice_sum(t, grid, first, keep_trailing).numpy()
    if x.is_complex():
        re = lattice_sum(x.real, grid, first, keep_trailing)
        return torch.complex(re, lattice_sum(x.imag, grid, first, keep_trailing))
    if not x.is_floating_point():
        dims = tuple(range(first, first + grid.ndim if keep_trailing else x.ndim))
        return global_sum(x.sum(dim=dims), grid)  # integers: any order is exact
    if not (x.requires_grad and torch.is_grad_enabled()):
        return _lattice_exact(x, grid, first, keep_trailing)
    return _ExactLatticeSum.apply(x, grid, first, keep_trailing)


def lattice_mean(x: Array, grid: ProcessGrid, first: int) -> Array:
    """Mean over the global lattice sites (and all trailing dims) of ``x`` (exact sum)."""
    count = grid.volume * int(np.prod(x.shape[first + grid.ndim :], dtype=np.int64))
    return lattice_sum(x, grid, first) / count


def global_max(x: Array, grid: ProcessGrid) -> Array:
    """Element-wise maximum over the domain group (no autograd)."""
    if grid.size == 1:
        return x
    if np.isscalar(x):
        return grid.cart.allreduce(x, op=MPI.MAX)
    return allreduce(grid.cart, x.detach() if is_torch(x) else x, MPI.MAX)


def broadcast(obj: Any, grid: ProcessGrid, root: int = 0, world: bool = False) -> Any:
    """Broadcast a Python object or an array (same shape everywhere) from ``root``.

    ``world=True`` broadcasts over all ranks (every replica), else over the domain group.
    """
    comm = grid.comm if world else grid.cart
    if isinstance(obj, np.ndarray) or is_torch(obj):
        return bcast_array(comm, obj, root)
    return comm.bcast(obj, root=root)


def gather_to_root(x: Array, grid: ProcessGrid, first: int = 0, root: int = 0) -> Array | None:
    """Assemble the global field on ``root`` of the domain group (``None`` elsewhere).

    Meant for small fields (tests, I/O of modest lattices); uses pickled blocks.
    """
    local = x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)
    blocks = grid.cart.gather(local, root=root)
    if grid.rank != root:
        return None
    lead, trail = local.shape[:first], local.shape[first + grid.ndim :]
    out = np.empty(lead + grid.shape + trail, dtype=local.dtype)
    for r, block in enumerate(blocks):
        sl = grid.local_slices(grid.cart.Get_coords(r))
        out[(slice(None),) * first + sl] = block
    if is_torch(x):
        return torch.from_numpy(out).to(x.device)
    return out


def allgather_field(x: Array, grid: ProcessGrid, first: int = 0) -> Array:
    """The global field on every rank of the domain group (small fields only)."""
    full = gather_to_root(x, grid, first)
    full = grid.cart.bcast(None if full is None else _to_numpy(full), root=0)
    return torch.from_numpy(full).to(x.device) if is_torch(x) else full


def scatter_from_root(
    x_global: Array | None, grid: ProcessGrid, first: int = 0, root: int = 0, like: Array = None
) -> Array:
    """Distribute a global field held on ``root`` to the local domains of the domain group.

    Returns a numpy array, or a tensor when ``x_global`` (on root) or ``like`` is a tensor.
    """
    torch_out = is_torch(like) if like is not None else False
    blocks = None
    if grid.rank == root:
        torch_out = torch_out or is_torch(x_global)
        glob = _to_numpy(x_global)
        if tuple(glob.shape[first : first + grid.ndim]) != grid.shape:
            raise ValueError(
                f"global field of shape {glob.shape} does not hold lattice {grid.shape} "
                f"at dims {first}.."
            )
        blocks = [
            np.ascontiguousarray(
                glob[(slice(None),) * first + grid.local_slices(grid.cart.Get_coords(r))]
            )
            for r in range(grid.size)
        ]
    torch_out = grid.cart.bcast(torch_out, root=root)
    local = grid.cart.scatter(blocks, root=root)
    if torch_out:
        device = like.device if is_torch(like) else "cpu"
        return torch.from_numpy(local).to(device)
    return local


def _to_numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def allreduce_gradients(module: torch.nn.Module, grid: ProcessGrid) -> None:
    """Sum parameter gradients over the domain group, average them over replica groups.

    Parameters without a gradient count as zero, so every rank takes part in the same call.
    All gradients travel in one flat buffer per communicator.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params or (grid.size == 1 and grid.replicas == 1):
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    if grid.size > 1:
        flat = allreduce(grid.cart, flat, MPI.SUM)
    if grid.replicas > 1:
        flat = allreduce(grid.replica_comm, flat, MPI.SUM) / grid.replicas
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters(module: torch.nn.Module, grid: ProcessGrid, root: int = 0) -> None:
    """Make the module's parameters and persistent buffers identical on every rank (from world
    ``root``). Non-persistent buffers are left alone: they are derived per rank (e.g. masks of
    the local domain, which differ between ranks) and are not part of the model state."""
    persistent = set(module.state_dict(keep_vars=True))
    buffers = [b for name, b in module.named_buffers() if name in persistent]
    with torch.no_grad():
        for t in list(module.parameters()) + buffers:
            t.copy_(bcast_array(grid.comm, t, root))
