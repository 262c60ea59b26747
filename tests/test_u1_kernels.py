"""The chunked one-pass U(1) kernels (kernels/backends/u1_kernels.py) against eager torch.

The kernels cut the interior rows into chunks with scratch copies of the padded rows they
need (and, for the force, the sines one ``strides[0]`` back): these tests force many chunks
per chain (``CHUNK_SITES`` down to one row), odd and unequal extents, 2 to 4 dimensions and
1 or 2 numba threads, and run the split-grid input (an already halo-padded array) next to the
periodic one, which must give the same numbers bit for bit."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

import numba  # noqa: E402

from kernels.backends import eager, fused, u1_kernels  # noqa: E402
from kernels.theories.u1 import U1Gauge  # noqa: E402
from parallel import halo_pad, single_rank_grid  # noqa: E402
from parallel.rng import SiteRNG  # noqa: E402

SHAPES = [(6, 10), (5, 7), (3, 4, 6), (4, 2, 4, 6), (2, 3, 2, 5)]


@pytest.fixture
def chunk_sites(monkeypatch, request):
    monkeypatch.setattr(u1_kernels, "CHUNK_SITES", request.param)
    fused._u1_plan.cache_clear()
    yield request.param
    fused._u1_plan.cache_clear()


@pytest.mark.parametrize("chunk_sites", [1, 7, 16384], indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_force_and_density_match_eager(shape, chunk_sites, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("numba has one thread here")
    grid = single_rank_grid(shape)
    th = U1Gauge(grid, 1.7)
    theta = 3.0 * th.hot_start(SiteRNG(5), 0, 3)  # unwrapped angles too
    old = numba.get_num_threads()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # fused._threads follows torch's thread count
    try:
        f = fused.u1_kernel(theta, grid, th.planes, 1.7, force=True)
        d = fused.u1_kernel(theta, grid, th.planes, 1.0, force=False)
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(old)
    f_ref = eager.u1_force(theta, grid, th.planes, 1.7)
    d_ref = eager.u1_action_density(theta, grid, th.planes)
    assert float((f - f_ref).abs().max()) < 1e-13 * max(1.0, float(f_ref.abs().max()))
    assert float((d - d_ref).abs().max()) < 1e-13 * max(1.0, float(d_ref.abs().max()))


@pytest.mark.parametrize("chunk_sites", [1, 16384], indirect=True)
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
def test_halo_padded_input_gives_the_periodic_result(shape, chunk_sites):
    """The split-grid path reads rows of a halo-padded array (``wrap`` False, identity row
    map); on one rank its halo is the periodic one, so the result is the same, bit for bit."""
    grid = single_rank_grid(shape)
    th = U1Gauge(grid, 2.0)
    theta = th.hot_start(SiteRNG(6), 0, 2)
    b, nd = theta.shape[:2]
    local = tuple(shape)
    plan = fused._u1_plan(local, tuple(th.planes), True)
    rows_p, rows_o, strides, mus, nus, pl, sg, ot, geo = plan
    padded = halo_pad(theta, grid, 1, first=2).contiguous().reshape(b, nd, -1).numpy()
    flat = theta.contiguous().reshape(b, nd, -1).numpy()
    outs = []
    for src, srow, wrap in (
        (flat, fused._source_rows(local), True),
        (padded, fused._identity_rows(local), False),
    ):
        out = torch.empty(b, nd, theta[0, 0].numel(), dtype=torch.float64).numpy()
        big = u1_kernels.force(
            src,
            srow,
            wrap,
            mus,
            nus,
            pl,
            sg,
            ot,
            rows_p,
            rows_o,
            local[-1],
            strides,
            2.0,
            geo,
            3,
            out,
        )
        assert big == 0
        outs.append(out)
    assert (outs[0] == outs[1]).all()
    ref = eager.u1_force(theta, grid, th.planes, 2.0).reshape(b, nd, -1).numpy()
    assert abs(outs[0] - ref).max() < 1e-13
