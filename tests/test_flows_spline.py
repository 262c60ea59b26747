"""Circular rational-quadratic splines (kernels/flows/splines.py) and the U(1) plaquette
coupling with ``transform="spline"``: spline math (end points, monotonicity, derivative =
autograd = finite differences, analytic inverse), exact inverse and log-det = brute-force
slogdet of layers and flows, gauge equivariance, model registry round trip, old cards."""

from __future__ import annotations

import math

import pytest
import torch

from app.registry import load_model, read_card, save_model
from kernels.flows import U1PlaquetteCoupling, u1_ncp_flow
from kernels.flows.base import build_flow
from kernels.flows.splines import circular_spline_knots, rq_spline, rq_spline_inverse
from kernels.flows.u1 import plaquette
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid

torch.set_num_threads(1)

TWO_PI = 2.0 * math.pi
DT = torch.float64
GRID = single_rank_grid((4, 4))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(4321)


# ------------------------------------------------------------------ spline math
def _knots(k: int, scale: float, n: int = 400, seed: int = 0, requires_grad: bool = False):
    """Random raw parameters ``(1, K, n)`` (one spline per column) and their knots."""
    gen = torch.Generator().manual_seed(seed)
    raw = [scale * torch.randn((1, k, n), generator=gen, dtype=DT) for _ in range(3)]
    if requires_grad:
        for r in raw:
            r.requires_grad_(True)
    return raw, circular_spline_knots(*raw)


# (K, scale of the raw parameters): scale 12 saturates the minimum bin size and the minimum
# derivative and gives derivatives up to ~40 (strongly non-linear splines)
PARAMS = [(1, 1.0), (2, 1.0), (8, 1.0), (3, 12.0), (16, 12.0)]


@pytest.mark.parametrize("k,scale", PARAMS)
def test_spline_is_a_circle_diffeomorphism(k: int, scale: float) -> None:
    _, (xk, yk, dk) = _knots(k, scale)
    n = xk.shape[-1]
    # rows: 3001 points of [0, 2 pi] (the batch dim), columns: the n splines
    x = torch.linspace(0.0, TWO_PI, 3001, dtype=DT).reshape(-1, 1).expand(-1, n)
    y, dy, logdy = rq_spline(x, *(z.expand(x.shape[0], -1, -1) for z in (xk, yk, dk)))
    assert (y[0] == 0.0).all() and (y[-1] - TWO_PI).abs().max() < 4e-15
    assert torch.allclose(dy[0], dy[-1], rtol=1e-13, atol=0)
    assert torch.allclose(dy[0], dk[0, 0], rtol=1e-13, atol=0)
    assert (dy > 0).all() and (torch.diff(y, dim=0) >= 0).all()
    if scale <= 1.0:
        assert (torch.diff(y, dim=0) > 0).all()
    assert torch.allclose(logdy, torch.log(dy), rtol=0, atol=1e-12)
    # the knots are knots: h(x_k) = y_k, h'(x_k) = d_k (also at exactly 0 and 2 pi)
    for j in range(k + 1):
        yj, dj, _ = rq_spline(xk[:, j], xk, yk, dk)
        assert torch.allclose(yj, yk[:, j], rtol=0, atol=1e-13)
        assert torch.allclose(dj, dk[:, j], rtol=1e-12, atol=0)


def test_knots_and_identity() -> None:
    raw, (xk, yk, dk) = _knots(5, 30.0)
    for z in (xk, yk):
        assert (z[:, 0] == 0).all() and (z[:, -1] == TWO_PI).all()
        assert (torch.diff(z, dim=1) >= TWO_PI * 1e-3 * (1 - 1e-12)).all(), "minimum bin"
    assert (dk >= 1e-3).all() and torch.equal(dk[:, 0], dk[:, -1])
    # all-zero raw parameters: the identity
    zero = torch.zeros((1, 4, 7), dtype=DT)
    knots = circular_spline_knots(zero, zero, zero)
    x = TWO_PI * torch.rand((1, 7), dtype=DT)
    y, dy, _ = rq_spline(x, *knots)
    assert torch.allclose(y, x, atol=1e-14) and torch.allclose(dy, torch.ones_like(dy))
    with pytest.raises(ValueError, match="min_bin"):
        circular_spline_knots(zero, zero, zero, min_bin=0.3)


