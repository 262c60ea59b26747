"""Process-grid choice and the host/device buffer path (serial)."""

import numpy as np
import pytest
import torch
from mpi4py import MPI

from parallel import GridError, choose_grid, single_rank_grid
from parallel import comm as pcomm


@pytest.mark.parametrize(
    "shape, n, expected",
    [((8, 8), 4, (2, 2)), ((16, 8), 2, (2, 1)), ((4, 4, 4, 8), 4, (2, 2, 1, 1))],
)
def test_compute_dims_when_it_divides(shape, n, expected):
    assert choose_grid(shape, n) == expected


def test_fallback_when_compute_dims_does_not_divide():
    # Compute_dims(12, 2) = (4, 3), and 6 % 4 != 0: a valid grid is chosen instead
    g = choose_grid((6, 8), 12)
    assert int(np.prod(g)) == 12 and all(s % f == 0 for s, f in zip((6, 8), g))


def test_free_entries_are_filled():
    assert choose_grid((8, 8, 8, 8), 16, [0, 0, 1, 1]) == (4, 4, 1, 1)


@pytest.mark.parametrize(
    "shape, n, grid, match",
    [
        ((6, 6), 4, [4, 1], "does not divide lattice \\[6, 6\\]: axis 0"),
        ((6, 6), 4, [2, 1], "has 2 ranks but there are 4"),
        ((6, 6), 4, [2, 2, 1], "has 3 entries"),
        ((3, 5), 4, None, "no process grid of 4 ranks divides"),
        ((0, 5), 1, None, "positive extents"),
    ],
)
def test_grid_errors_are_clear(shape, n, grid, match):
    with pytest.raises(GridError, match=match):
        choose_grid(shape, n, grid)


def test_single_rank_grid_geometry():
    g = single_rank_grid((4, 6))
    assert g.local_shape == (4, 6) and g.offset == (0, 0) and g.size == 1
    assert g.global_index.shape == (4, 6)
    assert g.global_index[1, 2] == 1 * 6 + 2


def test_host_staging_is_default_and_cpu_is_zero_copy():
    assert not pcomm.gpu_aware()
    t = torch.arange(6.0)
    buf = pcomm.to_buffer(t)
    assert isinstance(buf, np.ndarray) and np.shares_memory(buf, t.numpy())
    pcomm.set_gpu_aware(True)
    try:  # CPU tensors still go through numpy when the GPU-aware path is selected
        assert isinstance(pcomm.to_buffer(t), np.ndarray)
    finally:
        pcomm.set_gpu_aware(False)


def test_single_rank_grids_release_their_communicators():
    """A single-rank grid frees its three communicators with itself: MPICH allows 2048 per
    process, and the test suite alone builds more grids than that (it ran out once)."""
    for _ in range(1000):  # 3000 communicators if none were freed
        single_rank_grid((2, 2))
    g = single_rank_grid((2, 2))
    g.free()
    g.free()  # once only
    assert g.cart == MPI.COMM_NULL or g._release.alive is False
