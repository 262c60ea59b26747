"""Exact global reductions: bit-identical on every process grid (run with 1, 2, 4 ranks).

The reference is independent of our code where one exists (``math.fsum``, correctly rounded),
else the single-rank evaluation of the same theory (``single_rank_grid``). Every comparison
is *bitwise* (``==``), and is max-reduced over ranks so that all ranks fail together.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.theories.phi4 import Phi4
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import (
    ProcessGrid,
    exact_segment_sum,
    exact_sum,
    lattice_mean,
    lattice_sum,
    single_rank_grid,
)
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
GRIDS_2D = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (2, 2), (1, 4)]}[SIZE]
GRIDS_4D = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],
    4: [(1, 1, 1, 4), (2, 2, 1, 1), (1, 2, 1, 2)],
}[SIZE]


def all_equal(grid: ProcessGrid, what: str, got, ref) -> None:
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got)
    ref = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref)
    ok = got.shape == ref.shape and bool(np.array_equal(got, ref, equal_nan=True))
    ok = MPI.COMM_WORLD.allreduce(int(ok), op=MPI.MIN)
    assert ok, f"{what}: distributed {got!r} != reference {ref!r} (grid {grid.grid})"


def local(x: torch.Tensor, grid: ProcessGrid, first: int) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


def hard_values(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values whose float sum depends on the order: huge cancelling terms and tiny ones."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = 10.0 ** torch.randint(-20, 20, shape, generator=gen).double()
    return x * scale


@pytest.mark.parametrize("g", GRIDS_2D)
def test_lattice_sum_is_correctly_rounded_on_every_grid(g):
    shape = (12, 20)
    grid = ProcessGrid(shape, grid=g)
    x = hard_values((3, 2, *shape, 3), seed=5)  # (B, lead, lattice, trailing)
    y = lattice_sum(local(x, grid, 2), grid, first=2)
    ref = [[math.fsum(x[b, c].reshape(-1).tolist()) for c in range(2)] for b in range(3)]
    all_equal(grid, "lattice_sum", y, np.array(ref))
    yk = lattice_sum(local(x, grid, 2), grid, first=2, keep_trailing=True)
    refk = [[[math.fsum(x[b, c, ..., k].reshape(-1).tolist()) for k in range(3)] for c in (0, 1)]
            for b in range(3)]  # fmt: skip
    all_equal(grid, "lattice_sum keep_trailing", yk, np.array(refk))
    all_equal(grid, "lattice_mean", lattice_mean(local(x, grid, 2), grid, 2), np.array(ref) / 720)
    # the numpy entry point (file headers)
    flat = local(x, grid, 2).numpy()
    all_equal(grid, "exact_sum", exact_sum(flat, grid.cart), math.fsum(x.reshape(-1).tolist()))
    # non-finite values propagate like the float sum
    bad = local(x, grid, 2).clone()
    if grid.rank == grid.size - 1:
        bad[0, 0].view(-1)[0] = math.inf
    y = lattice_sum(bad, grid, 2)
    all_equal(grid, "inf", y[0, 0], torch.tensor(math.inf, dtype=torch.float64))
    all_equal(grid, "finite rows stay exact", y[1], np.array(ref[1]))
    grid.free()


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("g", GRIDS_2D)
def test_large_lattice_sums_take_either_slot_split(g, jit, monkeypatch):
    """>= 4096 values per rank: the compiled slot split (parallel/exact_sum_jit.py, numba) and
    the torch passes give the correctly rounded sums, the same on every grid."""
    from parallel import reduce as reduce_mod

    if jit:
        pytest.importorskip("numba")
        assert reduce_mod._sum_jit() is not None
    else:
        monkeypatch.setattr(reduce_mod, "_SUM_JIT", [None])
    shape = (64, 96)
    grid = ProcessGrid(shape, grid=g)
    x = hard_values((2, *shape, 3), seed=13)
    assert local(x, grid, 1).numel() >= reduce_mod._SUM_JIT_MIN
    y = lattice_sum(local(x, grid, 1), grid, first=1)
    all_equal(
        grid, "lattice_sum", y, np.array([math.fsum(x[b].reshape(-1).tolist()) for b in (0, 1)])
    )
    grid.free()


def _split(xs: list, rank: int, size: int) -> list:
    return xs[rank * len(xs) // size : (rank + 1) * len(xs) // size]


def test_adversarial_values_split_over_ranks():
    """Huge cancelling terms, the ends of the double range and subnormals, spread over the
    ranks in different orders: always the correctly rounded (math.fsum / Fraction) sum."""
    from fractions import Fraction

    comm, rank = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank()
    big = 1.7976931348623157e308
    lists = [
        [1e300, 1.0, -1e300, 5e-324, 2.0**-1060, -3e-320, 7.0],
        [big, big, -big, 1e-300],  # exact sum fits, any partial float sum would overflow
        [1.0, 2.0**-53, 2.0**-1074, -(2.0**-1074), 2.0**-80, -(2.0**-80)],
    ]
    rnd = np.random.default_rng(7)
    for xs in lists:
        for perm in range(4):
            order = rnd.permutation(len(xs)) if perm else np.arange(len(xs))
            mine = _split([xs[i] for i in order], rank, comm.Get_size())
            got = exact_sum(np.array(mine, dtype=np.float64), comm)
            ref = float(sum((Fraction(x) for x in xs), Fraction(0)))
            ok = comm.allreduce(int(got == ref), op=MPI.MIN)
            assert ok, f"{xs}: {got!r} != {ref!r}"


def test_non_finite_on_one_rank_and_many_outputs():
    """A nan/inf on the last rank only gives the IEEE value of the exact sum on every rank; with
    more outputs than the dense buffer holds, the ranks first agree on the slot range."""
    comm, rank, size = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    x = hard_values((600, 4 * size), seed=11)
    x[5, 2] = math.inf
    x[6, 0], x[6, -1] = math.inf, -math.inf
    x[7, -1] = math.nan
    x[8] = 0.0
    mine = x[:, rank * 4 : rank * 4 + 4]
    got = exact_segment_sum(mine, comm)
    ref = [math.fsum(row) if np.isfinite(row).all() else math.nan for row in x.tolist()]
    ref[5] = math.inf
    all_equal(ProcessGrid((size,)), "rows", got, np.array(ref))


@pytest.mark.parametrize("g", GRIDS_2D)
def test_rows_spread_over_ranks(g):
    """``exact_segment_sum`` with ``rows``: each rank adds its own time slices."""
    shape = (8, 12)
    grid = ProcessGrid(shape, grid=g)
    x = hard_values((2, *shape), seed=9)
    lt, t0, nt = shape[1], grid.offset[1], grid.local_shape[1]
    mine = local(x, grid, 1).movedim(2, 1).reshape(2 * nt, -1)
    rows = (torch.arange(2).unsqueeze(1) * lt + torch.arange(t0, t0 + nt)).reshape(-1)
    y = exact_segment_sum(mine, grid.cart, rows=rows, nseg=2 * lt).reshape(2, lt)
    ref = [[math.fsum(x[b, :, t].tolist()) for t in range(lt)] for b in range(2)]
    all_equal(grid, "time slices", y, np.array(ref))
    grid.free()


@pytest.mark.parametrize("g", GRIDS_2D)
def test_autograd_is_a_broadcast_and_double_backward_works(g):
    shape = (12, 20)
    grid = ProcessGrid(shape, grid=g)
    x = local(hard_values((2, *shape), seed=3), grid, 1).requires_grad_()
    y = lattice_sum(x**3, grid, first=1)
    (gx,) = torch.autograd.grad((y * torch.tensor([1.0, 2.0])).sum(), x, create_graph=True)
    ref = 3 * x.detach() ** 2 * torch.tensor([1.0, 2.0]).view(2, 1, 1)
    all_equal(grid, "grad", gx, ref)
    (ggx,) = torch.autograd.grad(gx.sum(), x)
    all_equal(grid, "double backward", ggx, 6 * x.detach() * torch.tensor([1.0, 2.0]).view(2, 1, 1))
    grid.free()


def _theory_case(name: str, grid: ProcessGrid):
    if name == "u1":
        return U1Gauge(grid, beta=2.3), 2
    if name == "phi4":
        return Phi4(grid, beta=0.43, lam=0.8), 1
    return SU3Gauge(grid, beta=5.7, action="symanzik"), 2


CASES = [("u1", (12, 20), g) for g in GRIDS_2D] + [("phi4", (12, 20), g) for g in GRIDS_2D]
SU3_SHAPE = (4, 2, 2, 4)
CASES += [("su3", SU3_SHAPE, g) for g in GRIDS_4D if all(s % n == 0 for s, n in zip(SU3_SHAPE, g))]


@pytest.mark.parametrize("name,shape,g", CASES, ids=lambda v: str(v))
def test_theory_records_are_bitwise_grid_independent(name, shape, g):
    """Action, kinetic energy, dH-like differences and every observable are bit-identical to
    the single-rank evaluation of the whole lattice (fields from the site-keyed RNG)."""
    grid, ref_grid = ProcessGrid(shape, grid=g), single_rank_grid(shape)
    (dist, first), (ref, _) = _theory_case(name, grid), _theory_case(name, ref_grid)
    rng = SiteRNG(1234)
    u_d, u_r = dist.hot_start(rng, 3, 2), ref.hot_start(rng, 3, 2)
    p_d, p_r = dist.random_momentum(rng, 4, 2), ref.random_momentum(rng, 4, 2)
    all_equal(grid, "field", u_d, local(u_r, grid, first))
    all_equal(grid, f"{name} action", dist.action(u_d), ref.action(u_r))
    all_equal(grid, f"{name} kinetic", dist.kinetic(p_d), ref.kinetic(p_r))
    od, orf = dist.observables(u_d), ref.observables(u_r)
    assert od.keys() == orf.keys()
    for k in orf:
        all_equal(grid, f"{name} observable {k}", od[k], orf[k])
    grid.free()
