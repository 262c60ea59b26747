"""Correctly rounded, decomposition-independent sums of float64 arrays over MPI ranks.

A floating-point sum depends on the order of additions, so a plaquette summed over a lattice
split differently over ranks differs in the last bits, and a file header holding it would not
be byte-identical for every process grid. Here every double ``v = m 2^(e-53)`` (``m`` a
53-bit integer from ``frexp``) is split into 26-bit halves that are summed exactly in int64
per exponent (exact for up to 2^37 values per rank); the per-exponent integer sums of all
ranks are gathered and combined in Python integers, and the exact total is rounded once.
The result is the correctly rounded sum, identical for every process grid.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from mpi4py import MPI

_HALF = 26
_MASK = (1 << _HALF) - 1


def _partials(values: np.ndarray) -> list[tuple[int, int, int]]:
    """Exact per-exponent integer sums ``(e, sum_hi, sum_lo)`` of ``values``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise FloatingPointError("exact_sum of non-finite values")
    mant, exp = np.frexp(v)
    m = np.ldexp(mant, 53).astype(np.int64)  # exact: |m| < 2^53
    hi, lo = m >> _HALF, m & _MASK  # m = hi 2^26 + lo, 0 <= lo < 2^26
    exps, inv = np.unique(exp, return_inverse=True)
    if v.size < 1 << 26:  # float64 bincount of |hi|, lo < 2^27 is exact below 2^53
        shi = np.bincount(inv, weights=hi, minlength=exps.size)
        slo = np.bincount(inv, weights=lo, minlength=exps.size)
        return [(int(e), int(h), int(lo_)) for e, h, lo_ in zip(exps, shi, slo)]
    return [(int(e), int(hi[exp == e].sum()), int(lo[exp == e].sum())) for e in exps]


def exact_sum(values: np.ndarray, comm: MPI.Comm | None = None) -> float:
    """Correctly rounded sum of ``values`` (this rank's part, summed over ``comm``).

    Non-finite inputs give ``nan`` (on every rank).
    """
    try:
        parts = _partials(values)
        bad = False
    except FloatingPointError:
        parts, bad = [], True
    if comm is not None and comm.Get_size() > 1:
        gathered = comm.allgather((bad, parts))
        bad = any(b for b, _ in gathered)
        parts = [p for _, ps in gathered for p in ps]
    if bad:
        return float("nan")
    if not parts:
        return 0.0
    emin = min(e for e, _, _ in parts) - 53
    total = sum(((h << _HALF) + l) << (e - 53 - emin) for e, h, l in parts)
    return float(Fraction(total) * (Fraction(2) ** emin))
