"""The correctly rounded sum of ``parallel/reduce.py`` against independent references:
``math.fsum`` (correctly rounded, C) and exact ``fractions.Fraction`` arithmetic, on
adversarial inputs (huge cancellation, subnormals, the ends of the double range, gaps of
hundreds of binades). The grid-independence on 1, 2, 4 ranks is in tests/mpi/test_reduce_mpi.py.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from parallel import exact_segment_sum, exact_sum
from parallel import reduce as reduce_mod

TINY = 5e-324  # 2^-1074, the smallest subnormal
HUGE = 1.7976931348623157e308  # the largest double


@pytest.fixture(params=["slots", "jit", "fsum"], autouse=True)
def method(request, monkeypatch):
    """Every test runs the fixed-point slot method (also what several ranks use) by torch
    passes (``slots``) and by the compiled loops of parallel/exact_sum_jit.py (``jit``, numba),
    and the one-rank small-input ``math.fsum`` path."""
    monkeypatch.setattr(reduce_mod, "_FSUM_MAX", 1 << 12 if request.param == "fsum" else 0)
    if request.param == "jit":
        pytest.importorskip("numba")
        monkeypatch.setattr(reduce_mod, "_SUM_JIT_MIN", 0)
        assert reduce_mod._sum_jit() is not None, "TRIVHMC_SUM_JIT=0 in the environment?"
    else:
        monkeypatch.setattr(reduce_mod, "_SUM_JIT", [None])
    return request.param


def reference(xs: list[float]) -> float:
    """The double nearest to the exact sum, from exact rational arithmetic (IEEE overflow
    to +-inf), independent of ``math.fsum``'s intermediate-overflow limitation."""
    total = sum((Fraction(x) for x in xs), Fraction(0))
    try:
        return float(total)  # int / int: correctly rounded
    except OverflowError:
        return math.inf if total > 0 else -math.inf


def exact(xs: list[float]) -> float:
    return float(exact_segment_sum(torch.tensor([xs], dtype=torch.float64))[0])


CASES = [
    [1e300, 1.0, -1e300, 1e-300, TINY, -TINY, 3 * TINY],
    [HUGE, HUGE, -HUGE],  # intermediate overflow, exact sum representable
    [HUGE, HUGE],  # overflows: inf
    [-HUGE, -HUGE, 1.0],
    [HUGE, 2.0**970],  # rounds up past the largest double: inf
    [HUGE, 2.0**969],  # below half an ulp: stays the largest double
    [TINY, TINY, 1e-310, -2e-310],  # subnormal result
    [1.0, 2.0**-53],  # exact tie: round half to even (down)
    [1.0, 2.0**-53, 2.0**-1074],  # just above the tie: up
    [1.0 + 2.0**-52, 2.0**-53],  # tie: to even (up)
    [1.0, 2.0**-53, -(2.0**-1074)],  # just below the tie: down
    [2.0**1023, 2.0**1023, -(2.0**1023), TINY],
    [0.0, -0.0],
    [0.1] * 10,
    [1e16, 1.0, -1e16],
]


@pytest.mark.parametrize("xs", CASES, ids=range(len(CASES)))
def test_adversarial_cases_are_correctly_rounded(xs):
    assert exact(xs) == reference(xs)
    if all(abs(x) < 1e307 for x in xs):
        assert exact(xs) == math.fsum(xs)


def test_random_mixtures_against_fractions():
    rnd = random.Random(12)
    for _ in range(400):
        xs: list[float] = []
        for _ in range(rnd.randint(1, 60)):
            kind = rnd.random()
            if kind < 0.3:
                xs.append(rnd.uniform(-1, 1) * 2.0 ** rnd.randint(-1074, 1023))
            elif kind < 0.45 and xs:
                xs.append(-xs[rnd.randrange(len(xs))])  # cancellation
            elif kind < 0.55:
                xs.append(TINY * rnd.randint(-(2**60), 2**60))  # subnormal / smallest normals
            else:
                xs.append(rnd.gauss(0, 1) * 10.0 ** rnd.randint(-30, 30))
        assert exact(xs) == reference(xs), xs


def test_zeros_do_not_hide_the_smallest_value():
    """Signed zeros are skipped when the scan looks for the lowest bit in use (the compiled
    scan maps 0 to the largest pattern): a zero-heavy row whose smallest non-zero value is
    subnormal, and rows of zeros only."""
    rnd = random.Random(3)
    xs = [0.0, -0.0] * 1500 + [rnd.gauss(0, 1) for _ in range(1000)] + [3 * TINY, -TINY, 1e-310]
    rnd.shuffle(xs)
    assert exact(xs) == reference(xs)
    assert exact([0.0, -0.0, 0.0]) == 0.0 and exact([-0.0] * 2000) == 0.0