@pytest.mark.parametrize("k,scale", PARAMS)
def test_spline_derivative_is_autograd_and_finite_difference(k: int, scale: float) -> None:
    _, knots = _knots(k, scale, n=200)
    gen = torch.Generator().manual_seed(2)
    x = (TWO_PI * torch.rand((1, 200), generator=gen, dtype=DT)).requires_grad_(True)
    y, dy, _ = rq_spline(x, *knots)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, dy, rtol=1e-12, atol=1e-14)
    # central differences (h is C^1 with a bounded second derivative inside the bins)
    eps = 1e-6
    with torch.no_grad():
        xs = x.clamp(2 * eps, TWO_PI - 2 * eps)
        yp, _, _ = rq_spline(xs + eps, *knots)
        ym, _, _ = rq_spline(xs - eps, *knots)
        _, dyc, _ = rq_spline(xs, *knots)
    fd = (yp - ym) / (2 * eps)
    tol = 1e-6 if scale <= 1.0 else 1e-3
    assert torch.allclose(fd, dyc, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("k,scale", PARAMS)
def test_spline_analytic_inverse(k: int, scale: float) -> None:
    _, knots = _knots(k, scale)
    xk, yk, dk = knots
    n = xk.shape[-1]
    gen = torch.Generator().manual_seed(3)
    x = TWO_PI * torch.rand((1, n), generator=gen, dtype=DT)
    x[0, :3] = torch.tensor([0.0, TWO_PI, 1e-300])
    x[0, 3] = xk[0, k // 2, 3]  # exactly on a knot
    y, dy, logdy = rq_spline(x, *knots)
    xr, logdy_r = rq_spline_inverse(y, *knots)
    assert xr[0, 0] == 0.0 and xr[0, 1] == TWO_PI
    # backward error: h(h^{-1}(y)) = y; forward error scaled by the conditioning 1 / h'
    yr, _, _ = rq_spline(xr, *knots)
    assert (yr - y).abs().max() < 1e-13
    assert ((xr - x).abs() * dy.clamp(max=1.0)).max() < 1e-13
    # h' can be ~1e-8 at scale 12: x is then only determined to ~eps / h'
    well = dy > (0.0 if scale <= 1.0 else 1e-4)
    assert well.float().mean() > 0.2
    assert (xr - x)[well].abs().max() < 1e-10
    assert (logdy_r - logdy)[well].abs().max() < 1e-9
    # y on the knots and at the ends
    for j in range(k + 1):
        xj, _ = rq_spline_inverse(yk[:, j], *knots)
        assert torch.allclose(xj, xk[:, j], rtol=0, atol=1e-12)


def test_spline_gradcheck() -> None:
    """Forward and analytic inverse are differentiable in the input and the parameters."""
    raw, _ = _knots(3, 1.5, n=5, requires_grad=True)
    gen = torch.Generator().manual_seed(5)
    x = (TWO_PI * torch.rand((1, 5), generator=gen, dtype=DT)).requires_grad_(True)

    def fwd(x, w, h, d):
        y, _, logdy = rq_spline(x, *circular_spline_knots(w, h, d))
        return y, logdy

    def inv(y, w, h, d):
        return rq_spline_inverse(y, *circular_spline_knots(w, h, d))

    assert torch.autograd.gradcheck(fwd, (x, *raw))
    assert torch.autograd.gradcheck(inv, (x, *raw))


# ------------------------------------------------------------------ layers and flows
def _randomise(flow: torch.nn.Module, scale: float, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _angles(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (TWO_PI * torch.rand((batch, 2, 4, 4), generator=gen, dtype=DT) - math.pi) * 1.7


def _layers():
    g = GRID
    out = {
        f"spline_mu{mu}_off{off}_K{k}": U1PlaquetteCoupling(
            g, mu, off, n_mix=k, hidden=(4,), transform="spline"
        )
        for mu, off, k in [(0, 0, 4), (1, 1, 1), (0, 2, 2), (1, 3, 6)]
    }
    out["u1_spline_flow"] = u1_ncp_flow(
        g, n_layers=8, n_mix=4, hidden=(4,), stout_layers=4, transform="spline"
    )
    return out


NAMES = list(_layers())


def _make(name: str):
    layer = _layers()[name]
    # a deep random stack is ill-conditioned: perturb it less (cf. test_flows_layers)
    _randomise(layer, 0.2 if "flow" in name else 0.4)
    return layer, _angles(3)


@pytest.mark.parametrize("name", NAMES)
def test_spline_inverse_and_logdet(name: str) -> None:
    layer, x = _make(name)
    u, ld = layer(x)
    assert (u - x).abs().max() > 1e-2, "the layer should not be the identity here"
    v, ld_inv = layer.inverse(u)
    assert torch.allclose(v, x, atol=1e-10, rtol=0)
    assert torch.allclose(ld + ld_inv, torch.zeros(3, dtype=DT), atol=1e-10)
    for b in range(2):
        xb = x[b : b + 1]

        def fwd(z: torch.Tensor, shape=xb.shape) -> torch.Tensor:
            return layer(z.reshape(shape))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(fwd, xb.reshape(-1))
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign > 0
        want = float(ld[b].detach())
        assert abs(float(logabs) - want) < 1e-10 * (1.0 + abs(want)), (float(logabs), want)


def _gauge_transform(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``theta_mu(x) + alpha(x) - alpha(x + mu)`` (periodic, single rank)."""
    out = [theta[:, mu] + alpha - torch.roll(alpha, -1, dims=1 + mu) for mu in range(2)]
    return torch.stack(out, dim=1)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, TWO_PI) - math.pi


@pytest.mark.parametrize("name", NAMES)
def test_spline_gauge_equivariance_and_2pi_shifts(name: str) -> None:
    layer, theta = _make(name)
    alpha = 5.0 * torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(7), dtype=DT)
    f_of_g, ld_g = layer(_gauge_transform(theta, alpha))
    f, ld = layer(theta)
    assert _wrap(f_of_g - _gauge_transform(f, alpha)).abs().max() < 1e-10
    assert torch.allclose(ld_g, ld, atol=1e-10)
    assert _wrap(_gauge_transform(f, alpha) - f).abs().max() > 0.1
    n = torch.randint(-2, 3, theta.shape, generator=torch.Generator().manual_seed(3))
    f1, ld1 = layer(theta + TWO_PI * n)
    assert torch.allclose(f1, f + TWO_PI * n, atol=1e-10)
    assert torch.allclose(ld1, ld, atol=1e-10)


def test_spline_layer_changes_only_active_plaquettes() -> None:
    layer, theta = _make("spline_mu0_off0_K4")
    before = torch.remainder(plaquette(theta, GRID, 0, 1), TWO_PI)
    after = torch.remainder(plaquette(layer(theta)[0], GRID, 0, 1), TWO_PI)
    changed = ((before - after).abs() > 1e-12).any(dim=0)
    x1 = torch.arange(4).expand(4, 4)
    assert not changed[(x1 == 1) | (x1 == 2)].any(), "frozen plaquettes must not change"
    assert changed[x1 == 0].all()


def test_spline_plaquettes_at_the_interval_ends() -> None:
    """Active plaquettes exactly 0 and ones that ``remainder`` rounds to exactly ``2 pi`` both
    move by ``t`` (``h(0) = 0``, ``h(2 pi) = 2 pi``, ``h'(0) = h'(2 pi)``)."""
    layer, _ = _make("spline_mu0_off0_K4")
    theta = torch.zeros((2, 2, 4, 4), dtype=DT)
    theta[1, 0, :, 0] = -1e-17  # active plaquettes (x_1 = 0) -1e-17: wrapped to 2 pi
    p = torch.remainder(plaquette(theta, GRID, 0, 1), TWO_PI)
    assert (p[1, :, 0] == TWO_PI).all() and (p[0] == 0).all()
    u, ld = layer(theta)
    assert torch.allclose(u[1] - theta[1], u[0] - theta[0], rtol=0, atol=1e-14)
    assert torch.allclose(ld[1], ld[0], rtol=1e-12, atol=0)
    v, ld_inv = layer.inverse(u)
    assert torch.allclose(v, theta, rtol=0, atol=1e-14)
    assert torch.allclose(ld + ld_inv, torch.zeros(2, dtype=DT), atol=1e-12)


def test_float32_spline_flow() -> None:
    flow = u1_ncp_flow(GRID, n_layers=4, hidden=(4,), dtype="float32", transform="spline")
    _randomise(flow, 0.2)
    x = _angles(2).float()
    u, ld = flow(x)
    assert u.dtype == torch.float32 and ld.dtype == torch.float32
    v, ld_inv = flow.inverse(u)
    assert (v - x).abs().max() < 1e-4 and (ld + ld_inv).abs().max() < 1e-3


def test_transform_choice() -> None:
    ncp = U1PlaquetteCoupling(GRID, 0, 0, n_mix=3, hidden=(4,))
    spl = U1PlaquetteCoupling(GRID, 0, 0, n_mix=3, hidden=(4,), transform="spline")
    assert ncp.transform == "ncp" and spl.transform == "spline"
    assert ncp.net.net[-1].weight.shape[0] == 3 + 1
    assert spl.net.net[-1].weight.shape[0] == 3 * 3 + 1
    with pytest.raises(ValueError, match="unknown transform"):
        U1PlaquetteCoupling(GRID, 0, 0, transform="affine")
    with pytest.raises(ValueError, match="unknown transform"):
        u1_ncp_flow(GRID, n_layers=0, stout_layers=2, transform="rqs")


# ------------------------------------------------------------------ registry
def test_spline_flow_registry_round_trip(tmp_path) -> None:
    flow = u1_ncp_flow(GRID, n_layers=4, n_mix=3, hidden=(4,), stout_layers=2, transform="spline")
    _randomise(flow, 0.3)
    assert flow.architecture["kwargs"]["transform"] == "spline"
    theory = U1Gauge(GRID, beta=2.0)
    ref = save_model(flow, theory, "u1-spline", root=tmp_path)
    assert read_card(ref, root=tmp_path)["architecture"]["kwargs"]["transform"] == "spline"
    loaded, _ = load_model(ref, GRID, theory="u1", root=tmp_path)
    assert all(layer.transform == "spline" for layer in loaded.layers[:4])
    x = _angles(2)
    u0, ld0 = flow(x)
    u1, ld1 = loaded(x)
    assert torch.equal(u0, u1) and torch.equal(ld0, ld1)
    # and on a larger lattice (the layers are local)
    big, _ = load_model(ref, single_rank_grid((8, 4)), root=tmp_path)
    y = 2.0 * torch.randn((1, 2, 8, 4), generator=torch.Generator().manual_seed(9), dtype=DT)
    ub, ldb = big(y)
    vb, ldb_inv = big.inverse(ub)
    assert torch.allclose(vb, y, atol=1e-10) and abs(float((ldb + ldb_inv).detach())) < 1e-10


def test_cards_without_transform_build_ncp_flows(tmp_path) -> None:
    """Architecture records made before ``transform`` existed rebuild NCP flows."""
    flow = u1_ncp_flow(GRID, n_layers=4, hidden=(4,), stout_layers=2)
    _randomise(flow, 0.3)
    assert flow.architecture["kwargs"]["transform"] == "ncp"
    old = {
        "builder": "kernels.flows.u1:u1_ncp_flow",
        "kwargs": {
            "n_layers": 4,
            "n_mix": 2,
            "hidden": [4],
            "kernel_size": 3,
            "activation": "tanh",
            "stout_layers": 2,
            "dtype": "float64",
            "checkpoint_layers": False,
        },
    }
    rebuilt = build_flow(old, GRID)
    assert all(layer.transform == "ncp" for layer in rebuilt.layers[:4])
    rebuilt.load_state_dict(flow.state_dict())
    x = _angles(2)
    assert torch.equal(rebuilt(x)[0], flow(x)[0])
    # an old-style card in the registry (saved without the key) loads as well
    flow.architecture = old
    ref = save_model(flow, U1Gauge(GRID, beta=2.0), "u1-old", root=tmp_path)
    loaded, card = load_model(ref, GRID, theory="u1", root=tmp_path)
    assert "transform" not in card["architecture"]["kwargs"]
    u0, ld0 = flow(x)
    u1, ld1 = loaded(x)
    assert torch.equal(u0, u1) and torch.equal(ld0, ld1)
