"""The vectorisable ``sin``/``cos``/``sqrt`` of kernels/backends/vtrig.py against libm
(numpy), and the serial/parallel twins of kernels/backends/numba_threads.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

numba = pytest.importorskip("numba")
vtrig = pytest.importorskip("kernels.backends.vtrig", exc_type=ImportError)
from kernels.backends.numba_threads import threaded_kernel  # noqa: E402


@numba.njit
def _apply(x, s, c, big):
    n = 0
    for i in range(x.shape[0]):
        s[i] = vtrig.vsin(x[i])
        c[i] = vtrig.vcos(x[i])
        n += vtrig.too_large(x[i])
    big[0] = n


def _run(x):
    s, c, big = np.empty_like(x), np.empty_like(x), np.zeros(1, np.int64)
    _apply(x, s, c, big)
    return s, c, int(big[0])


def test_sin_cos_match_libm_to_rounding():
    rng = np.random.default_rng(4)
    quarter = np.arange(-64, 65) * (math.pi / 4)
    x = np.concatenate(
        [
            rng.uniform(-10, 10, 100_000),
            rng.uniform(-vtrig.LIMIT, vtrig.LIMIT, 100_000),
            np.geomspace(1e-300, 1e-3, 200),
            -np.geomspace(1e-300, 1e-3, 200),
            quarter,
            np.nextafter(quarter, np.inf),
            np.nextafter(quarter, -np.inf),
            [0.0, -0.0, vtrig.LIMIT, -vtrig.LIMIT],
        ]
    )
    s, c, big = _run(x)
    assert big == 0
    assert np.abs(s - np.sin(x)).max() <= 4e-16
    assert np.abs(c - np.cos(x)).max() <= 4e-16
    small = np.abs(x) < 1e-3
    assert np.all(np.abs(s[small] - np.sin(x[small])) <= 2e-16 * np.abs(x[small]))


def test_special_values_and_the_range_counter():
    s, c, big = _run(np.array([np.nan, np.inf, -np.inf, 2 * vtrig.LIMIT, -1e300]))
    assert np.all(np.isnan(s[:3])) and np.all(np.isnan(c[:3]))
    assert big == 4  # inf, -inf and the two finite ones above LIMIT (NaN is not counted)


@numba.njit
def _sincos_sqrt(x, s, c, r):
    for i in range(x.shape[0]):
        s[i], c[i] = vtrig.vsincos(x[i])
        r[i] = vtrig.vsqrt(abs(x[i]))


def test_sincos_equals_sin_cos_and_sqrt_is_correctly_rounded():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-10, 10, 10_000), rng.uniform(-1e-3, 1e-3, 1000), [0.0]])
    s, c, r = (np.empty_like(x) for _ in range(3))
    _sincos_sqrt(x, s, c, r)
    s0, c0, _ = _run(x)  # another reduction (quarter period against half): to rounding
    assert np.abs(s - s0).max() <= 4e-16 and np.abs(c - c0).max() <= 4e-16
    assert np.abs(s - np.sin(x)).max() <= 4e-16 and np.abs(c - np.cos(x)).max() <= 4e-16
    assert np.array_equal(r, np.sqrt(np.abs(x)))  # IEEE sqrt: correctly rounded, bitwise
    _sincos_sqrt(np.array([-4.0]), s[:1], c[:1], r[:1])
    assert r[0] == 2.0  # of |x|
    out = np.empty(1)
    _negative_sqrt(np.array([-1.0]), out)
    assert np.isnan(out[0])  # no exception below zero


@numba.njit
def _negative_sqrt(x, out):
    out[0] = vtrig.vsqrt(x[0])


def test_threaded_kernel_runs_the_serial_twin_on_one_thread():
    @threaded_kernel(cache=False)
    def total(x):
        acc = 0.0
        for i in numba.prange(x.shape[0]):
            acc += x[i]
        return acc

    calls = []
    serial, parallel = total.serial, total.parallel
    total.serial = lambda *a: calls.append("serial") or serial(*a)
    total.parallel = lambda *a: calls.append("parallel") or parallel(*a)
    x = np.arange(1000.0)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert total(x) == 499500.0
        if numba.config.NUMBA_NUM_THREADS >= 2:
            numba.set_num_threads(2)
            assert total(x) == 499500.0
    finally:
        numba.set_num_threads(saved)
    assert calls[0] == "serial"
    assert calls[1:] == (["parallel"] if numba.config.NUMBA_NUM_THREADS >= 2 else [])
    assert total.__doc__ is None and total.__name__ == "total"


def test_static_kernels_pin_the_vtrig_source_they_inline():
    """numba's disk cache of a static module is keyed by that module's text only: the U(1)
    kernels, which inline ``vsin``/``vcos``, carry the hash of vtrig.py in their text, so a
    change of vtrig.py cannot leave them running stale cached code. On failure: set
    ``u1_kernels.VTRIG_HASH`` to the value printed. (Generated modules hash their inlined
    dependencies themselves: ``fused._load_module``.)"""
    from kernels.backends import fused, u1_kernels

    want = fused.dependency_hash(("vtrig.py",))
    assert u1_kernels.VTRIG_HASH == want, f"set u1_kernels.VTRIG_HASH = {want!r}"
    assert "vtrig.py" in fused.INLINED_DEPENDENCIES


def test_u1_kernels_pin_the_exact_sum_source_they_link():
    """Likewise for ``parallel/exact_sum_jit.py``, whose ``split_block`` the one-pass U(1)
    action links into its cached code. On failure: set ``u1_kernels.EXACT_SUM_HASH`` to the
    value printed."""
    import hashlib
    from pathlib import Path

    from kernels.backends import u1_kernels
    from parallel import exact_sum_jit

    want = hashlib.sha256(Path(exact_sum_jit.__file__).read_bytes()).hexdigest()[:16]
    assert u1_kernels.EXACT_SUM_HASH == want, f"set u1_kernels.EXACT_SUM_HASH = {want!r}"