def test_many_rows_and_row_mapping():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 17, generator=gen, dtype=torch.float64)
    x *= 10.0 ** torch.randint(-200, 200, x.shape, generator=gen).double()
    assert exact_segment_sum(x).tolist() == [reference(r) for r in x.tolist()]
    rows = torch.randint(0, 7, (300,), generator=gen)
    got = exact_segment_sum(x, rows=rows, nseg=7).tolist()
    ref = [reference(sum((x[rows == s].reshape(-1).tolist() for s in [s]), [])) for s in range(7)]
    assert got == ref
    with pytest.raises(ValueError, match="rows must be"):
        exact_segment_sum(x, rows=rows + 7, nseg=7)


def test_long_rows_are_summed_in_exact_pieces(monkeypatch):
    """Rows longer than the float64-exact piece length (2^23 elements) are cut into pieces:
    checked with a small piece length, where one float64 sum per row would not be exact."""
    monkeypatch.setattr(reduce_mod, "_CHUNK", 8)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 101, generator=gen, dtype=torch.float64) * 1e10
    x[:, ::2] = torch.ldexp(torch.ones(()), torch.tensor(-1000)) * torch.arange(51)
    assert exact_segment_sum(x).tolist() == [reference(r) for r in x.tolist()]
    rows = torch.tensor([1, 0, 1])
    got = exact_segment_sum(x, rows=rows, nseg=2).tolist()
    assert got == [reference(x[1].tolist()), reference(x[0].tolist() + x[2].tolist())]


def test_non_finite_elements_give_the_ieee_value_of_the_exact_sum():
    inf, nan = math.inf, math.nan
    x = torch.tensor(
        [[inf, 1.0, HUGE], [-inf, HUGE, HUGE], [inf, -inf, 1.0], [nan, 1.0, 2.0], [1.0, 2.0, 0.5]]
    )
    got = exact_segment_sum(x.double()).tolist()
    assert got[:2] == [inf, -inf]  # a float sum could give nan (HUGE + HUGE = inf, - inf)
    assert math.isnan(got[2]) and math.isnan(got[3])
    assert got[4] == 3.5  # other rows stay exact


def test_float32_integer_sizes_and_numpy_entry():
    x = torch.randn(1000, dtype=torch.float32) * 1e5
    assert exact_sum(x) == reference(x.double().tolist())
    assert exact_sum(x.double().numpy()) == reference(x.double().tolist())
    assert exact_segment_sum(torch.zeros(2, 0, dtype=torch.float64)).tolist() == [0.0, 0.0]
    assert exact_segment_sum(torch.zeros(0, 5, dtype=torch.float64)).tolist() == []
    with pytest.raises(TypeError, match="complex"):
        exact_segment_sum(torch.ones(2, 2, dtype=torch.complex128))


def test_too_many_elements_is_an_error(monkeypatch, method):
    if method == "fsum":
        pytest.skip("the limit is the slot method's (int64 slot sums)")
    monkeypatch.setattr(reduce_mod, "MAX_EXACT_ELEMENTS", 10)
    with pytest.raises(ValueError, match="at most"):
        exact_sum(torch.ones(11, dtype=torch.float64))


def test_long_rows_cross_the_compiled_blocks():
    """Rows of several compiled blocks (``exact_sum_jit.BLOCK`` values) and a partial last
    block, with magnitudes from subnormal to ``2^990`` (the largest the compiled loops take)
    and cancellations between blocks, against exact rational arithmetic."""
    rnd = random.Random(21)
    rows = []
    for top in (990, 60, -900):
        xs = [rnd.uniform(-1, 1) * 2.0 ** rnd.randint(top - 120, top) for _ in range(5000)]
        xs += [-x for x in xs[:2500:3]] + [TINY * rnd.randint(-(2**40), 2**40) for _ in range(7)]
        rows.append(xs[:5003])
    x = torch.tensor(rows, dtype=torch.float64)
    assert exact_segment_sum(x).tolist() == [reference(r) for r in rows]


def test_lattice_sum_of_no_chains_is_empty():
    """A batch of zero chains sums to an empty result (the lattice size is explicit)."""
    from parallel import lattice_sum, single_rank_grid

    grid = single_rank_grid((4, 6))
    assert lattice_sum(torch.zeros(0, 4, 6), grid, 1).shape == (0,)
    assert lattice_sum(torch.zeros(0, 2, 4, 6, 3), grid, 2, keep_trailing=True).shape == (0, 2, 3)
