"""Global reductions, broadcasts, gather/scatter of fields, and gradient all-reduce.

``global_sum`` is autograd-aware: on every rank ``y = sum_r x_r`` (all-reduce over the domain
group), and since every rank holds the same ``y`` the backward is the identity,
``dL/dx_r = dL/dy``. Parameter gradients computed this way are the rank-local parts of the full
gradient; :func:`allreduce_gradients` sums them over the domain group (one lattice) and
averages over replica groups (independent chains), as in data-parallel training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from .comm import Array, allreduce, bcast_array, is_torch
from .grid import ProcessGrid


class _GlobalSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm):  # type: ignore[override]
        return allreduce(comm, x, MPI.SUM)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None


def global_sum(x: Array, grid: ProcessGrid) -> Array:
    """Element-wise sum of ``x`` over the domain group (autograd-aware for tensors)."""
    if grid.size == 1:
        return x
    if is_torch(x) and torch.is_grad_enabled() and x.requires_grad:
        return _GlobalSum.apply(x, grid.cart)
    if np.isscalar(x) or isinstance(x, float | int):
        return grid.cart.allreduce(x, op=MPI.SUM)
    return allreduce(grid.cart, x, MPI.SUM)


def lattice_sum(x: Array, grid: ProcessGrid, first: int, keep_trailing: bool = False) -> Array:
    """Sum over the lattice dims ``first .. first+ndim-1`` of the global lattice.

    Trailing dims (after the lattice dims) are summed too unless ``keep_trailing``.
    """
    dims = tuple(range(first, first + grid.ndim))
    if not keep_trailing:
        dims = tuple(range(first, x.ndim))
    local = x.sum(dim=dims) if is_torch(x) else x.sum(axis=dims)
    return global_sum(local, grid)


def lattice_mean(x: Array, grid: ProcessGrid, first: int) -> Array:
    """Mean over the global lattice sites (and all trailing dims) of ``x``."""
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
