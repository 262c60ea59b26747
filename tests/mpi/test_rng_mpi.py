"""The site-keyed RNG gives bitwise the same field on every process grid (1, 2, 4 ranks).

Each check draws on a distributed grid, gathers the field, and compares it with
``torch.equal`` to the same draw made on every rank with ``single_rank_grid`` (and checks the
local block against the matching slice of it, which needs no communication).
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from parallel import ProcessGrid, SiteRNG, allgather_field, single_rank_grid
from parallel.rng import PURPOSE_ACCEPT, PURPOSE_MOMENTUM, PURPOSE_START, PURPOSE_USER

COMM = MPI.COMM_WORLD
SIZE = COMM.Get_size()

GRIDS_2D = {1: [[1, 1]], 2: [[2, 1], [1, 2]], 4: [[4, 1], [2, 2], [1, 4]]}[SIZE]
GRIDS_4D = {
    1: [[1, 1, 1, 1]],
    2: [[2, 1, 1, 1], [1, 1, 1, 2]],
    4: [[2, 2, 1, 1], [1, 2, 2, 1], [1, 1, 2, 2], [4, 1, 1, 1]],
}[SIZE]


def _divides(shape, grid) -> bool:
    return all(s % g == 0 for s, g in zip(shape, grid))


# 6x10 on [2,2] has local extents 3x5 (odd); 4x8 covers [1,4]
CASES = [(s, g) for s in [(8, 6), (6, 10), (4, 8)] for g in GRIDS_2D if _divides(s, g)]
CASES += [((4, 4, 4, 2), g) for g in GRIDS_4D if _divides((4, 4, 4, 2), g)]

SEED = 0x5EED_0000_1234_ABCD


def case_id(case) -> str:
    return f"L{'x'.join(map(str, case[0]))}-g{'x'.join(map(str, case[1]))}"


def _check(grid: ProcessGrid, ref_grid: ProcessGrid, draw, first: int) -> None:
    local = draw(grid)
    full = draw(ref_grid)
    gathered = allgather_field(local, grid, first)  # collective first: no rank left waiting
    assert local.shape[first : first + grid.ndim] == grid.local_shape
    block = full[(slice(None),) * first + grid.local_slices()]
    assert torch.equal(local, block)
    assert gathered.dtype == full.dtype and torch.equal(gathered, full)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_site_draws_grid_independent(case) -> None:
    shape, g = case
    grid = ProcessGrid(shape, g)
    ref = single_rank_grid(shape)
    nd = len(shape)
    rng = SiteRNG(SEED)
    try:
        _check(grid, ref, lambda gr: rng.uniform(gr, PURPOSE_START, 7, 2, trail=(3,)), 1)
        _check(
            grid,
            ref,
            lambda gr: rng.uniform(gr, PURPOSE_USER, 1, 2, lead=(2,), trail=(3,)),
            2,
        )
        _check(grid, ref, lambda gr: rng.normal(gr, PURPOSE_MOMENTUM, 0, 3, lead=(nd,)), 2)
        _check(
            grid,
            ref,
            lambda gr: rng.normal(gr, PURPOSE_USER + 1, 2**32 - 1, 1, trail=(2, 3)),
            1,
        )
        for n in (2, 3):
            _check(
                grid,
                ref,
                lambda gr, n=n: rng.su_algebra(gr, PURPOSE_MOMENTUM, 5, 2, n, lead=(nd,)),
                2,
            )
        _check(
            grid,
            ref,
            lambda gr: rng.normal(gr, PURPOSE_MOMENTUM, 3, 2, dtype=torch.float32),
            1,
        )
    finally:
        grid.free()
        ref.free()


def test_chain_uniform_same_on_all_ranks() -> None:
    rng = SiteRNG(SEED)
    u = rng.chain_uniform(PURPOSE_ACCEPT, 12, 5, chain_offset=3)
    everywhere = COMM.allgather(u.numpy())
    for other in everywhere:
        assert torch.equal(torch.from_numpy(other), u)
    assert torch.equal(u, SiteRNG(SEED).chain_uniform(PURPOSE_ACCEPT, 12, 8)[3:])


@pytest.mark.skipif(SIZE == 1, reason="two replicas need at least two ranks")
@pytest.mark.parametrize("shape", [(8, 6), (4, 4, 4, 2)], ids=["8x6", "4x4x4x2"])
def test_replicas_own_chains(shape) -> None:
    batch = 2
    grid = ProcessGrid(shape, replicas=2)
    ref = single_rank_grid(shape)
    rng = SiteRNG(SEED)
    nd = len(shape)
    try:
        off = grid.replica * batch
        local = rng.su_algebra(grid, PURPOSE_MOMENTUM, 4, batch, 3, lead=(nd,), chain_offset=off)
        mine = allgather_field(local, grid, 2)
        per_replica = COMM.allgather((grid.replica, mine.numpy()))
        all_chains = rng.su_algebra(ref, PURPOSE_MOMENTUM, 4, 2 * batch, 3, lead=(nd,))
        assert torch.equal(mine, all_chains[off : off + batch])
        # the two replicas drew different chains
        fields = {r: torch.from_numpy(f) for r, f in per_replica}
        assert set(fields) == {0, 1}
        assert not torch.any(fields[0] == fields[1])
        acc = rng.chain_uniform(PURPOSE_ACCEPT, 4, batch, chain_offset=off)
        assert torch.equal(acc, rng.chain_uniform(PURPOSE_ACCEPT, 4, 2 * batch)[off : off + batch])
    finally:
        grid.free()
        ref.free()
