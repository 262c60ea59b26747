"""Branch-free ``sin``/``cos`` for numba loops that LLVM can vectorise (optional ``numba``).

numba calls libm's scalar ``sin``/``cos`` (~20 ns per call here; it would vectorise them
only through Intel's SVML, which needs an SVML-patched llvmlite that PyPI does not ship), so a
site loop with one ``sin`` per plaquette runs scalar. These functions are plain arithmetic
and selects: inside a loop over contiguous sites LLVM turns them into SIMD code (~0.9 ns per
value on the dev VM, against 7.7 ns for ``torch.sin`` and 17 ns for ``numpy.sin`` on float64).

:func:`vsin` and :func:`vcos` (Cody-Waite reduction modulo ``pi``, then one odd Taylor
polynomial on ``|r| <= pi/2``: a SIMD loop evaluates every branch of a select, so one
polynomial of 11 terms costs less than the two of 7 and 8 terms of a quarter-period
reduction; 0.70 against 0.96 ns per value on the dev VM's Zen 4 host, ~1.9 ns on its AVX2-only
Zen 2 host, where the parity of ``q`` from an integer conversion cost ~10% more: :func:`_odd`)::

    sin x:  q = rint(x/pi),         r = ((x - q P1) - q P2) - q P3,   sin x = (-1)^q sin r,
    cos x:  h = rint(x/pi - 1/2) + 1/2,   r = ((x - h P1) - h P2) - h P3,
            cos x = (-1)^(h + 1/2) sin r,     P1 + P2 + P3 = pi,
    sin r = r + r z sum_{k=1..10} (-1)^k z^(k-1) / (2k+1)!,      z = r^2.

:func:`vsincos` (both values from one reduction) keeps the quarter-period form::

    q = rint(x 2/pi),   r = ((x - q p1) - q p2) - q p3,   p1 + p2 + p3 = pi/2,
    sin r = r + r z sum_{k=1..7} (-1)^k z^(k-1) / (2k+1)!,
    cos r = 1 - z/2 + z^2 sum_{k=2..8} (-1)^k z^(k-2) / (2k)!,
    sin x = (sin r, cos r, -sin r, -cos r)[q mod 4],
    cos x = (cos r, -sin r, -cos r, sin r)[q mod 4].

``p1``, ``p2`` hold 31 and 32 significant bits (``P1 = 2 p1``, ``P2 = 2 p2`` likewise), so
``q p1``, ``q p2`` and ``h P1``, ``h P2`` are exact for ``|q| < 2^20``; the truncation of the
series is below ``(pi/4)^17 / 17! = 5e-17`` and ``(pi/2)^23 / 23! = 1.3e-18``. Absolute
error <= 3e-16 for ``|x| <= LIMIT = 1e5`` (tests/test_vtrig.py against ``numpy``); above
``LIMIT`` the reduction loses digits, so callers count such arguments (:func:`too_large`)
and fall back to a library call. NaN and +-inf give NaN, as libm. Also :func:`vsincos` (both
from one reduction) and :func:`vsqrt` (the ``llvm.sqrt`` intrinsic, for the same reason).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from parallel import jit_target

jit_target.configure()  # before the first @njit: 512-bit vectors on AVX-512 hosts

LIMIT = 1.0e5

_TWO_OVER_PI = 2.0 / math.pi
# pi/2 split into pieces of <= 33 significant bits (31 and 32 here) and the rounded rest,
# the rest computed from 60 digits of pi (in float64 arithmetic it would be pure rounding)
_P1 = 1.57079632673412561417e00
_P2 = 6.07710050630396597660e-11
with localcontext() as _ctx:
    _ctx.prec = 60
    _PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494")
    _P3 = float(_PI / 2 - Decimal(_P1) - Decimal(_P2))  # 2.0222662487959506e-21

_S1, _S2, _S3, _S4, _S5, _S6, _S7 = ((-1) ** k / math.factorial(2 * k + 1) for k in range(1, 8))
_C2, _C3, _C4, _C5, _C6, _C7, _C8 = ((-1) ** k / math.factorial(2 * k) for k in range(2, 9))
# pi in the same pieces (twice the above: the same bits) for the reduction modulo pi
_PI1, _PI2, _PI3 = 2.0 * _P1, 2.0 * _P2, 2.0 * _P3
_INV_PI = 1.0 / math.pi
_H1, _H2, _H3, _H4, _H5, _H6, _H7, _H8, _H9, _H10 = (
    (-1) ** k / math.factorial(2 * k + 1) for k in range(1, 11)
)


@njit(cache=True, inline="always", fastmath={"contract"})
def _odd(q):
    """True for an odd integer-valued float ``q`` (``|q| < 2^52``), from ``floor`` in
    floating point: converting a vector of doubles to 64-bit integers (``np.int64(q) & 1``)
    has no AVX2 instruction (``vcvttpd2qq`` is AVX-512DQ), so on an AVX2-only CPU (Zen 2/3,
    Frontier's Trento hosts) LLVM converted lane by lane inside the vector loop."""
    return q - 2.0 * np.floor(q * 0.5) != 0.0


@njit(cache=True, inline="always", fastmath={"contract"})
def _reduced(x):
    """``(sin r, cos r, q mod 4)`` with ``x = q pi/2 + r`` (``q mod 4`` as a float:
    :func:`_odd`)."""
    q = np.rint(x * _TWO_OVER_PI)
    r = ((x - q * _P1) - q * _P2) - q * _P3
    z = r * r
    s = r + r * z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * (_S6 + z * _S7))))))
    c = _C7 + z * _C8
    c = 1.0 - 0.5 * z + z * z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * (_C6 + z * c)))))
    return s, c, q - 4.0 * np.floor(q * 0.25)


