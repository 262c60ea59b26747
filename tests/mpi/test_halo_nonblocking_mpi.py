"""Non-blocking halo exchange and shift (``halo_begin``/``halo_end``, ``shift_begin``/
``shift_end``) on 1, 2 and 4 ranks, against ``numpy.roll`` / ``numpy.take(mode="wrap")`` of
the global field (with the antiperiodic sign where a step crosses the global boundary).

Also: several exchanges in flight at once, the padded interior valid before the faces
arrive, the adjoint identity of the padded result, and pooled buffers (no new allocation
after the first call of a kind).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from mpi4py import MPI

from parallel import (
    ProcessGrid,
    allgather_field,
    global_sum,
    halo_begin,
    halo_end,
    halo_pad,
    halo_pad_adjoint,
    shift,
    shift_begin,
    shift_end,
)
from parallel.comm import POOL

SIZE = MPI.COMM_WORLD.Get_size()
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],  # (1, 1, 1, 2) splits the (antiperiodic) time axis
    4: [(1, 1, 1, 4), (2, 2, 1, 1), (1, 2, 1, 2), (2, 1, 1, 2)],
}[SIZE]
SHAPE = (4, 4, 2, 8)


@pytest.fixture(params=GRIDS, ids=lambda g: "g" + "x".join(map(str, g)))
def grid(request):
    g = ProcessGrid(SHAPE, request.param)
    yield g
    g.free()


def global_field(shape, seed=0, complex_=True):
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(2, 3, *shape, 2))
    if complex_:
        full = full + 1j * rng.normal(size=full.shape)
    return full


def local_block(full, grid, first=2):
    block = full[(slice(None),) * first + grid.local_slices()]
    return torch.from_numpy(np.ascontiguousarray(block))


def rolled(full, mu, k, antiperiodic, first=2):
    """``x[n + k e_mu]`` on the global lattice, times -1 where the step wraps (antiperiodic)."""
    ref = np.roll(full, -k, axis=first + mu)
    if antiperiodic:
        idx = np.arange(full.shape[first + mu]) + k
        sign = np.where((idx < 0) | (idx >= full.shape[first + mu]), -1.0, 1.0)
        view = [1] * full.ndim
        view[first + mu] = -1
        ref = ref * sign.reshape(view)
    return ref


def padded_reference(full, grid, widths, antiperiodic, first=2):
    """The wrapped global field around this rank's block: ``lo`` below, ``hi`` above."""
    ref = full
    for mu, (lo, hi) in enumerate(widths):
        idx = np.arange(grid.offset[mu] - lo, grid.offset[mu] + grid.local_shape[mu] + hi)
        wrap = (idx < 0) | (idx >= grid.shape[mu])
        sign = np.where(wrap & antiperiodic, -1.0, 1.0)
        ref = np.take(ref, idx % grid.shape[mu], axis=first + mu)
        view = [1] * ref.ndim
        view[first + mu] = -1
        ref = ref * sign.reshape(view)
    return ref


@pytest.mark.parametrize("bc", ["periodic", "antiperiodic"])
def test_shift_begin_end_equals_roll_all_axes_in_flight(grid, bc):
    full = global_field(grid.shape)
    x = local_block(full, grid)
    for k in (1, -1, 2):
        axes = [mu for mu in range(4) if abs(k) <= grid.local_shape[mu]]
        handles = [shift_begin(x, grid, mu, k, first=2, bc=bc) for mu in axes]  # all posted
        for mu, h in zip(axes, handles):
            got = allgather_field(shift_end(h), grid, first=2).numpy()
            np.testing.assert_array_equal(got, rolled(full, mu, k, bc == "antiperiodic"))


def test_shift_numpy_and_blocking_agree(grid):
    full = global_field(grid.shape, seed=3, complex_=False)
    x = local_block(full, grid)
    for mu in range(4):
        got = shift_end(shift_begin(x.numpy(), grid, mu, -1, first=2, bc="antiperiodic"))
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(
            got, shift(x, grid, mu, -1, first=2, bc="antiperiodic").numpy()
        )


