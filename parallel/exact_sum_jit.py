"""Compiled slot split of :func:`parallel.reduce.exact_segment_sum` (optional: numba).

The same fixed-point split as the torch reference (``parallel.reduce._prepare`` and
``_levels``), value for value, in two loops instead of ~20 whole-array torch passes:

* :func:`scan`: per row the counts of NaN, ``+inf``, ``-inf``; over all rows the bit patterns
  of the largest finite ``|x|`` and of the smallest non-zero one (non-negative doubles order
  like their bit patterns, so integer max/min give them exactly), in one branch-free pass;
* :func:`slot_sums`: per block of ``BLOCK`` values of a row (kept in cache), slot ``k`` from
  ``k_top`` down: ``q = (r + M) - M`` with ``M = 1.5 2^(c_k + 52)`` (``r`` rounded to a multiple
  of ``2^c_k``; exact for ``|r| < 2^(c_k + 51)``), ``r -= q``, and ``q 2^-c_k`` (an integer below
  ``2^28``) added to an int64 accumulator; the last slot takes the rest. The integer is read
  from the bits of ``r + M`` (no float-to-int conversion, which AVX2 lacks). NaN and
  infinities count as 0 there (the caller turns the counts into the IEEE result).

Every operation is exact or the IEEE rounding the reference performs too, and each slot's
part is summed exactly, so the slot totals and therefore the correctly rounded sums are
bitwise those of the torch path (tests/test_exact_sum.py compares both and ``math.fsum``).
No fast-math: ``(r + M) - M`` must not be
simplified. Serial on purpose, like :mod:`parallel.philox_jit` (a parallel kernel here could
start numba's threading layer before the kernel backends choose it). Slots above
``c = 971`` (values beyond ``~2^999``) stay with the torch path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import jit_target

jit_target.configure()  # before the first @njit: 512-bit vectors on AVX-512 hosts

#: values per block of a row split slot by slot (two 16 kB scratch rows: stay in L1 between
#: slots; 2048 was 1.2x faster than 4096 on a Zen 3 host)
BLOCK = 2048
_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_INF = np.int64(0x7FF0000000000000)


@njit(cache=True)
def _count_specials(bits, specials):
    """``specials[row] = (nan, +inf, -inf)`` counts (the rare path of :func:`scan`)."""
    for row in range(bits.shape[0]):
        nan = 0
        pinf = 0
        ninf = 0
        for i in range(bits.shape[1]):
            b = bits[row, i]
            a = b & _ABS
            if a > _INF:
                nan += 1
            elif a == _INF:
                if b < 0:
                    ninf += 1
                else:
                    pinf += 1
        specials[row, 0] = nan
        specials[row, 1] = pinf
        specials[row, 2] = ninf


@njit(cache=True)
def scan(bits, specials):
    """``bits`` ``(rows, n)`` int64 view of float64 values; fills ``specials[row] = (nan, +inf,
    -inf)`` counts and returns the bit patterns of the largest finite and the smallest non-zero
    finite ``|x|`` over all rows (``0`` and ``_ABS`` when there are none).

    One branch-free pass (integer max/min/count reductions, which LLVM vectorises): a
    non-finite value counts as 0 for the extremes; ``(c - 1) & _ABS`` maps 0 to ``_ABS`` so
    that it never is the minimum. Only when non-finite values occur does a second pass count
    them by kind."""
    top = np.int64(0)
    low = _ABS
    bad = 0
    for row in range(bits.shape[0]):
        for i in range(bits.shape[1]):
            a = bits[row, i] & _ABS
            fin = a < _INF
            c = a if fin else np.int64(0)
            top = max(top, c)
            low = min(low, (c - 1) & _ABS)
            bad += 0 if fin else 1
    if bad:
        _count_specials(bits, specials)
    else:
        specials[:, :] = 0
    return top, (low + 1 if low != _ABS else _ABS)


@njit(cache=True)
def split_block(vals, tb, mags, mbits, acc):
    """``acc[j] += sum_i q_j(vals[i]) / 2^c_j`` over the slots ``j`` with ``mags[j] = M_j = 1.5
    2^(c_j + 52)`` and its bit pattern ``mbits[j]`` (``c_j`` descending); the last slot takes
    the rest. ``vals`` is consumed (the rests), ``tb`` is scratch of at least its length.
    Returns the count of rests that the last slot does not hold exactly (not a multiple of
    its ``2^c``, or NaN): none where the slots reach each value's lowest bit.

    The integer ``q / 2^c`` is read from the bits of ``t = r + M``: ``t`` lies in ``M``'s
    binade, whose spacing is ``2^c``, so ``bits(t) - bits(M) = (t - M) / 2^c = q / 2^c``
    exactly. Integer adds of those bit patterns vectorise where a float-to-int64 conversion
    does not (AVX2 has none: 0.84 against ~0.2 ns per value and slot on a Zen 3 host). Also
    inlined by :func:`kernels.backends.u1_kernels.action_slots` (its ``EXACT_SUM_HASH`` pins
    this file)."""
    n = vals.shape[0]
    tv = tb[:n]
    tvb = tb.view(np.int64)[:n]
    nlev = mags.shape[0]
    bad = 0
    for j in range(nlev):
        mag = mags[j]
        if j < nlev - 1:
            for i in range(n):
                v = vals[i]
                t = v + mag
                vals[i] = v - (t - mag)
                tv[i] = t
        else:
            for i in range(n):
                v = vals[i]
                t = v + mag
                tv[i] = t
                bad += np.int64((t - mag) != v)
        s = np.int64(0)
        mb = mbits[j]
        for i in range(n):
            s += tvb[i] - mb
        acc[j] += s
    return bad


@njit(cache=True)
def slot_sums(x, k_top, k_bot, width, out):
    """``out[j, row] = sum_i q_(k_top - j)(x[row, i]) / 2^c`` for the slots ``k_top .. k_bot``
    (``c = -1074 + width k``; module docstring), block by block (:func:`split_block`);
    non-finite values count as 0."""
    rows, n = x.shape
    levels = k_top - k_bot + 1
    mags = np.empty(levels)
    for j in range(levels):
        mags[j] = 1.5 * 2.0 ** (-1074 + width * (k_top - j) + 52)
    mbits = mags.view(np.int64)
    nbuf = min(n, BLOCK)
    buf = np.empty(nbuf)
    tb = np.empty(nbuf)
    acc = np.zeros(levels, np.int64)
    big = np.finfo(np.float64).max
    for row in range(rows):
        acc[:] = 0
        for lo in range(0, n, BLOCK):
            m = min(n, lo + BLOCK) - lo
            xs = x[row, lo : lo + m]
            for i in range(m):
                v = xs[i]
                buf[i] = v if abs(v) <= big else 0.0
            split_block(buf[:m], tb, mags, mbits, acc)
        for j in range(levels):
            out[j, row] += acc[j]
