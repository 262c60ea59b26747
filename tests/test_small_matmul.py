"""kernels.groups.su_n.mm: the accelerator form of the 3x3 product (a broadcast product summed
over the inner index) against torch.matmul, also through the eager SU(3) kernels and autograd.
The accelerator branch is forced on the CPU here by replacing the device test."""

from __future__ import annotations

import pytest
import torch

import kernels.backends as kb
import kernels.groups.su_n as su_n
from kernels.groups.su_n import dagger, mm
from kernels.theories.su3 import SU3Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG


@pytest.fixture
def broadcast(monkeypatch):
    monkeypatch.setattr(su_n, "_batched_blas", lambda a: False)


def test_cpu_uses_matmul_bitwise():
    a = torch.randn(5, 3, 3, dtype=torch.complex128)
    b = torch.randn(5, 3, 3, dtype=torch.complex128)
    assert torch.equal(mm(a, b), a @ b)


def test_broadcast_product_matches_matmul(broadcast):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(7, 2, 3, 3, dtype=torch.complex128, generator=g)
    b = torch.randn(7, 2, 3, 3, dtype=torch.complex128, generator=g)
    for x, y in ((a, b), (dagger(a), b), (a, dagger(b)), (a[:, 0], b[:, 1])):
        torch.testing.assert_close(mm(x, y), x @ y, rtol=0, atol=1e-14)
    r = torch.randn(4, 2, 2, dtype=torch.float64, generator=g)
    torch.testing.assert_close(mm(r, r), r @ r, rtol=0, atol=1e-15)


def test_eager_kernels_with_broadcast_product(monkeypatch):
    grid = single_rank_grid((4, 4, 4, 4))
    kb.set_backend("eager")
    b = kb.get_backend()
    th = SU3Gauge(grid, 5.9, "symanzik")
    u = th.hot_start(SiteRNG(4), 0, 2)
    x = 0.2 * th.random_momentum(SiteRNG(5), 0, 2)
    ref = (th.action(u), th.force(u), b.su3_flow_step_rk3(u, grid, 0.03), b.su3_expm_mul(x, u))
    monkeypatch.setattr(su_n, "_batched_blas", lambda a: False)
    got = (th.action(u), th.force(u), b.su3_flow_step_rk3(u, grid, 0.03), b.su3_expm_mul(x, u))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-13, atol=1e-13)
    # autograd through the broadcast product: d S / d eps along U -> exp(eps X) U
    w = u.clone()
    eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
    s = th.action(mm(torch.linalg.matrix_exp(eps * x), w)).sum()
    (ds,) = torch.autograd.grad(s, eps)
    h = 1e-6
    num = (
        th.action(b.su3_expm_mul(h * x, w)).sum() - th.action(b.su3_expm_mul(-h * x, w)).sum()
    ) / (2 * h)
    assert abs(float(ds) - float(num)) < 1e-6 * max(1.0, abs(float(num)))


def test_stout_flow_and_lie_force_with_broadcast_product(monkeypatch):
    """The eager stout layer (the GPU path of the learned SU(3) flows) gives the same links,
    log-det and inverse with the accelerator's product; so does the Lie force."""
    from kernels.flows import su3_fused
    from kernels.flows.lie import lie_force_from_gradient
    from kernels.flows.su3 import su3_stout_flow

    grid = single_rank_grid((4, 4, 4, 4))
    torch.manual_seed(2)
    flow = su3_stout_flow(grid, n_layers=4, hidden=(4,), rho_max=0.7)
    u = SU3Gauge(grid, 2.0).hot_start(SiteRNG(6), 0, 2)
    g = torch.randn(u.shape, dtype=u.dtype, generator=torch.Generator().manual_seed(1))
    su3_fused.set_stout_kernel("eager")
    try:
        with torch.no_grad():
            ref = (*flow(u), flow.inverse(u)[0], lie_force_from_gradient(u, g))
            monkeypatch.setattr(su_n, "_batched_blas", lambda a: False)
            got = (*flow(u), flow.inverse(u)[0], lie_force_from_gradient(u, g))
    finally:
        su3_fused.set_stout_kernel(None)
    assert float((ref[0] - u).abs().max()) > 0.05  # the flow moved the links
    for r, x in zip(ref, got):
        torch.testing.assert_close(x, r, rtol=1e-12, atol=1e-12)
