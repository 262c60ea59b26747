"""Global reductions, broadcasts, gather/scatter of fields, and gradient all-reduce.

Two kinds of global sum (docs/conventions.md, "Reductions"):

* **Exact, grid-independent** (:func:`lattice_sum`, :func:`lattice_mean`,
  :func:`exact_segment_sum`, :func:`exact_sum`): the *correctly rounded* sum of every local
  element over the domain group. Each double ``v = m 2^(e-53)`` (``m`` a 53-bit integer,
  from ``frexp``) is split into 26-bit halves ``m = hi 2^26 + lo`` that are accumulated in
  int64 per (output, exponent) bin with ``index_add_`` on the tensor's device; the bins
  are summed over ranks with an integer ``Allreduce`` (exact, so order-free), combined in
  Python integers and rounded once. The result is a pure function of the global field:
  identical for every process grid, rank order and device. Use it for everything that feeds
  a decision or a record (actions, kinetic energy, ``dH``, observables, file headers).
  Exact for up to ``2^36`` summed elements; a non-finite element gives the ordinary
  (non-finite) float sum for its output.
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

_HALF = 26
_MASK = (1 << _HALF) - 1
_BIG = 1 << 20  # beyond any exponent of a double
_CHUNK = 1 << 16  # elements per pass of the binning (cache-sized temporaries)


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
def _round_scaled(total: int, base: int) -> float:
    """The double nearest to ``total * 2^base`` (round half even; +-inf on overflow)."""
    if total == 0:
        return 0.0
    try:
        if base >= 0:
            return float(total << base)
        return total / (1 << -base)  # int / int is correctly rounded in Python
    except OverflowError:
        return math.inf if total > 0 else -math.inf


def _local_bins(v: torch.Tensor, rows: torch.Tensor, nseg: int) -> torch.Tensor:
    """Per (output row, sign, biased exponent) bin: the integer sums of the upper and lower
    26 mantissa bits (without the implicit bit) and the element count; ``(3, nseg, 2, 2048)``
    int64. Works on the bit pattern (``v`` viewed as int64), in cache-sized chunks."""
    nkey = 2 * 2048
    hi = torch.zeros(nseg * nkey, dtype=torch.int64, device=v.device)
    lo, cnt = torch.zeros_like(hi), torch.zeros_like(hi)
    off = (rows * nkey).unsqueeze(1)
    width = max(1, _CHUNK // max(v.shape[0], 1))
    for chunk in v.split(width, dim=1):
        bits = chunk.contiguous().view(torch.int64)
        key = (((bits >> 52) & (nkey - 1)) + off).reshape(-1)  # sign bit, 11 exponent bits
        bits = bits.reshape(-1)
        hi.index_add_(0, key, (bits >> _HALF) & _MASK)
        lo.index_add_(0, key, bits & _MASK)
        cnt += torch.bincount(key, minlength=nseg * nkey)
    return torch.stack([hi, lo, cnt]).reshape(3, nseg, 2, 2048)


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

    A double with sign ``s``, biased exponent ``e`` and mantissa bits ``f`` is
    ``(-1)^s (2^52 [e > 0] + f) 2^(max(e, 1) - 1075)``; per bin ``(row, s, e)`` the integer
    sums of ``f``'s two 26-bit halves and the count (for the implicit bit) are exact in int64
    (up to ``2^37`` elements), are summed over ranks with an integer ``Allreduce`` over the
    exponent range in use, and are combined into one Python integer that is rounded once.
    """
    v = torch.as_tensor(values).detach()
    if v.is_complex():
        raise TypeError("exact_segment_sum of a complex tensor: sum .real and .imag")
    nrow = v.shape[0]
    nseg = nrow if nseg is None else int(nseg)
    if rows is None:
        rows = torch.arange(nrow, device=v.device)
    rows = torch.as_tensor(rows, device=v.device).to(torch.int64)
    v = v.reshape(nrow, -1).to(torch.float64)
    parallel = comm is not None and comm.Get_size() > 1
    bins = _local_bins(v, rows, nseg)
    used = torch.nonzero(bins[2].sum(dim=(0, 1))).flatten()
    rng = np.array([-_BIG, -_BIG], dtype=np.int64)
    if used.numel():
        rng = np.array([-int(used[0]), int(used[-1])], dtype=np.int64)
    if parallel:
        comm.Allreduce(MPI.IN_PLACE, rng, op=MPI.MAX)
    e_lo, e_hi = -int(rng[0]), int(rng[1])
    if e_hi < e_lo:  # no elements anywhere
        return torch.zeros(nseg, dtype=torch.float64, device=v.device)
    buf = np.ascontiguousarray(bins[..., e_lo : e_hi + 1].cpu().numpy())
    if parallel:
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    base = max(e_lo, 1)  # the total is an integer multiple of 2^(base - 1075)
    out, bad = [], []
    for seg in range(nseg):
        total = 0
        for sign in (0, 1):
            hi, lo, cnt = (buf[k, seg, sign].tolist() for k in range(3))
            for j, c in enumerate(cnt):
                if c:
                    e = e_lo + j
                    m = (hi[j] << _HALF) + lo[j] + (c << 52 if e else 0)
                    m <<= max(e, 1) - base
                    total += -m if sign else m
        out.append(_round_scaled(total, base - 1075))
        bad.append(e_hi == 2047 and bool(buf[2, seg, :, -1].any()))
    if any(bad):  # inf/nan elements: the ordinary float sum (inf or nan) for those rows
        fast = torch.zeros(nseg, dtype=torch.float64, device=v.device)
        fast = fast.index_add_(0, rows, v.sum(dim=1)).cpu().numpy()
        if parallel:
            comm.Allreduce(MPI.IN_PLACE, fast, op=MPI.SUM)
        out = [float(fast[k]) if bad[k] else out[k] for k in range(nseg)]
    return torch.tensor(out, dtype=torch.float64, device=v.device)


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


class _ExactLatticeSum(torch.autograd.Function):
    """``y[lead(, trail)] = sum over the lattice (and trailing) dims``, correctly rounded;
    backward broadcasts the cotangent (as the plain sum does)."""

    @staticmethod
    def forward(ctx, x, grid, first, keep_trailing):  # type: ignore[override]
        lead, nd = tuple(x.shape[:first]), grid.ndim
        trail = tuple(x.shape[first + nd :]) if keep_trailing else ()
        v = x.detach()
        if trail:  # trailing dims become output rows: (lead, trail, lattice)
            lat = list(range(first, first + nd))
            v = v.permute(*range(first), *range(first + nd, x.ndim), *lat)
        nseg = math.prod(lead + trail)
        comm = grid.cart if grid.size > 1 else None
        y = exact_segment_sum(v.reshape(nseg, -1), comm).to(x.dtype).reshape(lead + trail)
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
