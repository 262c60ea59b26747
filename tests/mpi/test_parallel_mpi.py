"""The distributed lattice layer equals the single-rank computation (run with 1, 2, 4 ranks).

Every check builds the same global input on every rank, runs the distributed operation on the
local block, gathers, and compares with the single-rank result (``torch.roll``, circular
``torch.nn.functional.conv*``, or the same code on a ``single_rank_grid``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from parallel import (
    GridError,
    HaloError,
    LatticeConv,
    ProcessGrid,
    allgather_field,
    allreduce_gradients,
    choose_grid,
    gather_to_root,
    global_max,
    global_sum,
    halo_pad,
    halo_pad_adjoint,
    lattice_mean,
    lattice_sum,
    scatter_from_root,
    shift,
    single_rank_grid,
)

SIZE = MPI.COMM_WORLD.Get_size()

GRIDS_2D = {1: [[1, 1]], 2: [[2, 1], [1, 2]], 4: [[4, 1], [2, 2], [1, 4]]}[SIZE]
GRIDS_4D = {
    1: [[1, 1, 1, 1]],
    2: [[1, 1, 1, 2], [2, 1, 1, 1]],
    4: [[1, 1, 1, 4], [2, 2, 1, 1], [1, 2, 1, 2]],
}[SIZE]
# lattices whose local extents are odd on some grid (12 / 4 = 3, 6 / 2 = 3, 10 / 2 = 5)
CASES = [((12, 12), g) for g in GRIDS_2D] + [
    ((6, 10), g) for g in GRIDS_2D if g[1] != 4 and g[0] != 4
]
CASES += [((4, 2, 2, 4), g) for g in GRIDS_4D if all(s % n == 0 for s, n in zip((4, 2, 2, 4), g))]
CASES += [((4, 4, 2, 4), g) for g in GRIDS_4D]


def case_id(case):
    return f"L{'x'.join(map(str, case[0]))}-g{'x'.join(map(str, case[1]))}"


def local_block(full: np.ndarray, grid: ProcessGrid, first: int) -> torch.Tensor:
    return torch.from_numpy(
        np.ascontiguousarray(full[(slice(None),) * first + grid.local_slices()])
    )


def global_field(shape, lead=(2, 3), trail=(2,), seed=0, complex_=False):
    rng = np.random.default_rng(seed)
    full = rng.normal(size=lead + tuple(shape) + trail)
    if complex_:
        full = full + 1j * rng.normal(size=full.shape)
    return full


def bc_sign_array(shape, mu, k, first, ndim_total):
    """Sign of an antiperiodic shift by k along mu on the global lattice."""
    idx = np.arange(shape[mu]) + k
    s = np.where((idx < 0) | (idx >= shape[mu]), -1.0, 1.0)
    view = [1] * ndim_total
    view[first + mu] = -1
    return s.reshape(view)


@pytest.fixture(params=CASES, ids=case_id)
def grid(request):
    shape, g = request.param
    return ProcessGrid(shape, g)


@pytest.mark.parametrize("bc", ["periodic", "antiperiodic"])
@pytest.mark.parametrize("complex_", [False, True])
def test_shift_equals_roll(grid, bc, complex_):
    full = global_field(grid.shape, complex_=complex_)
    x = local_block(full, grid, 2)
    for mu in range(grid.ndim):
        for k in (1, -1, 2, -2):
            if abs(k) > grid.local_shape[mu]:
                with pytest.raises(HaloError, match="local extent"):
                    shift(x, grid, mu, k, first=2, bc=bc)
                continue
            got = allgather_field(shift(x, grid, mu, k, first=2, bc=bc), grid, first=2).numpy()
            ref = np.roll(full, -k, axis=2 + mu)
            if bc == "antiperiodic":
                ref = ref * bc_sign_array(grid.shape, mu, k, 2, full.ndim)
            np.testing.assert_array_equal(got, ref)
            # numpy input gives the same
            got_np = allgather_field(shift(x.numpy(), grid, mu, k, first=2, bc=bc), grid, first=2)
            np.testing.assert_array_equal(got_np, ref)


@pytest.mark.parametrize("bc", ["periodic", "antiperiodic"])
def test_halo_values_and_adjoint_identity(grid, bc):
    full = global_field(grid.shape)
    x = local_block(full, grid, 2)
    w = 1
    hx = halo_pad(x, grid, w, first=2, bc=bc)
    # the padded block equals the wrapped global field (with signs) around this domain
    ref = full
    for mu in range(grid.ndim):
        idx = np.arange(grid.offset[mu] - w, grid.offset[mu] + grid.local_shape[mu] + w)
        sign = np.where(
            (idx < 0) | (idx >= grid.shape[mu]), -1.0 if bc == "antiperiodic" else 1.0, 1.0
        )
        ref = np.take(ref, idx % grid.shape[mu], axis=2 + mu)
        view = [1] * ref.ndim
        view[2 + mu] = -1
        ref = ref * sign.reshape(view)
    np.testing.assert_array_equal(hx.numpy(), ref)
    # <H x, y> = <x, H^T y> with random y on the padded shape (different on every rank)
    y = torch.from_numpy(np.random.default_rng(100 + grid.rank).normal(size=tuple(hx.shape)))
    lhs = float(global_sum((hx * y).sum(), grid))
    rhs = float(global_sum((x * halo_pad_adjoint(y, grid, w, first=2, bc=bc)).sum(), grid))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_asymmetric_and_partial_halo(grid):
    full = global_field(grid.shape, lead=(1,), trail=())
    x = local_block(full, grid, 1)
    widths = [(1, 0)] + [(0, 1)] * (grid.ndim - 1)
    hx = halo_pad(x, grid, widths, first=1, axes=[0, grid.ndim - 1])
    exp_shape = [1] + list(grid.local_shape)
    exp_shape[1] += 1
    exp_shape[grid.ndim] += 1 if grid.ndim > 1 else 0
    assert list(hx.shape) == exp_shape
    y = torch.from_numpy(np.random.default_rng(7 + grid.rank).normal(size=tuple(hx.shape)))
    lhs = float(global_sum((hx * y).sum(), grid))
    rhs = float(
        global_sum(
            (x * halo_pad_adjoint(y, grid, widths, first=1, axes=[0, grid.ndim - 1])).sum(), grid
        )
    )
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_autograd_halo_backward_is_adjoint(grid):
    full = global_field(grid.shape)
    x = local_block(full, grid, 2).requires_grad_(True)
    y = torch.from_numpy(
        np.random.default_rng(3 + grid.rank).normal(
            size=tuple(s + (2 if 2 <= i < 2 + grid.ndim else 0) for i, s in enumerate(x.shape))
        )
    )
    loss = global_sum((halo_pad(x, grid, 1, first=2, bc="antiperiodic") * y).sum(), grid)
    (g,) = torch.autograd.grad(loss, x)
    ref = halo_pad_adjoint(y, grid, 1, first=2, bc="antiperiodic")
    torch.testing.assert_close(g, ref, rtol=0, atol=1e-13)


def test_conv_equals_circular_conv(grid):
    torch.manual_seed(0)
    cin, cout, k = 2, 3, 3
    conv = LatticeConv(grid, cin, cout, k)
    full = global_field(grid.shape, lead=(2, cin), trail=())
    x = local_block(full, grid, 2)
    got = allgather_field(conv(x), grid, first=2).detach()
    xg = torch.from_numpy(full)
    if grid.ndim <= 3:
        fn = getattr(torch.nn.functional, f"conv{grid.ndim}d")
        xp = torch.nn.functional.pad(xg, (k // 2,) * (2 * grid.ndim), mode="circular")
        ref = fn(xp, conv.weight.detach(), conv.bias.detach())
    else:  # 4D: brute-force sum over kernel offsets with torch.roll
        ref = torch.zeros((2, cout) + grid.shape, dtype=xg.dtype)
        import itertools

        for d in itertools.product(range(k), repeat=grid.ndim):
            rolled = xg
            for mu, dm in enumerate(d):
                rolled = torch.roll(rolled, -(dm - k // 2), dims=2 + mu)
            ref += torch.einsum(
                "oi,bi...->bo...", conv.weight.detach()[(slice(None),) * 2 + d], rolled
            )
        ref += conv.bias.detach().view((1, -1) + (1,) * grid.ndim)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


class _Net(torch.nn.Module):
    """Shifts, two convolutions, a nonlinearity and a reduction: a miniature flow."""

    def __init__(self, grid):
        super().__init__()
        self.grid = grid
        self.c1 = LatticeConv(grid, 1, 4, 3)
        self.c2 = LatticeConv(grid, 4, 1, 3)

    def forward(self, phi):
        g = self.grid
        hop = sum(shift(phi, g, mu, 1, first=1) for mu in range(g.ndim))
        h = torch.tanh(self.c1((phi * hop).unsqueeze(1)))
        out = self.c2(h).squeeze(1) + shift(phi, g, 0, -1, first=1) ** 2
        return lattice_sum(out * phi, g, first=1).sum()


def _loss_and_grads(grid, full, state):
    net = _Net(grid)
    net.load_state_dict(state)
    x = local_block(full, grid, 1).requires_grad_(True)
    loss = net(x)
    net.zero_grad()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    # double backward: gradient of |dL/dx|^2 wrt parameters (force-matching style)
    fnorm = global_sum((gx**2).sum(), grid)
    fnorm.backward()
    allreduce_gradients(net, grid)
    return (
        float(loss.detach()),
        allgather_field(gx.detach(), grid, first=1),
        {n: p.grad.clone() for n, p in net.named_parameters()},
    )


def test_gradients_through_chain_equal_single_rank(grid):
    torch.manual_seed(1)
    state = _Net(single_rank_grid(grid.shape)).state_dict()
    full = global_field(grid.shape, lead=(2,), trail=())
    loss, gx, pgrads = _loss_and_grads(grid, full, state)
    ref_loss, ref_gx, ref_p = _loss_and_grads(single_rank_grid(grid.shape), full, state)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-12, atol=1e-12)
    for name in ref_p:
        torch.testing.assert_close(pgrads[name], ref_p[name], rtol=1e-11, atol=1e-12)


def test_reductions_gather_scatter(grid):
    full = global_field(grid.shape, lead=(3,), trail=(2,))
    x = local_block(full, grid, 1)
    np.testing.assert_allclose(
        lattice_sum(x, grid, first=1).numpy(),
        full.sum(axis=(1, 2) if grid.ndim == 1 else tuple(range(1, full.ndim))),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        float(lattice_mean(x, grid, first=1).sum()),
        full.mean(axis=tuple(range(1, full.ndim))).sum(),
        rtol=1e-12,
    )
    assert float(global_max(x.max(), grid)) == full.max()
    g = gather_to_root(x, grid, first=1)
    if grid.rank == 0:
        np.testing.assert_array_equal(g.numpy(), full)
    else:
        assert g is None
    back = scatter_from_root(torch.from_numpy(full) if grid.rank == 0 else None, grid, first=1)
    torch.testing.assert_close(back, x, rtol=0, atol=0)


def test_replicas_and_gradient_average():
    if SIZE < 2:
        pytest.skip("needs 2 or more ranks")
    grid = ProcessGrid((8, 6), replicas=2)
    assert grid.replicas == 2 and grid.size == SIZE // 2
    p = torch.nn.Parameter(torch.zeros(3))
    module = torch.nn.Module()
    module.p = p
    # each rank contributes 1 + replica: sum over the domain, average over replicas
    p.grad = torch.full((3,), 1.0 + grid.replica)
    allreduce_gradients(module, grid)
    expected = grid.size * (1.0 + 2.0) / 2
    torch.testing.assert_close(p.grad, torch.full((3,), expected))


def test_clear_errors():
    with pytest.raises(GridError, match="does not divide"):
        choose_grid((6, 6), 4, [4, 1])
    if SIZE > 1:
        with pytest.raises(GridError, match="does not divide"):
            ProcessGrid((5, 6), [SIZE, 1])
    with pytest.raises(GridError, match="ranks"):
        ProcessGrid((8, 8), [SIZE + 1, 1])
    if SIZE == 4:
        with pytest.raises(GridError, match="no process grid"):
            ProcessGrid((3, 5))
    grid = ProcessGrid((8, 4 * SIZE), [1, SIZE])
    x = torch.zeros((1,) + grid.local_shape)
    with pytest.raises(HaloError, match="wider than the local extent"):
        halo_pad(x, grid, 5, first=1)
    with pytest.raises(HaloError, match="expected the local shape"):
        halo_pad(torch.zeros(1, 3, 3), grid, 1, first=1)
