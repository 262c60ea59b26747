"""Flow layers: exact inverses, log-det = brute-force slogdet of the autograd Jacobian,
gauge equivariance of the U(1) layers, parameter count of the 37-parameter preset."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.flows import (
    AffineCoupling,
    Composition,
    FlowError,
    GlobalRescale,
    U1PlaquetteCoupling,
    U1StoutLayer,
    phi4_affine_flow,
    phi4_minimal_flow,
    u1_ncp_flow,
    u1_stout_flow,
)
from kernels.flows.u1 import ncp_mixture, plaquette
from parallel import single_rank_grid

GRID = single_rank_grid((4, 4))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic layer initialisation (LatticeConv draws from torch's global RNG)."""
    torch.manual_seed(1234)


def _randomise(flow: torch.nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    """Move every parameter away from its init (stout coefficients start at 0 = identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _angles(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (2 * math.pi * torch.rand((batch, 2, 4, 4), generator=gen) - math.pi) * 1.7


def _scalars(batch: int, seed: int = 0) -> torch.Tensor:
    return 1.3 * torch.randn((batch, 4, 4), generator=torch.Generator().manual_seed(seed))


def _phi4_layers():
    g = GRID
    return {
        "affine_p0_hidden": AffineCoupling(g, 0, hidden=(3, 2), activation="relu"),
        "affine_p1_linear_s": AffineCoupling(g, 1, hidden=(), s_activation=None),
        "rescale": GlobalRescale(g),
        "phi4_composition": phi4_affine_flow(g, n_pairs=2, hidden=(4,)),
        "phi4_minimal": phi4_minimal_flow(g),
    }


def _u1_layers():
    g = GRID
    layers = {
        f"ncp_mu{mu}_off{off}": U1PlaquetteCoupling(g, mu, off, n_mix=3, hidden=(4,))
        for mu, off in [(0, 0), (1, 1), (0, 2), (1, 3)]
    }
    layers.update({f"stout_mu{mu}_p{p}": U1StoutLayer(g, mu, p) for mu, p in [(0, 0), (1, 1)]})
    layers["u1_ncp_flow"] = u1_ncp_flow(g, n_layers=8, hidden=(4,), stout_layers=4)
    layers["u1_stout_flow"] = u1_stout_flow(g, n_layers=4)
    return layers


CASES = [(k, "phi4") for k in _phi4_layers()] + [(k, "u1") for k in _u1_layers()]


def _make(name: str, kind: str):
    layer = (_phi4_layers() if kind == "phi4" else _u1_layers())[name]
    # deep random stacks get ill-conditioned (each NCP layer can stretch by e^|s|): perturb
    # compositions less, so that the inverse test measures the inverse, not the conditioning
    _randomise(layer, 0.2 if "flow" in name or "composition" in name else 0.5)
    x = _scalars(3) if kind == "phi4" else _angles(3)
    return layer, x


@pytest.mark.parametrize("name,kind", CASES)
def test_inverse_and_logdet(name: str, kind: str) -> None:
    layer, x = _make(name, kind)
    u, ld = layer(x)
    assert u.shape == x.shape and ld.shape == (3,)
    assert (u - x).abs().max() > 1e-3, "the layer should not be the identity here"
    v, ld_inv = layer.inverse(u)
    assert torch.allclose(v, x, atol=1e-10, rtol=0)
    assert torch.allclose(ld + ld_inv, torch.zeros(3), atol=1e-10)
    # brute force: log|det| of the full autograd Jacobian, chain by chain
    for b in range(2):
        xb = x[b : b + 1]

        def fwd(z: torch.Tensor, shape=xb.shape) -> torch.Tensor:
            return layer(z.reshape(shape))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(fwd, xb.reshape(-1))
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign > 0, "flows here are orientation preserving"
        want = float(ld[b].detach())
        # slogdet of a product of 12 layers' Jacobians rounds at ~1e-11 relative
        assert abs(float(logabs) - want) < 1e-10 * (1.0 + abs(want)), (float(logabs), want)


def test_minimal_phi4_preset_has_37_parameters() -> None:
    flow = phi4_minimal_flow(single_rank_grid((8, 8)))
    assert flow.n_parameters() == 37
    assert sum(isinstance(m, AffineCoupling) for m in flow.modules()) == 2


def _gauge_transform(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``theta_mu(x) + alpha(x) - alpha(x + mu)`` (periodic, single rank)."""
    out = [theta[:, mu] + alpha - torch.roll(alpha, -1, dims=1 + mu) for mu in range(2)]
    return torch.stack(out, dim=1)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


@pytest.mark.parametrize("name", [k for k, kind in CASES if kind == "u1"])
def test_u1_gauge_equivariance(name: str) -> None:
    layer, theta = _make(name, "u1")
    alpha = 5.0 * torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(7))
    f_of_g, ld_g = layer(_gauge_transform(theta, alpha))
    f, ld = layer(theta)
    assert _wrap(f_of_g - _gauge_transform(f, alpha)).abs().max() < 1e-10
    assert torch.allclose(ld_g, ld, atol=1e-10)
    # the transformation is not trivially gauge invariant: links do change under g
    assert _wrap(_gauge_transform(f, alpha) - f).abs().max() > 0.1


