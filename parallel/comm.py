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

import math
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from .settings import flag

Array = Any  # numpy.ndarray | torch.Tensor

#: set_gpu_aware's choice; None: $TRIVHMC_GPU_AWARE_MPI (read on first use), else off
_GPU_AWARE: bool | None = None


def set_gpu_aware(enabled: bool) -> None:
    """Select the device-buffer path for MPI transfers of non-CPU tensors."""
    global _GPU_AWARE
    _GPU_AWARE = bool(enabled)


def gpu_aware() -> bool:
    """Whether device buffers are passed to MPI directly."""
    global _GPU_AWARE
    if _GPU_AWARE is None:
        _GPU_AWARE = flag("TRIVHMC_GPU_AWARE_MPI", False)
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
    if gpu_aware():
        t = t.contiguous()
        synchronize(t.device)
        return t
    return t.contiguous().cpu().numpy()


def empty_like_buffer(x: Array, shape: tuple[int, ...]) -> Array:
    """A receive buffer of ``shape`` matching the kind/dtype/device path of ``x``."""
    if not is_torch(x):
        return np.empty(shape, dtype=x.dtype)
    if x.device.type == "cpu" or not gpu_aware():
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


class BufferPool:
    """Reusable contiguous message buffers keyed by ``(shape, dtype, device path)``.

    :meth:`acquire` hands out a free buffer of the key (allocating only when none is free,
    counted in :attr:`allocations`); :meth:`release` returns it. A buffer is held from the
    moment its message is posted until the request completes, so several exchanges may be
    in flight at once without sharing storage. Host buffers are numpy arrays (the mpi4py
    buffer interface, no pickling); with GPU-aware MPI, device buffers are torch tensors.
    """

    def __init__(self) -> None:
        self._free: dict[tuple, list[Array]] = {}
        self.allocations = 0

    def acquire(self, like: Array, shape: tuple[int, ...]) -> Array:
        """A buffer of ``shape`` for the kind/dtype/device path of ``like`` (contents undefined)."""
        device = _buffer_device(like)
        if device is None:
            dtype = _numpy_dtype(like.dtype) if isinstance(like, torch.Tensor) else like.dtype
            key = (shape, dtype, None)
        else:
            key = (shape, like.dtype, device)
        free = self._free.get(key)
        if free:
            return free.pop()
        self.allocations += 1
        if device is None:
            return np.empty(shape, dtype=dtype)
        return torch.empty(shape, dtype=like.dtype, device=device)

    def release(self, buf: Array) -> None:
        """Return ``buf`` to the pool (its message must have completed)."""
        if isinstance(buf, torch.Tensor):
            key = (tuple(buf.shape), buf.dtype, buf.device)
        else:
            key = (buf.shape, buf.dtype, None)
        self._free.setdefault(key, []).append(buf)

    def clear(self) -> None:
        """Drop every pooled buffer."""
        self._free.clear()


def _buffer_device(x: Array) -> torch.device | None:
    """Device of the message buffer for ``x``: ``None`` for a host numpy buffer."""
    if is_torch(x) and x.device.type != "cpu" and gpu_aware():
        return x.device
    return None


