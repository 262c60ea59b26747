"""The vnode exponential's lane loops compile to packed (SIMD) arithmetic.

Not a timing: a look at the machine code. Session 19 found ``ch_init`` and ``ch_build`` (the
Cayley-Hamilton exponential of :func:`kernels.backends.vnode.expm_mul`, every MD drift and
every Wilson-flow stage) compiled to scalar code: they read and wrote rows of a 2D scratch
array whose offsets numba computes from the run-time shape, and LLVM did not vectorise the
lane loop (``exp(X) V`` 55 ns per link; 27-32 with the loops on one flat array). A change
that brings such an access back shows here as scalar arithmetic.

numba does not show the machine code of a function loaded from its disk cache, so the check
compiles in a fresh interpreter with its own cache directory (x86-64 only: the instruction
names are x86's).
"""

from __future__ import annotations

import json
import platform

import pytest
from fresh_numba import run_fresh

pytest.importorskip("numba")
if platform.machine().lower() not in ("x86_64", "amd64"):
    pytest.skip("x86-64 instruction names", allow_module_level=True)


_PROBE = r"""
import json, re
import numpy as np
from kernels.backends import vnode
k = vnode.kernels()
F = np.zeros(5 * vnode.LB)
arith = r"\tv(mul|add|sub|fn?m(add|sub)\d+){}\t"
out = {}
for name in ["ch_init", "ch_build", "ch_norm2"] + [f"ch_series{n}" for _, n in vnode._CH_ORDERS]:
    f = getattr(k, name)
    f(F)
    asm = f.inspect_asm(f.signatures[0])
    out[name] = [len(re.findall(arith.format(t), asm)) for t in ("pd", "sd")]
print(json.dumps(out))
"""


def test_cayley_hamilton_lane_loops_are_packed(tmp_path):
    counts = json.loads(run_fresh(_PROBE, tmp_path).strip().splitlines()[-1])
    for name, (packed, scalar) in counts.items():
        assert packed > 0 and scalar == 0, f"{name}: {packed} packed, {scalar} scalar ops"
