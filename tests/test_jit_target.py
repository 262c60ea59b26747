"""numba's vector width (parallel/jit_target.py): 512-bit on AVX-512 hosts, the same bits.

Each check runs in a fresh interpreter: numba fixes its target when the first function is
decorated, so the width cannot change inside the test process. The bitwise comparison
between widths is the claim the module makes (no reassociation; each lane computes its site
with the same operations), checked on the kernels an ensemble's records depend on: ``sin`` /
``cos``, the U(1) force and action density, the exact global sum, the compiled convolution
and (slow: compiles the whole vnode module and the stout layer's twice) the SU(3) force,
action, flow step and clover density and a stout flow's output, log-det and trivialized
force.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")
llvm = pytest.importorskip("llvmlite.binding")

ROOT = Path(__file__).resolve().parents[1]
AVX512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")

_PROBE = r"""
import hashlib, json, sys
import numpy as np
import torch
from parallel import jit_target
from kernels.backends import vtrig, u1_kernels
from numba.core.registry import cpu_target
which = sys.argv[1]
out = {"state": jit_target.configure(), "describe": jit_target.describe()}
def h(a):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
rng = np.random.default_rng(5)
x = rng.uniform(-40, 40, 4099)
s, c = np.empty_like(x), np.empty_like(x)
from numba import njit
@njit(fastmath={"contract"})
def trig(x, s, c):
    for i in range(x.size):
        s[i] = vtrig.vsin(x[i])
        c[i] = vtrig.vcos(x[i])
trig(x, s, c)
out["trig"] = h(s) + h(c)
asm = trig.inspect_asm(trig.signatures[0])
out["zmm"] = asm.count("zmm")
import kernels.backends as kb
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.reduce import exact_segment_sum
from parallel.rng import SiteRNG
be = kb.make_backend("vnode")
g2 = single_rank_grid((18, 14))
th = U1Gauge(g2, 3.0).hot_start(SiteRNG(2), 0, 3)
out["u1_force"] = h(be.u1_force(th, g2, [(0, 1)], 3.0))
out["u1_density"] = h(be.u1_action_density(th, g2, [(0, 1)]))
out["exact_sum"] = h(exact_segment_sum(torch.from_numpy(rng.normal(size=(3, 5001)) * 1e3)))
from parallel import conv_jit
xi = rng.normal(size=(3, 4, 20, 18)); w = rng.normal(size=(5, 4, 3, 3)); b = rng.normal(size=5)
y = np.zeros((3, 5, 18, 16))
conv_jit.valid_conv2d(xi, w, b, y)
out["conv"] = h(y)
if which == "su3":
    from kernels.theories.su3 import SU3Gauge
    g4 = single_rank_grid((4, 4, 4, 6))
    u = SU3Gauge(g4, 6.0).hot_start(SiteRNG(3), 0, 2)
    out["su3_force"] = h(be.su3_force(u, g4, 6.0, 1.0, 0.0))
    out["su3_density"] = h(be.su3_action_density(u, g4, 1.0, 0.0))
    out["su3_flow"] = h(be.su3_flow_step_rk3(u, g4, 0.02))
    out["su3_clover"] = h(be.su3_clover_density(u, g4))
    from kernels.flows.su3 import su3_stout_flow
    from kernels.samplers.trivialized import TransformedTheory
    torch.set_default_dtype(torch.float64)
    gs = single_rank_grid((4, 4, 2, 2))
    ths = SU3Gauge(gs, 2.0)
    v = ths.hot_start(SiteRNG(5), 0, 2)
    torch.manual_seed(3)
    flow = su3_stout_flow(gs, n_layers=4, hidden=(4,), rho_max=0.9)
    flow.requires_grad_(False)
    with torch.no_grad():
        y, ld = flow(v)
    out["stout"] = h(y) + h(ld) + h(TransformedTheory(ths, flow).force(v))
print("RESULT" + json.dumps(out))
"""


def _probe(which: str = "2d", **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    e.pop("TRIVHMC_SIMD512", None)
    e.update(env, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, which], cwd=ROOT, env=e, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def _same_bits(a: dict, b: dict) -> None:
    keys = [k for k in a if k not in ("state", "describe", "zmm")]
    assert keys and set(keys) == {k for k in b if k not in ("state", "describe", "zmm")}
    for k in keys:
        assert a[k] == b[k], f"{k}: the two vector widths give different bits"


#: 256-bit vectors forced (LLVM's own choice is already 512 bits on AMD Zen 4/5, so
#: ``TRIVHMC_SIMD512=0`` alone would compare a width with itself there)
NARROW = {"NUMBA_CPU_FEATURES": llvm.get_host_cpu_features().flatten() + ",+prefer-256-bit"}


def test_widths_give_the_same_bits():
    wide, off = _probe(), _probe(TRIVHMC_SIMD512="0")
    assert off["state"] == "off" and "LLVM's width" in off["describe"]
    if AVX512:
        assert wide["state"] == "512" and "512-bit" in wide["describe"]
        assert wide["zmm"] > 0, "AVX-512 host: the trig loop should use zmm registers"
        narrow = _probe(**NARROW)
        assert narrow["state"] == "user" and narrow["zmm"] == 0
        _same_bits(wide, narrow)
    else:
        assert wide["state"] == "no-avx512" and wide["zmm"] == 0
    _same_bits(wide, off)


@pytest.mark.slow
def test_widths_give_the_same_bits_su3():
    _same_bits(_probe("su3"), _probe("su3", **(NARROW if AVX512 else {"TRIVHMC_SIMD512": "0"})))


def test_user_features_win_and_bad_values_are_named():
    host = llvm.get_host_cpu_features().flatten()
    assert _probe(NUMBA_CPU_FEATURES=host)["state"] == "user"
    e = dict(os.environ, TRIVHMC_SIMD512="fast", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", "import parallel.exact_sum_jit"],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "TRIVHMC_SIMD512='fast'" in r.stderr


def test_too_late_is_reported_not_forced():
    code = (
        "import numba\n@numba.njit\ndef f(x):\n    return x\nf(1)\n"
        "from parallel import jit_target\nprint('STATE', jit_target.configure())"
    )
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "TRIVHMC_SIMD"))}
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(e, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == ("late" if AVX512 else "no-avx512")
