"""The nearest rank counts that fit a lattice (app/preflight.py): the same answers as a scan of
every count, and fast for the rank counts of large machines."""

from __future__ import annotations

import functools

import pytest

from app.deck import loads_deck
from app.errors import LayoutError
from app.preflight import _choose_grid, _fits, check_layout, fitting_rank_counts
from parallel.grid import GridError, choose_grid


@functools.cache
def brute_fits(shape, ranks, replicas, grid) -> bool:
    """The old ``_fits``: ask ``choose_grid``."""
    if ranks < 1 or ranks % replicas:
        return False
    try:
        choose_grid(shape, ranks // replicas, grid)
    except GridError:
        return False
    return True


def brute_nearest(shape, ranks, replicas=1, grid=None, step=1) -> list[int]:
    """The old scan of every multiple of ``step``, nearest first (the reference)."""
    volume = 1
    for s in shape:
        volume *= s
    limit = min(volume * replicas, 4 * (ranks + step))
    below = next(
        (
            n
            for n in range((ranks // step) * step, 0, -step)
            if n != ranks and brute_fits(shape, n, replicas, grid)
        ),
        None,
    )
    above = next(
        (
            n
            for n in range((ranks // step + 1) * step, limit + 1, step)
            if brute_fits(shape, n, replicas, grid)
        ),
        None,
    )
    return [n for n in (below, above) if n is not None]


CASES = [  # shape, process grids (None: free; 0: a free axis)
    ((8, 8, 8, 8), [None, (2, 2, 1, 1), (0, 0, 1, 2), (0, 0, 0, 4)]),
    ((6, 4, 9), [None, (0, 2, 0), (3, 0, 0)]),
    ((12, 12), [None, (0, 4)]),
    ((4, 6, 10, 3), [None, (0, 0, 5, 0)]),
    ((1, 5), [None]),
    ((7,), [None, (0,)]),
    ((8, 8, 12, 16), [None, (2, 0, 3, 0)]),
]


@pytest.mark.parametrize("shape,grids", CASES)
def test_nearest_rank_counts_equal_a_scan_of_every_count(shape, grids):
    for grid in grids:
        for replicas in (1, 2, 3):
            for n in range(-2, 120):
                assert _fits(shape, n, replicas, grid) == brute_fits(shape, n, replicas, grid), (
                    shape,
                    grid,
                    replicas,
                    n,
                )
            for step in (1, 2, 3, 8, 12):
                for ranks in range(-4, 70):
                    got = fitting_rank_counts(shape, ranks, replicas, grid, step=step)
                    want = brute_nearest(shape, ranks, replicas, grid, step=step)
                    assert got == want, (shape, grid, replicas, step, ranks)


def test_a_count_that_cannot_fit_is_refused_with_choose_grids_message():
    for shape, n in (((8, 8, 8, 8), 3), ((6, 4, 9), 7), ((12, 12), 5)):
        with pytest.raises(GridError) as ours:
            _choose_grid(shape, n, None)
        with pytest.raises(GridError) as theirs:
            choose_grid(shape, n, None)
        assert str(ours.value) == str(theirs.value)
    assert _choose_grid((8, 8, 8, 8), 16, None) == choose_grid((8, 8, 8, 8), 16, None)
    assert _choose_grid((6, 4, 9), 6, (0, 2, 0)) == choose_grid((6, 4, 9), 6, (0, 2, 0))


@pytest.fixture
def grid_calls(monkeypatch) -> list[int]:
    """Counts the calls of parallel.grid.choose_grid (the old scan made one per rank count;
    the work, not the wall time, is what a test can check on a loaded machine)."""
    import parallel.grid as grid_module

    calls = [0]
    original = grid_module.choose_grid

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(grid_module, "choose_grid", counted)
    return calls


def test_large_rank_counts_are_answered_at_once(grid_calls):
    """The old scan called choose_grid for every count: 113 s for `validate --ranks 32768`
    on 8^4, minutes for 800000 ranks (`jobscript --nodes 100000`). Now a few candidates."""
    deck = loads_deck(
        "theory: {name: su3, beta: 6.0, action: wilson}\nlattice: {shape: [8, 8, 8, 8]}\n"
        "run: {seed: 1, trajectories: 2}\noutput: {directory: out}\n"
    )
    for ranks, step, near in ((32768, 1, [4096]), (800000, 8, [4096]), (4095, 1, [2048, 4096])):
        grid_calls[0] = 0
        assert fitting_rank_counts((8, 8, 8, 8), ranks, 1, None, step=step) == near
        assert grid_calls[0] < 100, (ranks, grid_calls[0])
    for ranks in (32768, 800000):
        grid_calls[0] = 0
        with pytest.raises(LayoutError, match=f"on {ranks} rank.*run on 4096 ranks"):
            check_layout(deck, ranks)
        assert grid_calls[0] < 100, (ranks, grid_calls[0])
    grid_calls[0] = 0  # a large lattice with many divisors
    below, above = fitting_rank_counts((48, 48, 48, 96), 10**6 + 1, 2)
    assert grid_calls[0] < 100, grid_calls[0]
    assert below < 10**6 + 1 < above and below % 2 == above % 2 == 0
