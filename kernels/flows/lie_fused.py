"""numba versions of the two per-link conversions of the SU(3) pull-back (optional ``numba``).

:func:`kernels.flows.pullback.pullback_force` turns the physical force into a Euclidean
cotangent and the flow's cotangent back into a force (conventions in
:mod:`kernels.flows.lie`)::

    G = 2 F U              (gradient_from_force: dS/dU of the force F, per link)
    F_V = -TA(V G^+) / 2   (lie_force_from_gradient: the left Lie derivative)

In eager torch each is a batched 3x3 product plus elementwise passes (TA: a dagger, a
difference, a trace, a subtraction), ~3 ms together per 8^4 field on the dev VM; here each
is one pass over the links. Used only where no autograd graph is wanted (``create_graph``
off), on CPU complex128 ``(..., 3, 3)`` tensors; :func:`available` says whether it applies,
callers keep the eager formula otherwise (and when numba is missing: importing this module
raises ImportError). The same arithmetic as eager up to the order of the
3-term sums (tests/test_lie_fused.py).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange  # optional dependency: ImportError -> callers keep the eager formulas

from kernels.backends.numba_threads import match_torch_threads, threaded_kernel


@threaded_kernel(cache=True, error_model="numpy")
def ta_product_dagger(u, g, coef, out):
    """``out[s] = coef TA(u[s] g[s]^+)``, ``(n, 3, 3)`` complex."""
    for s in prange(u.shape[0]):
        m = np.empty((3, 3), np.complex128)
        for i in range(3):
            for j in range(3):
                acc = 0j
                for k in range(3):
                    acc += u[s, i, k] * g[s, j, k].conjugate()
                m[i, j] = acc
        tr = 0.5 * (m[0, 0] - m[0, 0].conjugate())
        tr += 0.5 * (m[1, 1] - m[1, 1].conjugate())
        tr += 0.5 * (m[2, 2] - m[2, 2].conjugate())
        tr /= 3.0
        for i in range(3):
            for j in range(3):
                a = 0.5 * (m[i, j] - m[j, i].conjugate())
                if i == j:
                    a -= tr
                out[s, i, j] = coef * a


@threaded_kernel(cache=True, error_model="numpy")
def scaled_product(f, u, coef, out):
    """``out[s] = coef f[s] u[s]``, ``(n, 3, 3)`` complex."""
    for s in prange(u.shape[0]):
        for i in range(3):
            for j in range(3):
                acc = 0j
                for k in range(3):
                    acc += f[s, i, k] * u[s, k, j]
                out[s, i, j] = coef * acc


def available(*ts: torch.Tensor) -> bool:
    """Whether the fused conversions apply: every tensor a CPU complex128
    ``(..., 3, 3)`` without an autograd graph to build."""
    return (
        all(
            t.device.type == "cpu"
            and t.dtype == torch.complex128
            and t.shape[-2:] == (3, 3)
            and not (torch.is_grad_enabled() and t.requires_grad)
            for t in ts
        )
        and len({t.shape for t in ts}) == 1
    )


def _flat(t: torch.Tensor):
    return t.detach().resolve_conj().contiguous().reshape(-1, 3, 3).numpy()


def lie_force_from_gradient(u: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``-TA(U G^+) / 2`` (:func:`kernels.flows.lie.lie_force_from_gradient`), no graph."""
    match_torch_threads()
    out = torch.empty(u.shape, dtype=u.dtype)
    ta_product_dagger(_flat(u), _flat(grad), -0.5, out.reshape(-1, 3, 3).numpy())
    return out


def gradient_from_force(u: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    """``2 F U`` (the default of :func:`kernels.flows.pullback.gradient_from_force`), no
    graph."""
    match_torch_threads()
    out = torch.empty(u.shape, dtype=u.dtype)
    scaled_product(_flat(force), _flat(u), 2.0, out.reshape(-1, 3, 3).numpy())
    return out
