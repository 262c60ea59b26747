"""The device-side Philox stream is grid-independent bit for bit (run under mpiexec).

With ``device_philox = "always"`` (torch ops on CPU tensors here, the device path), every
rank's draw equals the matching slice of the single-rank draw, uniforms, normals and su(3)
momenta, on grids that split one and two axes.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from parallel import ProcessGrid, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 6, 4)
GRIDS = {1: [(1, 1, 1)], 2: [(2, 1, 1), (1, 1, 2)], 4: [(2, 2, 1), (1, 2, 2)]}.get(
    SIZE, [(0, 0, 0)]
)


@pytest.mark.parametrize("g", GRIDS, ids=lambda g: f"grid{list(g)}")
def test_device_stream_grid_independent(g):
    grid = ProcessGrid(SHAPE, grid=None if g == (0, 0, 0) else g)
    ref_grid = single_rank_grid(SHAPE)
    rng = SiteRNG(2026)
    rng.device_philox = "always"
    sl = (slice(None), slice(None)) + grid.local_slices()
    ok = True
    for draw in (
        lambda gr: rng.uniform(gr, 4, 3, 2, lead=(3,)),
        lambda gr: rng.normal(gr, 4, 3, 2, lead=(3,), trail=(5,)),
        lambda gr: rng.su_algebra(gr, 1, 3, 2, 3, lead=(3,)),
    ):
        ok &= torch.equal(draw(grid), draw(ref_grid)[sl].contiguous())
    assert MPI.COMM_WORLD.allreduce(ok, op=MPI.LAND)
    grid.free()
