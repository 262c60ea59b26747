"""Compiled valid 2D cross-correlation for small channel counts (optional: numba).

:func:`parallel.conv._valid_conv` of a halo-padded float64 field on the CPU: ``torch``'s
``conv2d`` has no float64 oneDNN kernel, so it runs ATen's ``_slow_conv2d`` (an ``im2col``
copy and one small GEMM per chain), ~1 GFLOP/s for the 1 -> 2 channel, ``3^2`` layers of the
phi^4 flows. Here, per chain, output channel and output row::

    y[b, o, r, x] = (((bias[o] + w[o, 0, 0, 0] xp[b, 0, r, x]) + w[o, 0, 0, 1] xp[b, 0, r, x + 1])
                     + ...) + w[o, C_in - 1, k - 1, k - 1] xp[b, C_in - 1, r + k - 1, x + k - 1]

(input channel, then tap row, then tap column: one left-to-right sum per site in a fixed
order; ``0`` instead of ``bias`` without one). The loop over ``x`` runs on contiguous row
slices, so LLVM vectorises it; no fast-math (no contraction to FMA), so the vector body and
its scalar tail round alike and a site's value does not depend on where it lies in its row:
the result is the same on every process grid (a BLAS kernel's summation order may depend on
the block size). It agrees with ``conv2d`` to rounding (tests/test_conv_jit.py). Serial, like
:mod:`parallel.exact_sum_jit` (a parallel kernel here could start numba's threading layer
before the kernel backends choose it).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def valid_conv2d(xp, w, bias, out):
    """``out[b, o] = bias[o] + sum_{i, dy, dx} w[o, i, dy, dx] xp[b, i, dy:, dx:]`` (module
    docstring; ``bias`` of length 0: none). ``xp`` ``(B, C_in, H + k - 1, W + k - 1)``, ``w``
    ``(C_out, C_in, k, k)``, ``out`` ``(B, C_out, H, W)``, all C-contiguous float64.

    Each tap is one loop over the flat padded rows (``H (W + k - 1) - k + 1`` values, the
    ``k - 1`` columns at the end of each row computed and dropped): long contiguous loops
    instead of one per output row."""
    nb, co, h, wd = out.shape
    ci, k = w.shape[1], w.shape[2]
    wp = xp.shape[3]
    n = (h - 1) * wp + wd
    has_bias = bias.shape[0] > 0
    acc = np.empty(n)
    for b in range(nb):
        for o in range(co):
            b0 = bias[o] if has_bias else 0.0
            for j in range(n):
                acc[j] = b0
            for i in range(ci):
                src = xp[b, i].reshape(-1)
                for dy in range(k):
                    for dx in range(k):
                        wv = w[o, i, dy, dx]
                        s = src[dy * wp + dx : dy * wp + dx + n]
                        for j in range(n):
                            acc[j] = acc[j] + wv * s[j]
            for r in range(h):
                row = out[b, o, r]
                a = acc[r * wp : r * wp + wd]
                for x in range(wd):
                    row[x] = a[x]
