"""The compiled slot split of the exact sums (parallel/exact_sum_jit.py, numba) against the
torch passes and ``math.fsum`` on large inputs, its usual case (tests/test_exact_sum.py runs
every adversarial case through both as well)."""

from __future__ import annotations

import math

import pytest
import torch

from parallel import exact_segment_sum
from parallel import reduce as reduce_mod

pytest.importorskip("numba")


def test_compiled_and_torch_slot_sums_agree_bit_for_bit(monkeypatch):
    """Large mixed inputs (the compiled path's usual case): the slot totals of both ways of
    splitting are the same integers, so the sums are the same doubles, and equal to fsum."""
    assert reduce_mod._sum_jit() is not None, "TRIVHMC_SUM_JIT=0 in the environment?"
    gen = torch.Generator().manual_seed(11)
    n = 50_000
    mant = torch.randn(5, n, dtype=torch.float64, generator=gen)
    expo = torch.randint(-60, 60, (5, n), generator=gen).to(torch.float64)
    x = mant * torch.pow(2.0, expo)
    x[1] = x[1] * 1e-300  # subnormal range
    x[2, ::2] = -x[2, 1::2]  # cancellation to the last bits
    x[3, :100] = 0.0
    x[4] = torch.randn(n, dtype=torch.float64, generator=gen).abs()  # action-like, one sign
    got = exact_segment_sum(x)
    big = x.clone()
    big[0, 0] = 1e305  # slots above c = 971: the compiled path hands over to torch
    assert reduce_mod._jit_slots(big) is None and reduce_mod._jit_slots(x) is not None
    monkeypatch.setattr(reduce_mod, "_SUM_JIT", [None])
    ref = exact_segment_sum(x)
    assert torch.equal(got, ref)
    for row, val in zip(x.tolist(), got.tolist()):
        assert val == math.fsum(row)
