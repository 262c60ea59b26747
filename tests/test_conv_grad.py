"""``LatticeConv``'s custom backward (grid-independent input gradient) against torch's own
circular convolution and finite differences: input, weight and bias gradients, ``at_sites``,
antiperiodic boundaries, 1D/2D/3D (torch kernels) and 4D (generic), and double backward.
Bitwise equality of the gradients on 1, 2, 4 ranks: tests/mpi/test_conv_grad_mpi.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from parallel import LatticeConv, single_rank_grid


def reference(x: torch.Tensor, conv: LatticeConv, signs: list[int]) -> torch.Tensor:
    """``y[n] = b + sum_d w[d] x[n + d - r]`` by rolling the global field (sign flips where a
    roll wraps an antiperiodic axis), independent of the halo code and of the custom backward."""
    k, nd = conv.kernel_size, x.ndim - 2
    r = k // 2
    y = conv.bias.view((1, -1) + (1,) * nd) + torch.zeros(())
    for d in itertools.product(range(k), repeat=nd):
        term = x
        for mu, dm in enumerate(d):
            s = dm - r
            if s == 0:
                continue
            n = x.shape[2 + mu]
            rolled = torch.roll(term, -s, dims=2 + mu)
            if signs[mu] < 0:  # sites whose neighbour n + s wrapped around get the sign
                idx = torch.arange(n)
                wrapped = ((idx + s) >= n) | ((idx + s) < 0)
                flip = torch.where(wrapped, -1.0, 1.0).to(x.dtype)
                rolled = rolled * flip.view((-1,) + (1,) * (nd - 1 - mu))
            term = rolled
        y = y + torch.einsum("oi,bi...->bo...", conv.weight[(slice(None),) * 2 + d], term)
    return y


CASES = [((6,), "periodic"), ((4, 6), "periodic"), ((4, 6), "antiperiodic"), ((2, 4, 4), None)]
CASES += [((2, 2, 2, 4), "antiperiodic")]


@pytest.mark.parametrize("shape,bc", CASES, ids=str)
def test_gradients_equal_those_of_an_independent_convolution(shape, bc):
    grid = single_rank_grid(shape)
    torch.manual_seed(5)
    signs = [1] * (len(shape) - 1) + [-1 if bc == "antiperiodic" else 1]
    names = ["periodic" if s > 0 else "antiperiodic" for s in signs]  # time axis last
    conv = LatticeConv(grid, 2, 3, 3, bc=names, dtype=torch.float64)
    x = torch.randn((2, 2, *shape), dtype=torch.float64, requires_grad=True)
    gy = torch.randn((2, 3, *shape), dtype=torch.float64)
    y, y_ref = conv(x), reference(x, conv, signs)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    params = [x, conv.weight, conv.bias]
    got = torch.autograd.grad((gy * y).sum(), params)
    ref = torch.autograd.grad((gy * y_ref).sum(), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    n = math.prod(shape)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(2))[: n // 2]
    some = conv.at_sites(x, index)
    g_some = torch.autograd.grad((gy.reshape(2, 3, n)[:, :, index] * some).sum(), params)
    ref_some = reference(x, conv, signs).reshape(2, 3, n)[:, :, index]
    g_ref = torch.autograd.grad((gy.reshape(2, 3, n)[:, :, index] * ref_some).sum(), params)
    for a, b in zip(g_some, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_double_backward_against_finite_differences():
    grid = single_rank_grid((4, 4))
    torch.manual_seed(1)
    conv = LatticeConv(grid, 1, 2, 3, bc=["periodic", "antiperiodic"], dtype=torch.float64)
    x = torch.randn((1, 1, 4, 4), dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 5, 10, 15])
    w = conv.weight.detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: _fn_params(conv, x, w, b, index), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x, w, b: _fn_params(conv, x, w, b, index), (x, w, b))


def _fn_params(conv: LatticeConv, x, w, b, index) -> torch.Tensor:
    """The layer's output as a function of explicit weight and bias tensors."""
    from parallel.conv import _LatticeConvFn

    full = _LatticeConvFn.apply(x, w, b, conv, None)
    some = _LatticeConvFn.apply(x, w, b, conv, index)
    return torch.tanh(full).sum() + torch.sin(some).sum()
