"""NTHMC U(1) layers (kernels.flows.nthmc_u1): invertibility, exact log-det against the
brute-force slogdet of the autograd Jacobian, gauge equivariance, the coefficient bound for
any input, the subset structure (each layer moves only its links), transfer to a larger
lattice with the same per-site action, and the trivialized force against numerical
derivatives. Exactness of HMC with these flows: tests/test_nthmc_hmc.py."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.flows.base import FlowError
from kernels.flows.nthmc_u1 import U1NeuralLayer, inverse_iterations, u1_nthmc_flow
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, single_rank_grid


def _flow(grid, scale: float = 3.0, seed: int = 3, **kw):
    torch.manual_seed(seed)
    flow = u1_nthmc_flow(grid, identity_init=False, **kw)
    with torch.no_grad():  # large weights: coefficients near their bounds (a hard test)
        for p in flow.parameters():
            p.mul_(scale)
    return flow


def _field(shape, batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((batch, len(shape)) + tuple(shape), generator=gen) - 0.5) * 4 * math.pi


def _gauge(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``theta_mu(x) + alpha(x) - alpha(x + mu)`` (one rank)."""
    d = theta.shape[1]
    return torch.stack(
        [theta[:, m] + alpha - torch.roll(alpha, -1, dims=1 + m) for m in range(d)], dim=1
    )


@pytest.mark.parametrize("shape", [(4, 4), (4, 2, 2)])
def test_inverse_and_logdets(shape):
    grid = single_rank_grid(shape)
    flow = _flow(grid)
    v = _field(shape)
    u, ld = flow(v)
    assert (u - v).abs().max() > 0.1  # not the identity
    w, ldi = flow.inverse(u)
    assert (w - v).abs().max() < 1e-10
    assert (ld + ldi).abs().max() < 1e-10
    its = inverse_iterations(flow)
    assert len(its) == len(flow) and all(1 <= i <= 100 for i in its)


def test_logdet_matches_bruteforce_slogdet():
    grid = single_rank_grid((4, 4))
    flow = _flow(grid)
    v = _field((4, 4), batch=1)
    _, ld = flow(v)
    jac = torch.autograd.functional.jacobian(
        lambda t: flow(t.reshape(v.shape))[0].reshape(-1), v.reshape(-1)
    )
    sign, logabs = torch.linalg.slogdet(jac)
    assert float(sign) == 1.0
    assert abs(float(logabs) - float(ld.detach()[0])) < 1e-10
    assert abs(float(ld.detach()[0])) > 0.1


def test_each_layer_moves_only_its_subset():
    grid = single_rank_grid((4, 4))
    flow = _flow(grid)
    v = _field((4, 4), batch=1)
    moved = torch.zeros_like(v[0], dtype=torch.bool)
    for layer in flow.layers:
        u, _ = layer(v)
        diff = (u - v)[0].abs() > 0
        expect = torch.zeros_like(diff)
        expect[layer.mu] = layer.active > 0
        assert not (diff & ~expect).any()
        moved |= diff
        # the Jacobian of one layer is triangular: an active link's update ignores the others
        jac = torch.autograd.functional.jacobian(
            lambda t, la=layer: la(t.reshape(v.shape))[0].reshape(-1), v.reshape(-1)
        )
        act = expect.reshape(-1).nonzero().reshape(-1)
        sub = jac[act][:, act]
        assert torch.allclose(sub, torch.diag(torch.diagonal(sub)), atol=0, rtol=0)
    assert moved.all()  # one sweep of 8 layers covers every link


def test_gauge_equivariance():
    shape = (4, 4)
    grid = single_rank_grid(shape)
    flow = _flow(grid)
    v = _field(shape)
    alpha = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(9)) * 3
    u, ld = flow(v)
    ug, ldg = flow(_gauge(v, alpha))
    assert (ug - _gauge(u, alpha)).abs().max() < 1e-11
    assert (ld - ldg).abs().max() < 1e-11
    # and periodic in 2 pi
    n = torch.randint(-2, 3, v.shape, generator=torch.Generator().manual_seed(4))
    up, _ = flow(v + 2 * math.pi * n)
    assert (up - u - 2 * math.pi * n).abs().max() < 1e-11


