"""Point-to-point and collective transfers of numpy arrays and torch tensors.

Device tensors (``cuda``, ``xpu``, ...) take one of two paths:

* **GPU-aware MPI** (``set_gpu_aware(True)`` or ``TRIVHMC_GPU_AWARE_MPI=1``): the device
  buffer is handed to mpi4py directly (DLPack / ``__cuda_array_interface__``), after the
  device stream has been synchronised. Use this only when the MPI library was built
  CUDA/ROCm/Level-Zero aware (Cray MPICH with ``MPICH_GPU_SUPPORT_ENABLED=1``, Aurora MPICH).
* **Host staging** (the default): the tensor is copied to a host numpy buffer, sent, and the
  received buffer is copied back to the device.

CPU tensors always go through a zero-copy numpy view.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

Array = Any  # numpy.ndarray | torch.Tensor

_GPU_AWARE = os.environ.get("TRIVHMC_GPU_AWARE_MPI", "0").lower() in ("1", "true", "yes")


def set_gpu_aware(enabled: bool) -> None:
    """Select the device-buffer path for MPI transfers of non-CPU tensors."""
    global _GPU_AWARE
    _GPU_AWARE = bool(enabled)


def gpu_aware() -> bool:
    """Whether device buffers are passed to MPI directly."""
    return _GPU_AWARE


def is_torch(x: Array) -> bool:
    """Whether ``x`` is a torch tensor (else numpy)."""
    return isinstance(x, torch.Tensor)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU), device-agnostically."""
    if device.type == "cpu":
        return
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "synchronize"):
        acc.synchronize(device)
    else:  # older torch: per-backend module
        getattr(torch, device.type).synchronize(device)


def to_buffer(x: Array) -> Array:
    """A contiguous object mpi4py can send for ``x`` (numpy, or a device tensor if aware)."""
    if not is_torch(x):
        return np.ascontiguousarray(x)
    t = x.detach()
    if t.device.type == "cpu":
        return t.contiguous().numpy()
    if _GPU_AWARE:
        t = t.contiguous()
        synchronize(t.device)
        return t
    return t.contiguous().cpu().numpy()


def empty_like_buffer(x: Array, shape: tuple[int, ...]) -> Array:
    """A receive buffer of ``shape`` matching the kind/dtype/device path of ``x``."""
    if not is_torch(x):
        return np.empty(shape, dtype=x.dtype)
    if x.device.type == "cpu" or not _GPU_AWARE:
        return np.empty(shape, dtype=torch.empty((), dtype=x.dtype).numpy().dtype)
    return torch.empty(shape, dtype=x.dtype, device=x.device)


def from_buffer(buf: Array, like: Array) -> Array:
    """Convert a received buffer back to the kind of ``like`` (tensor on its device)."""
    if not is_torch(like):
        return buf
    if is_torch(buf):
        return buf
    return torch.from_numpy(buf).to(like.device)


def sendrecv(
    comm: MPI.Comm, send: Array, dest: int, recv_shape: tuple[int, ...], source: int, tag: int
) -> Array:
    """Send ``send`` to ``dest`` and receive an array of ``recv_shape`` from ``source``."""
    sbuf = to_buffer(send)
    rbuf = empty_like_buffer(send, recv_shape)
    comm.Sendrecv(sbuf, dest=dest, sendtag=tag, recvbuf=rbuf, source=source, recvtag=tag)
    return from_buffer(rbuf, send)


def allreduce(comm: MPI.Comm, x: Array, op: MPI.Op = MPI.SUM) -> Array:
    """Element-wise all-reduce of an array/tensor over ``comm`` (same kind returned)."""
    sbuf = to_buffer(x)
    rbuf = empty_like_buffer(x, tuple(sbuf.shape))
    comm.Allreduce(sbuf, rbuf, op=op)
    return from_buffer(rbuf.reshape(tuple(x.shape)), x)  # 0-d stays 0-d


def bcast_array(comm: MPI.Comm, x: Array, root: int = 0) -> Array:
    """Broadcast an array/tensor of the same shape and dtype on every rank from ``root``."""
    buf = to_buffer(x)
    if not is_torch(buf):
        buf = np.array(buf, copy=True)  # never write into the caller's storage
    comm.Bcast(buf, root=root)
    return from_buffer(buf, x)
