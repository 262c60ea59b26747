"""Wilson loops W(R, T), flowed t^2 E, w0 and Q at chosen flow times on a distributed 4D
lattice equal the single-rank result (run under mpiexec; grids that split the time axis and
two axes at once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.groups import su_expm
from kernels.static_loops import wilson_loop_table
from kernels.theories.su3 import SU3Gauge
from kernels.wilson_flow import wilson_flow
from parallel import ProcessGrid, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 4, 2, 4)
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],
    4: [(1, 1, 1, 4), (2, 1, 1, 2)],
}.get(SIZE, [(0, 0, 0, 0)])
TOL = 1e-12


def local(x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    return x[(slice(None),) * 2 + grid.local_slices()].contiguous()


@pytest.fixture(params=GRIDS, ids=lambda g: f"grid{list(g)}")
def grids(request):
    g = request.param
    grid = ProcessGrid(SHAPE, grid=None if g == (0, 0, 0, 0) else g)
    yield grid, single_rank_grid(SHAPE)
    grid.free()


def test_loops_and_flow_measurements(grids):
    grid, one = grids
    th = SU3Gauge(one, 6.0)  # a rough field (far from unity), the same on every rank
    u = su_expm(0.8 * th.random_momentum(SiteRNG(4), 0, 2)) @ th.cold_start(2)
    ref = wilson_loop_table(u, one, 2, 3)
    got = wilson_loop_table(local(u, grid), grid, 2, 3)
    for key in ref:
        err = MPI.COMM_WORLD.allreduce((got[key] - ref[key]).abs().max().item(), op=MPI.MAX)
        assert err <= TOL, (key, err)
    a = wilson_flow(u, one, 0.3, 0.05, charge_times=(0.15, 0.3))
    b = wilson_flow(local(u, grid), grid, 0.3, 0.05, charge_times=(0.15, 0.3))
    assert np.allclose(b.t2e, a.t2e, rtol=TOL, atol=1e-14)
    assert np.allclose(b.tdt2e, a.tdt2e, rtol=TOL, atol=1e-14)
    for tq in (0.15, 0.3):
        assert np.allclose(b.q_at[tq], a.q_at[tq], rtol=1e-10, atol=1e-13)
