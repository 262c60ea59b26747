"""Parallel-transport convolution: a site-by-site reference, gauge covariance, autograd.

The reference is an independent loop over the sites of a small 2D lattice with explicit
global neighbour coordinates (periodic, and antiperiodic in time for the fermion case).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from kernels.flows.transport import ParallelTransportConv
from kernels.groups import haar_su_n
from kernels.groups.su_n import dagger
from kernels.theories.su3 import SU3Gauge, gauge_transform
from parallel import single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG


def _psi(grid, batch, chans, rep, seed=4):
    trail = (3, 2) if rep == "fundamental" else (3, 3, 2)
    x = SiteRNG(seed).normal(grid, PURPOSE_USER, 1, batch, lead=(chans,), trail=trail)
    return torch.complex(x[..., 0], x[..., 1])


def _gauge(grid, batch, seed=9):
    return haar_su_n(SiteRNG(seed).normal(grid, PURPOSE_USER, 2, batch, trail=(3, 3, 2)))


def _rotate(psi, g, rep):
    gg = g.unsqueeze(1)
    if rep == "fundamental":
        return (gg @ psi.unsqueeze(-1)).squeeze(-1)
    return gg @ psi @ dagger(gg)


def _reference(layer, psi, u, shape, antiperiodic_t):
    """Site loop: out(x) = W0 psi(x) + sum_mu Wf U_mu(x) psi(x+mu) + Wb U_mu(x-mu)^+ psi(x-mu)."""
    adj = layer.representation == "adjoint"
    out = torch.zeros(psi.shape[0], layer.weight_0.shape[0], *psi.shape[2:], dtype=psi.dtype)
    nd = len(shape)
    w0 = layer.weight_0.detach().to(psi.dtype)
    wf = layer.weight_fwd.detach().to(psi.dtype)
    wb = layer.weight_bwd.detach().to(psi.dtype)

    def site(x, mu, k):
        y = list(x)
        y[mu] += k
        sign = 1.0
        if antiperiodic_t and mu == nd - 1 and not 0 <= y[mu] < shape[mu]:
            sign = -1.0
        y[mu] %= shape[mu]
        return tuple(y), sign

    def at(f, x):
        return f[(slice(None), slice(None)) + x]

    for x in itertools.product(*[range(n) for n in shape]):
        acc = torch.einsum("oc,bc...->bo...", w0, at(psi, x))
        for mu in range(nd):
            y, s = site(x, mu, +1)
            link = u[(slice(None), mu) + x].unsqueeze(1)
            nb = at(psi, y)
            t = link @ nb @ dagger(link) if adj else (link @ nb.unsqueeze(-1)).squeeze(-1)
            acc = acc + s * torch.einsum("oc,bc...->bo...", wf[mu], t)
            y, s = site(x, mu, -1)
            link = u[(slice(None), mu) + y].unsqueeze(1)
            nb = at(psi, y)
            t = dagger(link) @ nb @ link if adj else (dagger(link) @ nb.unsqueeze(-1)).squeeze(-1)
            acc = acc + s * torch.einsum("oc,bc...->bo...", wb[mu], t)
        out[(slice(None), slice(None)) + x] = acc
    return out


@pytest.mark.parametrize("rep", ["fundamental", "adjoint"])
@pytest.mark.parametrize("antiperiodic_t", [False, True])
def test_equals_site_loop_reference(rep, antiperiodic_t):
    shape = (3, 4)
    grid = single_rank_grid(shape)
    torch.manual_seed(0)
    bc = [1, -1] if antiperiodic_t else None
    layer = ParallelTransportConv(grid, 2, 3, representation=rep, bc=bc)
    u = SU3Gauge(grid, 1.0).hot_start(SiteRNG(1), 0, 2)
    psi = _psi(grid, 2, 2, rep)
    with torch.no_grad():
        got = layer(psi, u)
    ref = _reference(layer, psi, u, shape, antiperiodic_t)
    assert got.shape == (2, 3) + psi.shape[2:]
    assert (got - ref).abs().max() < 1e-13


@pytest.mark.parametrize("rep", ["fundamental", "adjoint"])
def test_gauge_covariance_4d(rep):
    grid = single_rank_grid((4, 2, 2, 2))
    torch.manual_seed(1)
    layer = ParallelTransportConv(grid, 2, 2, representation=rep, bc=[1, 1, 1, -1])
    u = SU3Gauge(grid, 1.0).hot_start(SiteRNG(3), 0, 2)
    psi = _psi(grid, 2, 2, rep)
    g = _gauge(grid, 2)
    with torch.no_grad():
        out = layer(psi, u)
        out_g = layer(_rotate(psi, g, rep), gauge_transform(u, g, grid))
    assert out.abs().max() > 0.1
    assert (out_g - _rotate(out, g, rep)).abs().max() < 1e-13
    # not trivially covariant: without transporting the neighbours it would fail
    with torch.no_grad():
        eye = SU3Gauge(grid, 1.0).cold_start(2)
        wrong = layer(_rotate(psi, g, rep), eye)
    assert (wrong - _rotate(layer(psi, eye), g, rep)).abs().max() > 1e-2


def test_autograd_gradcheck_and_errors():
    grid = single_rank_grid((2, 2))
    torch.manual_seed(2)
    layer = ParallelTransportConv(grid, 1, 1)
    u = SU3Gauge(grid, 1.0).hot_start(SiteRNG(5), 0, 1)
    psi = _psi(grid, 1, 1, "fundamental").requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: layer(p, u), (psi,))
    out = layer(psi, u)
    out.abs().square().sum().backward()
    assert layer.weight_fwd.grad is not None and layer.weight_fwd.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="representation"):
        ParallelTransportConv(grid, 1, 1, representation="spinor")
    with pytest.raises(ValueError, match="needs 5 dims"):
        layer(psi.detach()[..., None], u)
