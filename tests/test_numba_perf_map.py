"""benchmarks/numba_perf_map.py names freshly compiled numba functions for ``perf``: the map
lists a kernel (at the address numba calls) and the helper it calls, in ``perf``'s
``start size name`` format. In a fresh interpreter with empty caches (code loaded from
numba's disk cache has no symbol table)."""

from __future__ import annotations

import pytest
from fresh_numba import run_fresh

pytest.importorskip("numba")

_PROBE = r"""
import ctypes, sys
import numpy as np
sys.path.insert(0, "benchmarks")
from numba import njit
from numba_perf_map import write_perf_map

@njit
def helper_twice(x):
    return 2.0 * x

@njit
def kernel_sum(a):
    s = 0.0
    for v in a:
        s += helper_twice(v)
    return s

assert kernel_sum(np.arange(4.0)) == 12.0
n = write_perf_map(sys.argv[1])
cres = kernel_sum.overloads[kernel_sum.signatures[0]]
print(n, hex(cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)))
"""


def test_map_names_a_kernel_and_its_helper(tmp_path):
    path = tmp_path / "perf.map"
    n, entry = run_fresh(_PROBE, tmp_path, str(path)).split()
    rows = [line.split(maxsplit=2) for line in path.read_text().splitlines()]
    assert int(n) == len(rows) >= 2
    starts = [int(r[0], 16) for r in rows]
    assert starts == sorted(starts) and all(int(r[1], 16) > 0 for r in rows)
    named = {int(r[0], 16): r[2] for r in rows}
    assert "kernel_sum" in named[int(entry, 16)]
    assert any(v.startswith("helper_twice|") and "helper_twice" in v for v in named.values())
