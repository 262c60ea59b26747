"""U(1) Wilson gauge theory: action, force, gauge invariance, topology (single rank)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kernels.theories import make_theory
from kernels.theories.u1 import U1Gauge, wrap_angle
from parallel import single_rank_grid
from parallel.rng import PURPOSE_MOMENTUM, PURPOSE_START, SiteRNG

TWO_PI = 2.0 * math.pi


def theory(shape, beta=1.7) -> U1Gauge:
    return U1Gauge(single_rank_grid(shape), beta=beta)


def random_angles(batch, shape, scale=4.0, seed=0) -> torch.Tensor:
    """Unwrapped random angles (some outside (-pi, pi])."""
    gen = torch.Generator().manual_seed(seed)
    return scale * (2.0 * torch.rand((batch, len(shape), *shape), generator=gen) - 1.0)


def gauge_transform(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """theta_mu(x) -> theta_mu(x) + alpha(x) - alpha(x + mu) (periodic, single rank)."""
    out = theta.clone()
    for mu in range(theta.shape[1]):
        out[:, mu] += alpha - torch.roll(alpha, -1, dims=1 + mu)
    return out


def instanton(q: int, shape: tuple[int, int]) -> torch.Tensor:
    """Smooth 2D configuration with every plaquette angle equal to 2 pi q / V (mod 2 pi).

    theta_0(x, t) = -2 pi q t / V for all x; theta_1(x, t) = 0 except on the last time slice,
    theta_1(x, L_1 - 1) = 2 pi q x / L_0 (the twisted boundary link). Plaquette
    theta_P(x, t) = theta_0(x, t) + theta_1(x + 1, t) - theta_0(x, t + 1) - theta_1(x, t):
      t < L_1 - 1:           2 pi q / V + 0
      t = L_1 - 1, x < L_0-1: -2 pi q (L_1 - 1) / V + 2 pi q / L_0          = 2 pi q / V
      t = L_1 - 1, x = L_0-1: -2 pi q (L_1 - 1) / V - 2 pi q (L_0 - 1) / L_0 = 2 pi q / V - 2 pi q
    so [theta_P] = 2 pi q / V everywhere (for |q| < V / 2) and Q_int = q.
    """
    l0, l1 = shape
    vol = l0 * l1
    x, t = torch.meshgrid(torch.arange(l0), torch.arange(l1), indexing="ij")
    th0 = -TWO_PI * q * t.double() / vol
    th1 = torch.where(t == l1 - 1, TWO_PI * q * x.double() / l0, torch.zeros(shape))
    return torch.stack([th0, th1])[None]


# ------------------------------------------------------------------ basics
def test_registry_and_layout():
    th = make_theory("u1", single_rank_grid((4, 6)), beta=2.5)
    assert isinstance(th, U1Gauge) and th.params == {"beta": 2.5}
    assert th.field_shape(3) == (3, 2, 4, 6) and th.first == 2
    with pytest.raises(ValueError):
        U1Gauge(single_rank_grid((8,)), beta=1.0)


def test_wrap_angle():
    a = torch.tensor([0.0, math.pi, -math.pi, 3 * math.pi, -3 * math.pi, 7.0, -7.0, 1e-3])
    w = wrap_angle(a)
    expected = [0.0, math.pi, math.pi, math.pi, math.pi, 7.0 - TWO_PI, -7.0 + TWO_PI, 1e-3]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=0, atol=1e-15)
    r = 50 * torch.randn(1000)
    w = wrap_angle(r)
    assert (w > -math.pi).all() and (w <= math.pi).all()
    k = (r - w) / TWO_PI
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 4)])
def test_action_brute_force(shape):
    """S = beta sum_x sum_{mu<nu} (1 - cos P) with explicit site arithmetic."""
    beta = 1.3
    th = theory(shape, beta)
    theta = random_angles(2, shape, seed=3)
    ref = torch.zeros(2)
    nd = len(shape)
    for x in itertools.product(*(range(s) for s in shape)):

        def up(site, mu):
            y = list(site)
            y[mu] = (y[mu] + 1) % shape[mu]
            return tuple(y)

        for mu, nu in itertools.combinations(range(nd), 2):
            p = (
                theta[(slice(None), mu) + x]
                + theta[(slice(None), nu) + up(x, mu)]
                - theta[(slice(None), mu) + up(x, nu)]
                - theta[(slice(None), nu) + x]
            )
            ref += beta * (1.0 - torch.cos(p))
    torch.testing.assert_close(th.action(theta), ref, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2)])
def test_force_is_numerical_derivative(shape):
    th = theory(shape, beta=2.3)
    theta = random_angles(3, shape, seed=1)
    f = th.force(theta)
    assert f.shape == theta.shape
    h = 1e-5
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=gen)
        num = (th.action(theta + h * v) - th.action(theta - h * v)) / (2 * h)
        torch.testing.assert_close((f * v).flatten(1).sum(1), num, rtol=1e-8, atol=1e-8)
    nd = len(shape)
    for mu in range(nd):
        for site in [(0,) * nd, tuple(s - 1 for s in shape), tuple(s // 2 for s in shape)]:
            idx = (slice(None), mu) + site
            e = torch.zeros_like(theta)
            e[idx] = 1.0
            num = (th.action(theta + h * e) - th.action(theta - h * e)) / (2 * h)
            torch.testing.assert_close(f[idx], num, rtol=1e-8, atol=1e-8)


def test_kinetic_drift_project():
    shape = (4, 6)
    th = theory(shape)
    theta = random_angles(2, shape, scale=9.0)
    pi = torch.randn_like(theta)
    torch.testing.assert_close(th.kinetic(pi), 0.5 * (pi**2).flatten(1).sum(1))
    torch.testing.assert_close(th.evolve_field(theta, pi, 0.2), theta + 0.2 * pi)
    w = th.project(theta)
    assert (w > -math.pi).all() and (w <= math.pi).all()
    torch.testing.assert_close(th.action(w), th.action(theta))
    torch.testing.assert_close(th.force(w), th.force(theta))
    for k in ("plaquette", "Q", "Q_int"):
        torch.testing.assert_close(th.observables(w)[k], th.observables(theta)[k])


# ------------------------------------------------------------------ gauge invariance
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2)])
def test_gauge_invariance(shape):
    th = theory(shape, beta=1.1)
    theta = random_angles(3, shape, scale=math.pi, seed=11)
    alpha = 5.0 * torch.randn(3, *shape, generator=torch.Generator().manual_seed(2))
    gt = gauge_transform(theta, alpha)
    assert (gt - theta).abs().max() > 1.0  # the transformation does something
    torch.testing.assert_close(th.action(gt), th.action(theta), rtol=1e-13, atol=1e-12)
    # the abelian force is gauge invariant (sin of plaquettes)
    torch.testing.assert_close(th.force(gt), th.force(theta), rtol=1e-12, atol=1e-12)
    o, og = th.observables(theta), th.observables(gt)
    assert o.keys() == og.keys()
    for k in o:
        torch.testing.assert_close(og[k], o[k], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ topology
@pytest.mark.parametrize("shape", [(6, 5), (8, 8), (3, 10)])
def test_geometric_charge_is_integer(shape):
    th = theory(shape)
    theta = random_angles(32, shape, scale=math.pi, seed=5)
    q = th.topological_charge_int(theta)
    torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-11)
    assert (q.round() != 0).any()  # random fields carry charge
    torch.testing.assert_close(th.observables(theta)["Q_int"], q)
    torch.testing.assert_close(th.observables(theta)["Q2"], q * q)


@pytest.mark.parametrize("shape", [(6, 5), (8, 8), (4, 10)])
@pytest.mark.parametrize("q", [-3, -1, 0, 1, 2])
def test_instanton_charge(shape, q):
    beta = 0.9
    th = theory(shape, beta)
    vol = math.prod(shape)
    theta = instanton(q, shape)
    angle = TWO_PI * q / vol
    p = wrap_angle(th.plaquette_angles(theta))
    torch.testing.assert_close(p, torch.full_like(p, angle), rtol=0, atol=1e-12)
    obs = th.observables(theta)
    assert obs["Q_int"].item() == pytest.approx(q, abs=1e-12)
    assert obs["Q2"].item() == pytest.approx(q * q, abs=1e-11)
    assert obs["Q"].item() == pytest.approx(vol * math.sin(angle) / TWO_PI, abs=1e-12)
    assert obs["plaquette"].item() == pytest.approx(math.cos(angle), abs=1e-14)
    assert th.action(theta).item() == pytest.approx(beta * vol * (1 - math.cos(angle)), abs=1e-11)
    # constant field strength: the force vanishes (a classical solution)
    torch.testing.assert_close(th.force(theta), torch.zeros_like(theta), rtol=0, atol=1e-12)
    # the charge survives gauge transformations and 2 pi shifts of single links
    alpha = torch.randn(1, *shape, generator=torch.Generator().manual_seed(q + 10))
    moved = gauge_transform(theta, alpha)
    moved[0, 1, 2, 3] += 4 * math.pi
    assert th.topological_charge_int(moved).item() == pytest.approx(q, abs=1e-11)


def test_topology_needs_2d():
    th = theory((2, 3, 4))
    theta = random_angles(1, (2, 3, 4))
    assert "Q" not in th.observables(theta)
    with pytest.raises(ValueError):
        th.topological_charge_int(theta)


def test_plaquette_observable_3d():
    shape = (3, 2, 4)
    th = theory(shape, beta=0.5)
    theta = random_angles(2, shape, seed=4)
    p = th.plaquette_angles(theta)
    assert p.shape == (2, 3, *shape)
    obs = th.observables(theta)
    torch.testing.assert_close(obs["plaquette"], torch.cos(p).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(obs["action"], th.action(theta) / math.prod(shape))


# ------------------------------------------------------------------ random draws
def test_starts_and_momenta():
    shape = (4, 6)
    th = theory(shape)
    rng = SiteRNG(99)
    cold = th.cold_start(3)
    assert cold.shape == (3, 2, 4, 6) and not cold.any()
    assert th.observables(cold)["plaquette"].eq(1.0).all()
    hot = th.hot_start(rng, 7, 3)
    u = rng.uniform(th.grid, PURPOSE_START, 7, 3, lead=(2,))
    torch.testing.assert_close(hot, TWO_PI * u - math.pi, rtol=0, atol=0)
    assert (hot > -math.pi).all() and (hot < math.pi).all()
    mom = th.random_momentum(rng, 7, 3, chain_offset=2)
    ref = rng.normal(th.grid, PURPOSE_MOMENTUM, 7, 3, lead=(2,), chain_offset=2)
    torch.testing.assert_close(mom, ref, rtol=0, atol=0)
    assert mom.shape == th.momentum_shape(3)
    assert np.isfinite(mom.numpy()).all()
