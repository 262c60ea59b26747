"""The compiled direct 2D convolution (parallel/conv_jit.py) against ``torch``'s ``conv2d``,
its independence of the block a site lies in (what makes it the same on every process grid),
and where :func:`parallel.conv._valid_conv` must not use it."""

from __future__ import annotations

import pytest
import torch

from parallel import LatticeConv, single_rank_grid
from parallel import conv as conv_mod

pytest.importorskip("numba")
from parallel import conv_jit  # noqa: E402


def _case(b, ci, co, k, h, w, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(b, ci, h + k - 1, w + k - 1, generator=g, dtype=torch.float64)
    wt = torch.randn(co, ci, k, k, generator=g, dtype=torch.float64)
    bs = torch.randn(co, generator=g, dtype=torch.float64) if bias else None
    return xp, wt, bs


def _jit(xp, wt, bs):
    out = torch.empty(
        xp.shape[0],
        wt.shape[0],
        xp.shape[2] - wt.shape[2] + 1,
        xp.shape[3] - wt.shape[3] + 1,
        dtype=torch.float64,
    )
    b = torch.empty(0, dtype=torch.float64) if bs is None else bs
    conv_jit.valid_conv2d(xp.numpy(), wt.numpy(), b.numpy(), out.numpy())
    return out


@pytest.mark.parametrize(
    "shape",
    [
        (5, 1, 2, 3, 18, 18),
        (3, 2, 8, 3, 16, 16),
        (2, 3, 5, 5, 7, 9),
        (2, 4, 4, 1, 6, 6),
        (1, 2, 3, 3, 1, 11),
        (2, 1, 1, 3, 5, 1),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(shape, bias):
    xp, wt, bs = _case(*shape, bias)
    ref = torch.nn.functional.conv2d(xp, wt, bs)
    got = _jit(xp, wt, bs)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-13 * max(1.0, float(ref.abs().max()))


def test_a_site_does_not_depend_on_its_block():
    """The output of a sub-block (as a rank of a split grid computes it) is bitwise the same
    as that part of the whole block's output: a fixed sum per site, no vector/tail split."""
    xp, wt, bs = _case(2, 3, 4, 3, 13, 17, True, seed=3)
    whole = _jit(xp, wt, bs)
    for r0, r1, c0, c1 in [
        (0, 13, 0, 17),
        (2, 9, 0, 17),
        (0, 13, 5, 11),
        (4, 5, 1, 16),
        (3, 12, 7, 8),
    ]:
        part = _jit(xp[:, :, r0 : r1 + 2, c0 : c1 + 2].contiguous(), wt, bs)
        assert torch.equal(part, whole[:, :, r0:r1, c0:c1])


def test_valid_conv_uses_it_only_without_a_graph(monkeypatch):
    grid = single_rank_grid((6, 6))
    xp, wt, bs = _case(2, 1, 2, 3, 6, 6, True)
    calls = []
    real = conv_jit.valid_conv2d
    monkeypatch.setattr(conv_jit, "valid_conv2d", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(conv_mod, "_CONV_JIT", [conv_jit])
    with torch.no_grad():
        conv_mod._valid_conv(xp, wt, bs, grid)
    assert calls == [1]
    x = xp.clone().requires_grad_(True)
    y = conv_mod._valid_conv(x, wt, bs, grid)  # a graph is wanted: torch's convolution
    assert calls == [1] and y.grad_fn is not None
    wide = torch.randn(40, 40, 1, 1, dtype=torch.float64)  # above CONV_JIT_MAX_MACS
    conv_mod._valid_conv(torch.randn(1, 40, 3, 3, dtype=torch.float64), wide, None, grid)
    conv_mod._valid_conv(xp.float(), wt.float(), bs.float(), grid)  # float32: torch
    assert calls == [1]


def test_switch_off(monkeypatch):
    monkeypatch.setenv("TRIVHMC_CONV_JIT", "0")
    monkeypatch.setattr(conv_mod, "_CONV_JIT", [])
    assert conv_mod._conv_jit() is None
    monkeypatch.setattr(conv_mod, "_CONV_JIT", [])


def test_lattice_conv_gradients_with_the_compiled_loop():
    """LatticeConv's forward and input gradient (both through the compiled loop on one rank)
    against a circular torch convolution and its autograd."""
    torch.manual_seed(2)
    grid = single_rank_grid((6, 10))
    layer = LatticeConv(grid, 2, 3, 3, bias=True, dtype=torch.float64)
    x = torch.randn(2, 2, 6, 10, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    ref_in = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.conv2d(
        torch.nn.functional.pad(ref_in, (1, 1, 1, 1), mode="circular"), layer.weight, layer.bias
    )
    assert torch.allclose(y, ref, rtol=0, atol=1e-13)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref, ref_in, g)
    assert torch.allclose(gx, gref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", [(5, 1, 2, 3, 18, 18), (3, 2, 8, 3, 16, 16), (2, 3, 5, 5, 7, 9)])
def test_weight_gradient_matches_torch(shape):
    b, ci, co, k, h, w = shape
    xp, wt, _ = _case(*shape, False, seed=4)
    gy = torch.randn(b, co, h, w, dtype=torch.float64)
    ref = torch.nn.grad.conv2d_weight(xp, wt.shape, gy)
    gw = torch.empty(wt.shape, dtype=torch.float64)
    conv_jit.weight_grad2d(xp.numpy(), gy.numpy(), gw.numpy())
    assert float((gw - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_lattice_conv_weight_gradient_with_the_compiled_loop(monkeypatch):
    calls = []
    real = conv_jit.weight_grad2d
    monkeypatch.setattr(conv_jit, "weight_grad2d", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(conv_mod, "_CONV_JIT", [conv_jit])
    torch.manual_seed(5)
    grid = single_rank_grid((6, 10))
    layer = LatticeConv(grid, 3, 2, 3, bias=True, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    g = torch.randn(2, 2, 6, 10, dtype=torch.float64)
    gw, gb = torch.autograd.grad(layer(x), [layer.weight, layer.bias], g)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    rw, rb = torch.autograd.grad(torch.nn.functional.conv2d(xp, w, b), [w, b], g)
    assert torch.allclose(gw, rw, rtol=0, atol=1e-12) and torch.allclose(gb, rb, rtol=0, atol=1e-12)
    assert calls == [1]
    wide = LatticeConv(grid, 3, 3, 3, bias=False, dtype=torch.float64)  # 3 outputs: torch's
    torch.autograd.grad(wide(x).sum(), [wide.weight])
    assert calls == [1]


@pytest.mark.parametrize("shape,k", [((8, 6), 3), ((6, 10), 1), ((4, 4, 4), 3)])
def test_at_sites_loop_matches_torch_path_and_not_the_subset(monkeypatch, shape, k):
    """``LatticeConv.at_sites`` through the compiled loop equals the torch pairwise path to
    rounding, and a site's value does not depend on which other sites are asked for."""
    torch.manual_seed(7)
    grid = single_rank_grid(shape)
    layer = LatticeConv(grid, 3, 2, k, bias=True, dtype=torch.float64)
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    n = x[0, 0].numel()
    index = torch.arange(0, n, 3)
    calls = []
    real = conv_jit.conv_at_sites
    monkeypatch.setattr(conv_jit, "conv_at_sites", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(conv_mod, "_CONV_JIT", [conv_jit])
    with torch.no_grad():
        got = layer.at_sites(x, index)
        sub = layer.at_sites(x, index[1::2].clone())
    assert calls == [1, 1]
    assert torch.equal(sub, got[:, :, 1::2])
    monkeypatch.setattr(conv_mod, "_CONV_JIT", [None])
    with torch.no_grad():
        ref = layer.at_sites(x, index)
    assert calls == [1, 1]
    assert torch.allclose(got, ref, rtol=0, atol=1e-13)
    full = layer(x).reshape(2, 2, -1)[:, :, index]
    assert torch.allclose(got, full, rtol=0, atol=1e-13)