@njit(cache=True, inline="always", fastmath={"contract"})
def _sin_half_period(r):
    """``sin r`` for ``|r| <= pi/2`` (odd Taylor polynomial through ``r^21``)."""
    z = r * r
    p = _H9 + z * _H10
    p = _H5 + z * (_H6 + z * (_H7 + z * (_H8 + z * p)))
    p = _H1 + z * (_H2 + z * (_H3 + z * (_H4 + z * p)))
    return r + r * z * p


@njit(cache=True, inline="always", fastmath={"contract"})
def vsin(x):
    """``sin x`` for ``|x| <= LIMIT`` (module docstring: reduction modulo ``pi``)."""
    q = np.rint(x * _INV_PI)
    s = _sin_half_period(((x - q * _PI1) - q * _PI2) - q * _PI3)
    return -s if _odd(q) else s


@njit(cache=True, inline="always", fastmath={"contract"})
def vcos(x):
    """``cos x`` for ``|x| <= LIMIT``: ``cos((q + 1/2) pi + r) = (-1)^(q + 1) sin r``."""
    q = np.rint(x * _INV_PI - 0.5)
    h = q + 0.5
    s = _sin_half_period(((x - h * _PI1) - h * _PI2) - h * _PI3)
    return s if _odd(q) else -s


@njit(cache=True, inline="always", fastmath={"contract"})
def vsincos(x):
    """``(sin x, cos x)`` for ``|x| <= LIMIT`` from one reduction."""
    s, c, n = _reduced(x)
    odd = _odd(n)
    sv = c if odd else s
    cv = -s if odd else c
    return (-sv if n >= 2.0 else sv), (-cv if n >= 2.0 else cv)


@intrinsic
def vsqrt(typingctx, x):
    """``sqrt x`` as the ``llvm.sqrt`` intrinsic: vectorisable (numba's ``math.sqrt`` calls
    libm's ``sqrt``, which LLVM must assume sets ``errno``, so a loop with it stays scalar);
    NaN for ``x < 0``, no exception. Correctly rounded, as libm's."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.sqrt", [args[0].type])
        return builder.call(fn, args)

    return x(x), codegen


@njit(cache=True, inline="always")
def too_large(x):
    """1 where ``|x| > LIMIT`` (an integer, so that a counting loop still vectorises)."""
    return np.int64(abs(x) > LIMIT)