_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {}


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (cached: this runs once per message)."""
    out = _NUMPY_DTYPES.get(dtype)
    if out is None:
        out = _NUMPY_DTYPES[dtype] = torch.empty((), dtype=dtype).numpy().dtype
    return out


#: the process-wide pool used by the halo exchange and the shifts
POOL = BufferPool()


def host_alias(a: Array) -> Array:
    """``a`` as a numpy array sharing its memory when it is a CPU tensor without lazy conj/neg
    bits (numpy slicing and copies cost far less per call than torch's), else ``a``."""
    if isinstance(a, torch.Tensor) and a.device.type == "cpu" and not (a.is_conj() or a.is_neg()):
        return a.detach().numpy()
    return a


def direct_view(v: Array) -> Array | None:
    """A buffer MPI can use in place of the view ``v`` (zero copy), or ``None``: a C-contiguous
    numpy array or CPU tensor (its numpy alias); device tensors and strided views are packed."""
    if isinstance(v, torch.Tensor):
        if v.device.type == "cpu" and v.is_contiguous() and not (v.is_conj() or v.is_neg()):
            return v.detach().numpy()
        return None
    return v if v.flags.c_contiguous else None


def pack(views: list[Array], pool: BufferPool = POOL) -> Array:
    """Copy the (possibly strided) ``views``, one after the other, into one flat pooled
    contiguous send buffer (the device stream is synchronised before it is sent)."""
    if len(views) == 1:
        v = views[0]
        buf = pool.acquire(v, (v.numel() if isinstance(v, torch.Tensor) else v.size,))
        _copy_into(buf.reshape(tuple(v.shape)), v)
    else:
        sizes = [math.prod(v.shape) for v in views]
        buf = pool.acquire(views[0], (sum(sizes),))
        at = 0
        for v, size in zip(views, sizes):
            _copy_into(buf[at : at + size].reshape(tuple(v.shape)), v)
            at += size
    if isinstance(buf, torch.Tensor):
        synchronize(buf.device)
    return buf


def _copy_into(seg: Array, v: Array) -> None:
    if isinstance(seg, torch.Tensor):
        seg.copy_(v)
    elif isinstance(v, torch.Tensor):
        torch.from_numpy(seg).copy_(v.detach())  # resolves lazy conj/neg views too
    else:
        np.copyto(seg, v)


def unpack(buf: Array, out: Array, sign: int = 1) -> None:
    """Write the received ``buf`` into the view ``out`` (times ``sign`` = +-1)."""
    if (
        isinstance(out, torch.Tensor)
        and out.device.type == "cpu"
        and not (out.is_conj() or out.is_neg())
        and not is_torch(buf)
    ):
        view = out.detach().numpy()  # shares memory with ``out``
        np.negative(buf, out=view) if sign < 0 else np.copyto(view, buf)
    elif is_torch(out):
        src = buf if is_torch(buf) else torch.from_numpy(buf)
        out.copy_(src)
        if sign < 0:
            out.neg_()
    elif sign < 0:
        np.negative(buf, out=out)
    else:
        np.copyto(out, buf)


def isend(comm: MPI.Comm, buf: Array, dest: int, tag: int) -> MPI.Request:
    """Post a non-blocking send of the contiguous ``buf``."""
    return comm.Isend(buf, dest=dest, tag=tag)


def irecv(comm: MPI.Comm, buf: Array, source: int, tag: int) -> MPI.Request:
    """Post a non-blocking receive into the contiguous ``buf``."""
    return comm.Irecv(buf, source=source, tag=tag)


def waitall(requests: list[MPI.Request]) -> None:
    """Complete every request (benchmarks time this call: it is the halo *wait*)."""
    if requests:
        MPI.Request.Waitall(requests)


def progress(requests: list[MPI.Request]) -> bool:
    """Drive pending transfers forward without blocking (``MPI_Testall``); True when all are
    complete. MPI libraries without an asynchronous progress thread move a large
    (rendezvous) message only inside MPI calls, so a caller that overlaps computation with
    an exchange calls this now and then."""
    return bool(MPI.Request.Testall(requests)) if requests else True


def allreduce(comm: MPI.Comm, x: Array, op: MPI.Op = MPI.SUM) -> Array:
    """Element-wise all-reduce of an array/tensor over ``comm`` (same kind returned)."""
    sbuf = to_buffer(x)
    rbuf = empty_like_buffer(x, tuple(sbuf.shape))
    comm.Allreduce(sbuf, rbuf, op=op)
    return from_buffer(rbuf.reshape(tuple(x.shape)), x)  # 0-d stays 0-d


def bcast_array(comm: MPI.Comm, x: Array, root: int = 0) -> Array:
    """Broadcast an array/tensor of the same shape and dtype on every rank from ``root``."""
    # never write into the caller's storage: a CPU tensor's buffer is its numpy alias, a
    # device tensor's (GPU-aware MPI) the tensor itself
    buf = to_buffer(x)
    if is_torch(buf):
        buf = buf.clone()
        synchronize(buf.device)  # the copy is complete before MPI reads it
    else:
        buf = np.array(buf, copy=True)
    comm.Bcast(buf, root=root)
    return from_buffer(buf, x)
