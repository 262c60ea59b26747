"""SU(3) Wilson staples/force with the halo hidden behind the interior
(:func:`kernels.theories.su3.wilson_staples_overlap`) equal the eager reference
(:func:`kernels.backends.eager.staple_sum`, shift-based, no overlap) to 1e-13 on 1, 2 and 4
ranks, on grids that split the time axis and two axes at once (edges/corners), with local
extents 2 (no interior: every site is boundary), 3 and 4. An HMC trajectory with
``overlap=True`` equals the single-rank one, and the overlapped force is bit-identical on
every grid (so records do not depend on the process grid).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.backends.eager import gauge_force, staple_sum
from kernels.groups import haar_su_n
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import (
    SU3Gauge,
    _boxes,
    gauge_force_overlap,
    wilson_staples_overlap,
)
from parallel import ProcessGrid, single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (6, 4, 2, 8)
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],
    4: [(1, 1, 1, 4), (2, 2, 1, 1), (1, 2, 1, 2), (2, 1, 2, 1)],
}[SIZE]
TOL = 1e-13


def local(x: torch.Tensor, grid: ProcessGrid, first: int = 2) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


def max_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    err = (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())
    return MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)


@pytest.fixture(params=GRIDS, ids=lambda g: "g" + "x".join(map(str, g)))
def grids(request):
    grid = ProcessGrid(SHAPE, request.param)
    yield grid, single_rank_grid(SHAPE)
    grid.free()


def _gauge(grid, seed=5):
    return haar_su_n(SiteRNG(seed).normal(grid, PURPOSE_USER, 0, 2, lead=(4,), trail=(3, 3, 2)))


def test_boxes_cover_the_domain_once(grids):
    grid, _ = grids
    count = np.zeros(grid.local_shape, dtype=int)
    interior, slabs = _boxes(grid)
    for box in ([interior] if interior else []) + slabs:
        count[tuple(slice(lo, hi) for lo, hi in box)] += 1
    assert (count == 1).all()


def test_overlap_staples_and_force_equal_eager(grids):
    grid, single = grids
    u_ref = _gauge(single)
    u = _gauge(grid)
    a_ref = staple_sum(u_ref, single, 1.0, 0.0)
    f_ref = gauge_force(u_ref, single, 5.7)
    a = wilson_staples_overlap(u, grid)
    f = gauge_force_overlap(u, grid, 5.7)
    assert max_err(a, local(a_ref, grid)) <= TOL
    assert max_err(f, local(f_ref, grid)) <= TOL
    # the same grid without overlap (shift-based eager) agrees too
    assert max_err(a, staple_sum(u, grid, 1.0, 0.0)) <= TOL
    # bit-identical to the single-rank overlapped force: records do not depend on the grid
    f_single = gauge_force_overlap(u_ref, single, 5.7)
    assert torch.equal(f, local(f_single, grid))


def test_overlap_force_of_the_theory(grids):
    grid, single = grids
    th = SU3Gauge(grid, 5.7, overlap=True)
    ref = SU3Gauge(single, 5.7)
    assert max_err(th.force(_gauge(grid, 7)), local(ref.force(_gauge(single, 7)), grid)) <= TOL
    with pytest.raises(ValueError, match="Wilson action only"):
        SU3Gauge(grid, 5.7, action="iwasaki", overlap=True)


def test_hmc_trajectory_with_overlap(grids):
    grid, single = grids
    out = []
    for g, overlap in ((grid, True), (single, False)):
        th = SU3Gauge(g, 5.5, overlap=overlap)
        hmc = HMC(th, make_integrator(th, "omelyan", 2, 0.2), SiteRNG(31))
        u = th.hot_start(SiteRNG(31), 0, 2)
        u, rec = hmc.trajectory(u, counter=1)
        out.append((u, rec))
    (u, rec), (u_ref, rec_ref) = out
    assert max_err(u, local(u_ref, grid)) <= 1e-12
    scale = rec_ref.action.abs().max().item()
    assert (rec.dH - rec_ref.dH).abs().max().item() <= 1e-12 * scale