@pytest.mark.parametrize("name", ["u1_ncp_flow", "u1_stout_flow"])
def test_u1_flows_commute_with_2pi_shifts(name: str) -> None:
    """``F(v + 2 pi n) = F(v) + 2 pi n``: the sampler may wrap the angles of ``V``."""
    layer, theta = _make(name, "u1")
    n = torch.randint(-2, 3, theta.shape, generator=torch.Generator().manual_seed(3))
    f1, ld1 = layer(theta + 2 * math.pi * n)
    f0, ld0 = layer(theta)
    assert torch.allclose(f1, f0 + 2 * math.pi * n, atol=1e-10)
    assert torch.allclose(ld1, ld0, atol=1e-10)


def test_ncp_mixture_is_a_circle_diffeomorphism() -> None:
    s = torch.randn((1, 3, 1))
    p = torch.linspace(0, 2 * math.pi, 2001).reshape(1, -1)
    h, dh = ncp_mixture(p, s.expand(1, 3, p.shape[1]))
    assert abs(float(h[0, 0])) < 1e-14 and abs(float(h[0, -1]) - 2 * math.pi) < 1e-12
    assert (dh > 0).all() and (torch.diff(h[0]) > 0).all()
    # the derivative is the derivative
    num = torch.diff(h[0]) / torch.diff(p[0])
    mid = 0.5 * (dh[0, 1:] + dh[0, :-1])
    assert torch.allclose(num, mid, rtol=1e-4, atol=1e-6)


def test_plaquette_layer_changes_only_active_plaquettes() -> None:
    layer, theta = _make("ncp_mu0_off0", "u1")
    before = torch.remainder(plaquette(theta, GRID, 0, 1), 2 * math.pi)
    after = torch.remainder(plaquette(layer(theta)[0], GRID, 0, 1), 2 * math.pi)
    changed = ((before - after).abs() > 1e-12).any(dim=0)
    x1 = torch.arange(4).expand(4, 4)  # x_nu = x_1 for mu = 0
    assert not changed[(x1 == 1) | (x1 == 2)].any(), "frozen plaquettes must not change"
    assert changed[x1 == 0].all()


def test_checkpointed_composition_gives_the_same_gradients() -> None:
    flow = phi4_affine_flow(GRID, n_pairs=2, hidden=(4,))
    _randomise(flow)
    x = _scalars(2)
    grads = []
    for ckpt in (False, True):
        flow.checkpoint_layers = ckpt
        flow.zero_grad()
        u, ld = flow(x)
        ((u**3).sum() + ld.sum()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in flow.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_float32_flows() -> None:
    for flow, x in (
        (phi4_affine_flow(GRID, hidden=(4,), dtype="float32"), _scalars(2).float()),
        (u1_ncp_flow(GRID, n_layers=4, hidden=(4,), dtype="float32"), _angles(2).float()),
    ):
        _randomise(flow, 0.3)
        u, ld = flow(x)
        assert u.dtype == torch.float32 and ld.dtype == torch.float32
        v, ld_inv = flow.inverse(u)
        assert (v - x).abs().max() < 1e-4
        assert (ld + ld_inv).abs().max() < 1e-3


def test_stout_inverse_reports_non_convergence() -> None:
    layer = U1StoutLayer(GRID, 0, 0, max_iter=1, tol=1e-15)
    with torch.no_grad():
        layer.coeff.fill_(3.0)
    u, _ = layer(_angles(2))
    with pytest.raises(FlowError, match="did not converge"):
        layer.inverse(u)


def test_stout_coefficients_are_bounded() -> None:
    layer = U1StoutLayer(GRID, 1, 0, eps_max=0.9)
    with torch.no_grad():
        layer.coeff.fill_(50.0)
    assert float(layer.eps.detach().abs().sum()) * 2 <= 0.9 + 1e-12
    _, ld = layer(_angles(2))
    assert torch.isfinite(ld).all()


def test_masks_require_compatible_lattices() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        U1PlaquetteCoupling(single_rank_grid((4, 6)), 0, 0)
    with pytest.raises(ValueError, match="2D only"):
        U1PlaquetteCoupling(single_rank_grid((4, 4, 4)), 0, 0)


def test_composition_is_the_product() -> None:
    a, b = AffineCoupling(GRID, 0, hidden=(2,)), GlobalRescale(GRID)
    _randomise(a)
    _randomise(b)
    comp = Composition(GRID, [a, b])
    x = _scalars(2)
    ua, lda = a(x)
    ub, ldb = b(ua)
    u, ld = comp(x)
    assert torch.allclose(u, ub, atol=1e-14) and torch.allclose(ld, lda + ldb, atol=1e-12)


@pytest.mark.parametrize("shape,k", [((6,), 3), ((4, 8), 3), ((4, 4), 1), ((2, 4, 2, 4), 3)])
def test_conv_at_sites_equals_the_full_convolution(shape, k):
    """LatticeConv.at_sites / ConvNet.at_sites give forward() at the chosen sites (values and
    gradients), in 1D, 2D (also k = 1) and 4D (the generic convolution)."""
    from kernels.flows.phi4 import ConvNet

    grid = single_rank_grid(shape)
    torch.manual_seed(3)
    net = ConvNet(grid, 2, 5, hidden=(3,), kernel_size=k).double()
    x = torch.randn((2, 2, *shape), dtype=torch.float64, requires_grad=True)
    n = math.prod(shape)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: max(1, n // 3)]
    full = net(x).reshape(2, 5, n)[:, :, index]
    some = net.at_sites(x, index)
    assert some.shape == (2, 5, index.numel())
    assert torch.allclose(some, full, atol=1e-13, rtol=0)
    w = torch.randn_like(full)
    g_full = torch.autograd.grad((w * full).sum(), [x, *net.parameters()])
    g_some = torch.autograd.grad((w * some).sum(), [x, *net.parameters()])
    for a, b in zip(g_full, g_some):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