@pytest.mark.parametrize("shape", [(2, 2), (4, 6), (8, 8), (2, 4, 2)])
def test_coefficient_bound_any_input(shape):
    grid = single_rank_grid(shape)
    gen = torch.Generator().manual_seed(sum(shape))
    for mu in range(len(shape)):
        layer = U1NeuralLayer(grid, mu, [1] * len(shape), hidden=(4,), eps_max=0.95)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(1e3 * torch.randn(p.shape, generator=gen))
        feats = 1e4 * torch.randn((3, 2 * len(layer.loops)) + shape, generator=gen)
        c = layer.coefficients(feats).detach()
        assert (c.abs() <= layer.bound.view(1, -1, 1) + 1e-15).all()
        assert float(c.abs().sum(1).max()) <= 0.95 + 1e-12
        assert float(c.abs().sum(1).max()) > 0.9  # the bound is reached, not just obeyed
        theta = _field(shape, batch=3, seed=7)
        _, dg = layer._g(layer._gather(theta), c, layer._rest(theta))
        assert float(dg.min()) >= 1 - 0.95 - 1e-12


def test_bad_geometry_and_bounds():
    with pytest.raises(ValueError, match="multiple of 2"):
        u1_nthmc_flow(single_rank_grid((4, 5)))
    with pytest.raises(ValueError, match="eps_max"):
        u1_nthmc_flow(single_rank_grid((4, 4)), eps_max=1.0)
    flow = _flow(single_rank_grid((4, 4)), max_iter=1)
    u, _ = flow(_field((4, 4)))
    with pytest.raises(FlowError, match="did not converge"):
        flow.inverse(u)


def test_transfer_to_twice_the_lattice_same_action_per_site():
    """Trained (here: random) at L = 4, run at 2L = 8: a configuration tiled 2 x 2 has the
    same transformed action per site, and the flow maps it to the tiled image."""
    small, big = single_rank_grid((4, 4)), single_rank_grid((8, 8))
    flow = _flow(small)
    flow2 = flow.rebuild_for(big)
    v = _field((4, 4))
    v2 = v.repeat(1, 1, 2, 2)
    u, ld = flow(v)
    u2, ld2 = flow2(v2)
    assert (u2 - u.repeat(1, 1, 2, 2)).abs().max() < 1e-12
    s = TransformedTheory(U1Gauge(small, beta=3.0), flow).action(v) / 16
    s2 = TransformedTheory(U1Gauge(big, beta=3.0), flow2).action(v2) / 64
    assert (s - s2).abs().max() < 1e-12
    assert (ld2 - 4 * ld).abs().max() < 1e-10


def test_trivialized_force_is_the_derivative():
    grid = single_rank_grid((4, 4))
    theory = TransformedTheory(U1Gauge(grid, beta=2.5), _flow(grid))
    v = _field((4, 4))
    f = theory.force(v)
    d = torch.randn(v.shape, generator=torch.Generator().manual_seed(2))
    h = 1e-4

    def diff(k: float) -> torch.Tensor:
        return theory.action(v + k * h * d) - theory.action(v - k * h * d)

    with torch.no_grad():
        num = (8 * diff(1) - diff(2)) / (12 * h)
    ana = (f * d).flatten(1).sum(1)
    assert torch.allclose(ana, num, rtol=1e-7, atol=1e-6), (ana, num)
    assert (f - theory.theory.force(v)).abs().max() > 1e-2


def test_distributed_grid_needs_even_local_extent():
    # the tiling is global: on one rank any even lattice works; grids are checked in tests/mpi
    grid = ProcessGrid((4, 4), [1, 1])
    assert len(u1_nthmc_flow(grid)) == 8
