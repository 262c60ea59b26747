"""LatticeConv forward and input gradient (full lattice and ``at_sites``) bit for bit equal to
the single-rank ones on every process grid, including splits of the antiperiodic time axis:
what makes pulled-back flow forces, and so trivialized-HMC records, grid-independent."""

from __future__ import annotations

import math

import pytest
import torch
from mpi4py import MPI

from parallel import LatticeConv, ProcessGrid, single_rank_grid

SIZE = MPI.COMM_WORLD.Get_size()
GRIDS = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (2, 2), (1, 4)]}[SIZE]
SHAPE = (8, 8)


def same(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    ok = MPI.COMM_WORLD.allreduce(int(torch.equal(a, b)), op=MPI.MIN)
    assert ok, f"{what}: differs from the single-rank result (max {(a - b).abs().max():.3g})"


@pytest.mark.parametrize("g", GRIDS, ids=str)
def test_conv_gradients_bitwise_grid_independent(g):
    grid, ref = ProcessGrid(SHAPE, grid=g), single_rank_grid(SHAPE)
    torch.manual_seed(2)
    bc = ["periodic", "antiperiodic"]
    conv = LatticeConv(grid, 2, 3, 3, bc=bc, dtype=torch.float64)
    conv_ref = LatticeConv(ref, 2, 3, 3, bc=bc, dtype=torch.float64)
    conv_ref.load_state_dict(conv.state_dict())
    gen = torch.Generator().manual_seed(7)
    x = torch.randn((2, 2, *SHAPE), generator=gen, dtype=torch.float64)
    gy = torch.randn((2, 3, *SHAPE), generator=gen, dtype=torch.float64)
    sl = (slice(None), slice(None)) + grid.local_slices()
    xa, xb = x[sl].clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), conv_ref(xb)
    same("forward", ya, yb[sl])
    (ga,) = torch.autograd.grad(ya, xa, gy[sl].contiguous())
    (gb,) = torch.autograd.grad(yb, xb, gy)
    same("input gradient", ga, gb[sl])
    # at_sites on the even sites: the local flat indices of the same global sites
    n_loc = math.prod(grid.local_shape)
    coords = torch.stack(torch.unravel_index(torch.arange(n_loc), grid.local_shape), dim=1)
    glob = coords + torch.tensor(grid.offset)
    index = torch.nonzero(glob.sum(1) % 2 == 0).flatten()
    gidx = glob[index, 0] * SHAPE[1] + glob[index, 1]
    even = torch.nonzero(torch.arange(64) // 8 % 2 == torch.arange(64) % 2).flatten()
    sa, sb = conv.at_sites(xa, index), conv_ref.at_sites(xb, even)
    pos = torch.searchsorted(even, gidx)  # where my sites are among all even sites
    same("at_sites forward", sa, sb[:, :, pos])
    (ga,) = torch.autograd.grad(sa, xa, gy.reshape(2, 3, -1)[:, :, gidx])
    (gb,) = torch.autograd.grad(sb, xb, gy.reshape(2, 3, -1)[:, :, even])
    same("at_sites input gradient", ga, gb[sl])
    grid.free()