@pytest.mark.parametrize("bc", ["periodic", "antiperiodic"])
@pytest.mark.parametrize("width", [1, ((1, 2), (0, 1), (1, 1), (2, 0))])
def test_halo_begin_end_equals_wrapped_field(grid, bc, width):
    full = global_field(grid.shape, seed=1)
    x = local_block(full, grid)
    widths = [(width, width)] * 4 if isinstance(width, int) else list(width)
    if any(max(w) > n for w, n in zip(widths, grid.local_shape)):
        pytest.skip("halo wider than the local extent on this grid")
    ref = padded_reference(full, grid, widths, bc == "antiperiodic")
    h1 = halo_begin(x, grid, width, first=2, bc=bc)
    h2 = halo_begin(2 * x, grid, width, first=2, bc=bc)  # two exchanges in flight at once
    # the interior and the halos of unsplit axes are valid before the faces arrive
    inner = [slice(None)] * 2
    for mu, (lo, _) in enumerate(widths):
        split = grid.grid[mu] > 1
        inner.append(slice(lo, lo + grid.local_shape[mu]) if split else slice(None))
    inner = tuple(inner)
    np.testing.assert_array_equal(h1.padded[inner].numpy(), ref[inner])
    got1, got2 = halo_end(h1), halo_end(h2)
    np.testing.assert_array_equal(got1.numpy(), ref)
    np.testing.assert_array_equal(got2.numpy(), 2 * ref)
    np.testing.assert_array_equal(halo_pad(x, grid, width, first=2, bc=bc).numpy(), ref)
    # adjoint identity <H x, y> = <x, H^T y> with y different on every rank
    y = torch.from_numpy(np.random.default_rng(7 + grid.rank).normal(size=tuple(got1.shape)))
    y = y.to(got1.dtype)
    lhs = complex(global_sum((got1 * y.conj()).sum(), grid))
    adj = halo_pad_adjoint(y, grid, width, first=2, bc=bc)
    rhs = complex(global_sum((x * adj.conj()).sum(), grid))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_halo_begin_with_grad_is_autograd_path(grid):
    full = global_field(grid.shape, seed=2, complex_=False)
    x = local_block(full, grid).requires_grad_(True)
    out = halo_end(halo_begin(x, grid, 1, first=2, bc="antiperiodic"))
    y = torch.from_numpy(np.random.default_rng(11 + grid.rank).normal(size=tuple(out.shape)))
    loss = global_sum((out * y).sum(), grid)
    (g,) = torch.autograd.grad(loss, x)
    ref = halo_pad_adjoint(y, grid, 1, first=2, bc="antiperiodic")
    torch.testing.assert_close(g, ref, rtol=0, atol=1e-13)


def test_buffers_are_pooled(grid):
    full = global_field(grid.shape, seed=4)
    x = local_block(full, grid)
    halo_pad(x, grid, 1, first=2)
    for mu in range(4):
        shift(x, grid, mu, 1, first=2)
    before = POOL.allocations
    for _ in range(5):
        halo_pad(x, grid, 1, first=2)
        for mu in range(4):
            shift(x, grid, mu, 1, first=2)
    assert POOL.allocations == before, "halo/shift allocated message buffers after warm-up"


def test_lazy_conjugate_and_negative_views(grid):
    """Tensors with torch's lazy conj/neg bits (e.g. ``dagger`` in autograd) are exchanged
    with the bit resolved, contiguous or not."""
    full = global_field(grid.shape, seed=5)
    x = local_block(full, grid)
    for view, ref_full in ((x.conj(), full.conj()), (-x.conj(), -full.conj())):
        for mu in range(4):
            got = allgather_field(shift(view, grid, mu, 1, first=2), grid, first=2).numpy()
            np.testing.assert_array_equal(got, rolled(ref_full, mu, 1, False))
        ref = padded_reference(ref_full, grid, [(1, 1)] * 4, False)
        np.testing.assert_array_equal(halo_pad(view, grid, 1, first=2).numpy(), ref)


def test_bench_halo_fraction_alternate_table(capsys, monkeypatch):
    """benchmarks/bench_halo_fraction.py --alternate (smoke test, tiny lattice): one row per
    round with positive timings and efficiency = 1 rank / N ranks = shared x comm; timings
    are measured by the script, never asserted here."""
    if SIZE < 2:
        pytest.skip("--alternate needs at least 2 ranks")
    import bench_halo_fraction  # benchmarks/ is on pytest's pythonpath

    import kernels.backends as kb
    import parallel.comm as comm_mod
    import parallel.halo as halo_mod
    import parallel.shifts as shifts_mod

    # main() installs its timers and sets the backend: undone after this test
    for module, name in ((halo_mod, "_post"), (shifts_mod, "_post"), (comm_mod, "waitall")):
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(kb, "_active", kb._active)
    bench_halo_fraction.main(
        ["--local", "4", "4", "4", "4", "--steps", "1", "--traj", "2", "--alternate"]
    )
    out = capsys.readouterr().out
    if MPI.COMM_WORLD.rank != 0:
        assert out == ""
        return
    num = r"(\d+\.\d+)"
    row = r"^\s+(\d+)" + rf"\s+{num}" * 7 + "%$"
    rows = re.findall(row, out, re.M)
    assert [r[0] for r in rows] == ["0", "1"], out

    def ratio_of(printed: str, a: str, b: str) -> bool:
        """The printed ratio (2 decimals) is a / b of the printed times (4 decimals)."""
        x, y = float(a), float(b)
        return abs(float(printed) - x / y) <= 0.0051 + x / y * 5.1e-5 * (1 / x + 1 / y)

    for _, one, both, wall, eff, shared, comm_eff, _halo in rows:
        assert min(float(one), float(both), float(wall)) > 0
        assert ratio_of(eff, one, wall), out
        assert ratio_of(shared, one, both), out
        assert ratio_of(comm_eff, both, wall), out
    assert f"ranks={SIZE}" in out and "med" in out
