"""kernels/flows/grid_stable.py: the same bits at a site whatever the size of the tensor (the
local block) it is computed in, and the values and derivatives of torch's functions."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.flows import grid_stable as gs

FUNCTIONS = {
    "log1p": (gs.log1p, torch.log1p),
    "softplus": (gs.softplus, torch.nn.functional.softplus),
    "sigmoid": (gs.sigmoid, torch.sigmoid),
    "silu": (gs.SiLU(), torch.nn.functional.silu),
    "gelu": (gs.GELU(), torch.nn.functional.gelu),
}


def _inputs(name: str, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4000, generator=gen, dtype=torch.float64) * 6.0
    if name == "log1p":  # the feature case (norms) and small arguments of both signs
        small = torch.randn(1000, generator=gen, dtype=torch.float64) * 1e-6
        x = torch.cat([x.abs() * 10.0, small])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_site_rounds_alike_in_every_block_size(name, dtype):
    fn, _ = FUNCTIONS[name]
    x = _inputs(name, dtype)
    full = fn(x)
    for n in (1, 3, 7, 9, 13, 17, 31, 33, 100):
        for start in range(0, 600, n):
            part = fn(x[start : start + n].clone())
            assert torch.equal(part, full[start : start + n]), f"{name} size {n} at {start}"
    strided = fn(x[::3])  # a non-contiguous view
    assert torch.equal(strided, full[::3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_values_and_derivatives_are_torchs(name, dtype):
    fn, ref = FUNCTIONS[name]
    x = _inputs(name, dtype).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    got, want = fn(x), ref(y)
    f64 = dtype == torch.float64  # a few ulp of the values (which reach ~60) and derivatives
    torch.testing.assert_close(got, want, rtol=4e-15 if f64 else 4e-7, atol=4e-15 if f64 else 2e-6)
    (g,) = torch.autograd.grad(got.sum(), x)
    (h,) = torch.autograd.grad(want.sum(), y)
    torch.testing.assert_close(g, h, rtol=1e-12 if f64 else 1e-5, atol=1e-14 if f64 else 1e-6)


def test_log1p_special_and_tiny_arguments():
    xs = [0.0, -0.0, 1e-300, -1e-300, 1e-17, 2.0**-53, -0.5, 1e-8, 1e308, 1e15]
    got = gs.log1p(torch.tensor(xs, dtype=torch.float64)).tolist()
    for x, g in zip(xs, got):
        assert g == pytest.approx(math.log1p(x), rel=4e-16, abs=0.0), x
    special = gs.log1p(torch.tensor([-1.0, math.inf, -2.0, math.nan], dtype=torch.float64))
    assert special[0] == -math.inf and special[1] == math.inf
    assert math.isnan(special[2]) and math.isnan(special[3])
