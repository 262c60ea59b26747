"""The overlapped SU(3) Wilson force on one rank: against central differences of the action
(independent of any force code), against the eager reference, and the ``overlap`` default
(``set_overlap`` / deck ``parallel.overlap``). Multi-rank checks: tests/mpi/test_su3_overlap_mpi.py.
"""

from __future__ import annotations

import pytest
import torch

from kernels.backends.eager import gauge_force
from kernels.groups.su_n import su_generators
from kernels.theories import su3
from kernels.theories.su3 import SU3Gauge, gauge_force_overlap
from parallel import single_rank_grid
from parallel.rng import SiteRNG


@pytest.fixture
def theory():
    th = SU3Gauge(single_rank_grid((2, 2, 2, 4)), 5.7, overlap=True)
    return th, th.hot_start(SiteRNG(3), 0, 1)


def test_force_equals_numerical_derivative(theory):
    """``F = sum_a T_a dS/dw_a`` at ``U -> exp(w T_a) U``: ``f_a = -2 Re Tr(T_a F)``."""
    th, u = theory
    f = th.force(u)
    gens = su_generators(3)
    eps = 1e-5
    for mu, site in ((0, (0, 0, 0, 0)), (3, (1, 0, 1, 3))):
        idx = (0, mu, *site)
        for a in (0, 4, 7):
            vals = []
            for s in (eps, -eps):
                v = u.clone()
                v[idx] = torch.linalg.matrix_exp(s * gens[a]) @ u[idx]
                vals.append(th.action(v).item())
            numeric = (vals[0] - vals[1]) / (2 * eps)
            analytic = -2 * torch.trace(gens[a] @ f[idx]).real.item()
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric))


def test_equals_eager_to_rounding(theory):
    th, u = theory
    got = gauge_force_overlap(u, th.grid, 5.7)
    ref = gauge_force(u, th.grid, 5.7)
    assert (got - ref).abs().max().item() <= 1e-13 * max(1.0, ref.abs().max().item())


def test_overlap_default_follows_set_overlap():
    grid = single_rank_grid((2, 2, 2, 2))
    before = su3._OVERLAP
    try:
        su3.set_overlap(False)
        assert not SU3Gauge(grid, 6.0).overlap
        su3.set_overlap(True)
        assert SU3Gauge(grid, 6.0).overlap
        assert not SU3Gauge(grid, 6.0, action="iwasaki").overlap  # a default: Wilson only
        assert not SU3Gauge(grid, 6.0, overlap=False).overlap
        with pytest.raises(ValueError, match="Wilson action only"):
            SU3Gauge(grid, 6.0, action="symanzik", overlap=True)
    finally:
        su3.set_overlap(before)


def test_fused_backend_keeps_its_own_exchange(monkeypatch):
    """``overlap`` selects the eager overlapped force on the eager backend only: under
    ``vnode`` the theory's force is the backend's (equal to eager to rounding) and an HMC
    trajectory keeps the resident layout, which overlaps its own face exchange."""
    pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    import kernels.backends as kb

    grid = single_rank_grid((4, 4, 4, 4))
    th = SU3Gauge(grid, 5.7, overlap=True)
    u = th.hot_start(SiteRNG(5), 0, 1)
    ref = gauge_force(u, grid, 5.7)
    calls = []
    monkeypatch.setattr(su3, "gauge_force_overlap", lambda *a: calls.append(a) or ref)
    assert th._overlapped()
    th.force(u)
    assert len(calls) == 1  # eager: the overlapped force
    before = kb.get_backend().name
    kb.set_backend("vnode")
    try:
        assert not th._overlapped()
        got = th.force(u)
        assert len(calls) == 1
        assert (got - ref).abs().max().item() <= 1e-13 * ref.abs().max().item()
        assert th.resident_md(u, [th.force]) is not None
    finally:
        kb.set_backend(before)
