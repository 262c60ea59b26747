"""The torch.roll fast path of :func:`parallel.shifts.shift` (periodic axis held by one rank)
gives the same bits as the pooled exchange path, with the adjoint shift as its gradient."""

from __future__ import annotations

import pytest
import torch

from parallel import single_rank_grid
from parallel.shifts import _shift_raw, shift


@pytest.mark.parametrize("k", [1, -1, 2, -3, 5])
@pytest.mark.parametrize("mu", [0, 1])
def test_roll_path_equals_pooled_path(mu, k):
    grid = single_rank_grid((5, 6))
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    fast = shift(x, grid, mu, k, first=2)
    assert torch.equal(fast, _shift_raw(x, grid, mu, k, 2, 1))
    # convention: the field at n + k e_mu is brought to n
    n = [1, 4]
    m = list(n)
    m[mu] = (m[mu] + k) % grid.shape[mu]
    assert torch.equal(fast[..., n[0], n[1]], x[..., m[0], m[1]])
    xr = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    (grad,) = torch.autograd.grad(shift(xr, grid, mu, k, first=2), xr, g, create_graph=True)
    assert torch.equal(grad, _shift_raw(g, grid, mu, -k, 2, 1))  # adjoint: the opposite shift


def test_antiperiodic_and_too_long_shifts_keep_their_rules():
    grid = single_rank_grid((4, 4))
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    y = shift(x, grid, 1, 1, first=1, bc=[1, -1])
    assert torch.equal(y[:, :, :3], x[:, :, 1:]) and torch.equal(y[:, :, 3], -x[:, :, 0])
    with pytest.raises(Exception, match="longer than the local extent"):
        shift(x, grid, 0, 5, first=1)
