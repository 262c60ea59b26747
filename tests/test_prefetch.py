"""Software prefetch for the numba kernels (kernels/backends/prefetch.py).

A prefetch changes no value (the vnode kernels' agreement with eager, tests/test_vnode.py and
tests/test_backends.py, runs with it); here: the intrinsic compiles to a prefetch instruction
on every line of a row (x86-64: ``prefetcht1``), leaves the data alone, refuses what it cannot
handle, and ``TRIVHMC_PREFETCH=0`` builds the vnode kernels with the no-op.
"""

from __future__ import annotations

import platform
import re

import numpy as np
import pytest

numba = pytest.importorskip("numba")
prefetch = pytest.importorskip("kernels.backends.prefetch", exc_type=ImportError)
vnode = pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)


def _row_copy(a: np.ndarray) -> np.ndarray:
    out = np.empty_like(a)
    for i in range(a.shape[0]):
        if i + 1 < a.shape[0]:
            prefetch.prefetch_row(a, i + 1)
        for j in range(a.shape[1]):
            out[i, j] = 2.0 * a[i, j]
    return out


def test_prefetch_row_compiles_to_a_prefetch_per_line_and_changes_nothing():
    fn = numba.njit(_row_copy)
    a = np.random.default_rng(0).normal(size=(7, 288))
    before = a.copy()
    np.testing.assert_array_equal(fn(a), 2.0 * before)
    np.testing.assert_array_equal(a, before)
    if platform.machine() in ("x86_64", "AMD64"):
        asm = fn.inspect_asm(fn.signatures[0])
        assert re.search(r"\bprefetcht1\b", asm), "no prefetcht1 (locality 2) in the kernel"
        assert not re.search(r"\bprefetcht0\b", asm)


def test_prefetch_row_refuses_a_one_dimensional_array():
    fn = numba.njit(lambda a: prefetch.prefetch_row(a, 0))
    with pytest.raises(numba.core.errors.TypingError):
        fn(np.zeros(4))


def test_vnode_kernels_prefetch_unless_switched_off(monkeypatch):
    monkeypatch.delenv("TRIVHMC_PREFETCH", raising=False)
    on = vnode._source()
    assert prefetch.IMPORT_SOURCE in on and prefetch.NOOP_SOURCE not in on
    for kernel in ("su3_ta_staples", "su3_plaquette_density", "su3_clover_density"):
        body = on.split(f"def {kernel}(")[1].split("@threaded_kernel")[0]
        assert "prefetch_site(" in body, kernel
    body = on.split("def expm_mul(")[1].split("@threaded_kernel")[0]
    assert "prefetch_row(V, " in body and "prefetch_row(Z[i], qq + " in body
    monkeypatch.setenv("TRIVHMC_PREFETCH", "0")
    off = vnode._source()
    assert prefetch.NOOP_SOURCE in off and prefetch.IMPORT_SOURCE not in off
    assert off.replace(prefetch.NOOP_SOURCE, "") == on.replace(prefetch.IMPORT_SOURCE, "")
