"""2D U(1) sweep-ordered plaquette couplings (kernels.flows.u1_sweep).

* geometry: each layer changes exactly its active and passive plaquettes, and over the sweep
  every plaquette but ``P(0, 0)`` is transformed once and never touched again;
* exactness: inverse to 1e-10, log-det = brute-force slogdet of the autograd Jacobian (4x4),
  gauge equivariance;
* physics: started from the fitted single-plaquette map (:func:`init_marginal`) every
  plaquette but ``P(0, 0)`` has the exact von Mises mean ``<cos P> = I_1(beta) / I_0(beta)``,
  and the exact KL divergence (exact ``log Z``) is close to the cost of the one constrained
  plaquette, ``~ log I_0(beta) - beta <cos>``-sized, far below the untrained flow's.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import special, stats

from kernels.flows.priors import prior_for
from kernels.flows.train import TrainConfig, Trainer
from kernels.flows.u1 import plaquette
from kernels.flows.u1_sweep import (
    U1SweepCoupling,
    fit_marginal,
    init_marginal,
    marginal_map,
    u1_sweep_flow,
)
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import log_partition_function
from parallel import single_rank_grid
from parallel.rng import SiteRNG

DT = torch.float64
TWO_PI = 2 * math.pi


def _perturb(module: torch.nn.Module, scale: float, seed: int = 4) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, TWO_PI) - math.pi


def _changed(layer, grid, theta) -> torch.Tensor:
    u, _ = layer(theta)
    d = _wrap(plaquette(u, grid, 0, 1) - plaquette(theta, grid, 0, 1))
    return (d.abs() > 1e-12).any(dim=0)


def test_sweep_geometry():
    grid = single_rank_grid((8, 4))
    flow = u1_sweep_flow(grid, n_mix=2, hidden=(3,))
    _perturb(flow, 0.5)
    assert len(flow.layers) == (4 - 1) + (8 - 1)  # rows along x_1, then row 0 along x_0
    theta = TWO_PI * torch.rand((2, 2, 8, 4), generator=torch.Generator().manual_seed(1))
    done = torch.zeros(8, 4, dtype=torch.bool)
    for layer in flow.layers:
        changed = _changed(layer, grid, theta)
        active = layer.active.bool()
        assert changed.sum() == 2 * active.sum(), "active and passive plaquettes only"
        assert not (changed & done).any(), "a finished plaquette was touched again"
        done |= active
        theta = layer(theta)[0].detach()
    want = torch.ones(8, 4, dtype=torch.bool)
    want[0, 0] = False
    assert torch.equal(done, want)


@pytest.mark.parametrize("transform", ["ncp", "spline"])
def test_inverse_logdet_equivariance(transform):
    grid = single_rank_grid((4, 4))
    flow = u1_sweep_flow(grid, n_mix=3, hidden=(4,), transform=transform)
    _perturb(flow, 0.2)
    gen = torch.Generator().manual_seed(2)
    x = (2 * torch.rand((2, 2, 4, 4), generator=gen, dtype=DT) - 1) * math.pi
    u, ld = flow(x)
    assert (u - x).abs().max() > 1e-2
    v, ld_inv = flow.inverse(u)
    assert torch.allclose(v, x, atol=1e-10, rtol=0)
    assert torch.allclose(ld + ld_inv, torch.zeros(2, dtype=DT), atol=1e-10)
    xb = x[:1]
    jac = torch.autograd.functional.jacobian(
        lambda z: flow(z.reshape(xb.shape))[0].reshape(-1), xb.reshape(-1)
    )
    sign, logabs = torch.linalg.slogdet(jac)
    ld0 = float(ld[0].detach())
    assert sign > 0 and abs(float(logabs) - ld0) < 1e-10 * (1 + abs(ld0))
    alpha = 3.0 * torch.randn((2, 4, 4), generator=gen, dtype=DT)

    def gauge(t):
        return torch.stack([t[:, m] + alpha - torch.roll(alpha, -1, dims=1 + m) for m in (0, 1)], 1)

    fg, ldg = flow(gauge(x))
    assert _wrap(fg - gauge(u)).abs().max() < 1e-10
    assert torch.allclose(ldg, ld, atol=1e-10)


def test_marginal_init_gives_exact_plaquettes_and_small_kl():
    beta, shape = 3.0, (8, 8)
    grid = single_rank_grid(shape)
    theory = U1Gauge(grid, beta=beta)
    flow = u1_sweep_flow(grid, n_mix=4)
    ev = Trainer(flow, theory, TrainConfig(steps=0, batch=8), rng=SiteRNG(5))
    log_z = log_partition_function(beta, shape)
    kl_untrained = log_z - float(ev.log_weights(256).mean())
    kl_1d = init_marginal(flow, beta, steps=1500)
    assert kl_1d < 0.01
    kl = log_z - float(ev.log_weights(2048).mean())
    # one constrained plaquette costs at most KL(uniform || von Mises) = log I_0(beta) - ...
    assert kl < math.log(special.i0(beta)) + 63 * 0.02
    assert kl < kl_untrained / 20
    with torch.no_grad():
        v = prior_for(theory).sample(SiteRNG(9), 0, 4000, 0)
        cos_p = torch.cos(plaquette(flow(v)[0], grid, 0, 1))
    exact = special.i1(beta) / special.i0(beta)
    mean, err = cos_p.mean(0), cos_p.std(0) / math.sqrt(4000)
    z = (mean - exact) / err
    z[0, 0] = 0.0  # the constrained plaquette
    assert z.abs().max() < 4.5
    assert abs(float(mean[0, 0]) - exact) > 0.3  # it is the one left uniform-like


def test_bad_geometry():
    grid = single_rank_grid((4, 4))
    with pytest.raises(ValueError, match="1..3"):
        U1SweepCoupling(grid, 0, 0)
    with pytest.raises(ValueError, match="2D"):
        u1_sweep_flow(single_rank_grid((4, 4, 4)))


def test_fit_marginal_kl_is_the_true_kl_and_polish_lowers_it():
    """The returned KL per plaquette is the real ``KL(h_# uniform || von Mises)`` (checked by
    an independent 200 000-point quadrature against scipy's von Mises density, not the
    optimisers' points), and the L-BFGS polish on the midpoint grid lowers it well below the
    Adam-only fit."""
    beta = 4.0
    layer = U1SweepCoupling(single_rank_grid((4, 4)), 0, 1, n_mix=8, transform="spline")
    rough, kl_rough = fit_marginal(layer, beta, steps=200, polish=0)
    params, kl = fit_marginal(layer, beta, steps=200, polish=30)
    n = 200_000
    x = (torch.arange(n, dtype=DT) + 0.5) * (TWO_PI / n)

    def true_kl(par):
        k = par.numel() - 1
        u, log_dh = marginal_map(layer, x, par[:k].expand(n, k), par[k:])
        log_p = torch.from_numpy(stats.vonmises.logpdf(u.numpy(), beta))
        # q(u) = (1 / 2 pi) / h'(x): KL = E_x[log q(h(x)) - log p(h(x))]
        return float((-math.log(TWO_PI) - log_dh - log_p).mean())

    # 2%: the midpoint value on the polish's own grid sat ~5% low (it learns that grid's error)
    assert abs(kl - true_kl(params)) < 0.02 * true_kl(params)
    assert abs(kl_rough - true_kl(rough)) < 0.02 * true_kl(rough)
    assert true_kl(params) < 0.5 * true_kl(rough)
    assert true_kl(params) < 3e-3


def test_marginal_map_with_shared_spline_parameters_is_the_per_plaquette_map():
    """Spline parameters shared by every plaquette, ``(1, k)``, give their knots once: the
    same map and log-derivative, bit for bit, as the parameters repeated per plaquette."""
    layer = U1SweepCoupling(single_rank_grid((4, 4)), 0, 1, n_mix=8, transform="spline")
    gen = torch.Generator().manual_seed(5)
    k = layer.net.net[-1].weight.shape[0] - 1
    par = torch.randn(k, generator=gen, dtype=DT)
    x = torch.rand(777, generator=gen, dtype=DT) * TWO_PI
    t = torch.tensor([0.3], dtype=DT)
    u1, d1 = marginal_map(layer, x, par[None], t)
    u2, d2 = marginal_map(layer, x, par.expand(x.numel(), k), t)
    assert torch.equal(u1, u2) and torch.equal(d1, d2)
