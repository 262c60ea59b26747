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

from . import jit_target

jit_target.configure()  # before the first @njit: 512-bit vectors on AVX-512 hosts


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


#: partial sums per tap in :func:`weight_grad2d` (two ymm registers of doubles)
LANES = 8


@njit(cache=True)
def weight_grad2d(xp, gy, gw):
    """``gw[o, i, dy, dx] = sum_{b, r, x} gy[b, o, r, x] xp[b, i, r + dy, x + dx]``, the weight
    gradient of :func:`valid_conv2d` (``xp`` ``(B, C_in, H + k - 1, W + k - 1)``, ``gy``
    ``(B, C_out, H, W)``, ``gw`` ``(C_out, C_in, k, k)``, C-contiguous float64).

    ``gy`` of one chain is laid out on the flat padded rows (zeros in the ``k - 1`` extra
    columns), so each tap is a dot product of two contiguous runs, taken in ``LANES`` partial
    sums (index ``j mod LANES``, held in registers: :func:`_dot_lanes`) that are added to
    per-tap totals chain by chain and summed in lane order at the end: a fixed order for
    given shapes."""
    nb, co, h, wd = gy.shape
    ci, k = gw.shape[1], gw.shape[2]
    wp = xp.shape[3]
    n = (h - 1) * wp + wd
    acc = np.zeros((co, ci, k, k, LANES))
    g = np.zeros((co, n))
    for b in range(nb):
        for o in range(co):
            for r in range(h):
                src = gy[b, o, r]
                for x in range(wd):
                    g[o, r * wp + x] = src[x]
        for i in range(ci):
            flat = xp[b, i].reshape(-1)
            for dy in range(k):
                for dx in range(k):
                    s = flat[dy * wp + dx : dy * wp + dx + n]
                    for o in range(co):
                        _dot_lanes(g[o], s, acc[o, i, dy, dx])
    _lane_totals(acc.reshape(-1, LANES), gw.reshape(-1))


@njit(cache=True, inline="always")
def _dot_lanes(g, s, a):
    """``a[l] += sum_{j = l mod LANES} g[j] s[j]`` (``LANES = 8``; the partial sums in
    registers, each a left-to-right sum)."""
    n = g.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    nfull = n - n % 8
    for j in range(0, nfull, 8):
        a0 = a0 + g[j] * s[j]
        a1 = a1 + g[j + 1] * s[j + 1]
        a2 = a2 + g[j + 2] * s[j + 2]
        a3 = a3 + g[j + 3] * s[j + 3]
        a4 = a4 + g[j + 4] * s[j + 4]
        a5 = a5 + g[j + 5] * s[j + 5]
        a6 = a6 + g[j + 6] * s[j + 6]
        a7 = a7 + g[j + 7] * s[j + 7]
    t = (a0, a1, a2, a3, a4, a5, a6, a7)
    for ln in range(8):
        a[ln] = a[ln] + t[ln]
    for j in range(nfull, n):
        a[j - nfull] = a[j - nfull] + g[j] * s[j]


@njit(cache=True)
def _lane_totals(acc, out):
    """``out[t] = sum_l acc[t, l]``, left to right."""
    for t in range(acc.shape[0]):
        v = 0.0
        for ln in range(LANES):
            v = v + acc[t, ln]
        out[t] = v


@njit(cache=True)
def conv_at_sites(xpf, taps, w, bias, out):
    """``out[b, o, s] = bias[o] + sum_{i, t} w[o, i, t] xpf[b, i, taps[t, s]]``: the
    convolution at selected sites (``LatticeConv.at_sites``) from the flat padded field ``xpf``
    ``(B, C_in, P)`` and the flat window indices ``taps`` ``(k^D, n)`` (tap-major), ``w``
    ``(C_out, C_in, k^D)``, ``out`` ``(B, C_out, n)``; ``bias`` of length 0: none. One
    left-to-right sum per site over (input channel, tap), no FMA: as :func:`valid_conv2d`, the
    same value wherever the site lies."""
    nb, ci = xpf.shape[0], xpf.shape[1]
    co, nt = w.shape[0], w.shape[2]
    n = taps.shape[1]
    has_bias = bias.shape[0] > 0
    for b in range(nb):
        for o in range(co):
            row = out[b, o]
            b0 = bias[o] if has_bias else 0.0
            for s in range(n):
                row[s] = b0
            for i in range(ci):
                src = xpf[b, i]
                for t in range(nt):
                    wv = w[o, i, t]
                    tt = taps[t]
                    for s in range(n):
                        row[s] = row[s] + wv * src[tt[s]]
