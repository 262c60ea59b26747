"""The fused per-link conversions of the SU(3) pull-back (kernels/flows/lie_fused.py) against
the eager formulas, and the pulled-back force with and without them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from kernels.flows import lie_fused, pullback  # noqa: E402
from kernels.flows.lie import lie_force_from_gradient  # noqa: E402
from kernels.flows.su3 import su3_stout_flow  # noqa: E402
from kernels.groups.su_n import project_ta  # noqa: E402
from kernels.theories.su3 import SU3Gauge  # noqa: E402
from parallel import single_rank_grid  # noqa: E402
from parallel.rng import SiteRNG  # noqa: E402


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, 3, 3, dtype=torch.complex128, generator=gen)


def test_conversions_equal_the_eager_formulas():
    gen = torch.Generator().manual_seed(3)
    u, g, f = _rand(gen, 2, 5, 7), _rand(gen, 2, 5, 7), _rand(gen, 2, 5, 7)
    assert lie_fused.available(u, g)
    got = lie_fused.lie_force_from_gradient(u, g)
    ref = lie_force_from_gradient(u, g)
    assert got.shape == u.shape and (got - ref).abs().max() < 1e-14
    assert (got - -0.5 * project_ta(u @ g.mH)).abs().max() < 1e-14
    got = lie_fused.gradient_from_force(u, f)
    assert (got - 2.0 * (f @ u)).abs().max() < 1e-14
    # conjugate views and non-contiguous inputs are read as their values
    gc = g.conj().transpose(-1, -2)
    ref = lie_force_from_gradient(u, gc)
    assert (lie_fused.lie_force_from_gradient(u, gc) - ref).abs().max() < 1e-14


def test_not_used_where_a_graph_is_wanted_or_the_type_differs():
    gen = torch.Generator().manual_seed(4)
    u, g = _rand(gen, 4), _rand(gen, 4)
    assert not lie_fused.available(u.requires_grad_(True), g)
    with torch.no_grad():
        assert lie_fused.available(u, g)
    assert not lie_fused.available(u.detach().to(torch.complex64), g.to(torch.complex64))
    assert not lie_fused.available(u.detach()[..., :2, :2], g[..., :2, :2])
    assert not lie_fused.available(u.detach(), g[:2])  # shapes differ


def test_pullback_force_is_the_same_with_and_without_the_fused_conversions(monkeypatch):
    grid = single_rank_grid((4, 4, 4, 4))
    theory = SU3Gauge(grid, beta=5.7)
    torch.manual_seed(2)
    flow = su3_stout_flow(grid, n_layers=2, init_scale=0.5)
    v = theory.hot_start(SiteRNG(5), 0, 2, 2)
    calls = []
    for name in ("lie_force_from_gradient", "gradient_from_force"):
        fn = getattr(lie_fused, name)
        monkeypatch.setattr(lie_fused, name, lambda *a, fn=fn, n=name: calls.append(n) or fn(*a))
    fast = pullback.pullback_force(flow, theory, v, theory.force)
    assert sorted(calls) == ["gradient_from_force", "lie_force_from_gradient"]
    monkeypatch.setattr(lie_fused, "available", lambda *ts: False)
    slow = pullback.pullback_force(flow, theory, v, theory.force)
    assert float(slow.abs().max()) > 1e-2
    assert (fast - slow).abs().max() < 1e-12 * float(slow.abs().max())
