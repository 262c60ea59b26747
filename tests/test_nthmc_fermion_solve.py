"""The differentiable solve ``x = (D^+ D)^{-1} b`` and pseudofermion force of
kernels/fermions/implicit.py (issue 15 item 5: NTHMC trained on the full Schwinger force).

Checked against the dense Wilson-Dirac matrix of tests/schwinger_reference.py (independent
numpy code), against central finite differences (torch ``gradcheck`` / ``gradgradcheck``:
first and second derivatives of the implicit solve), and the force against the analytic
force of the theory and the finite-difference Hessian of the action."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from schwinger_reference import dense_dirac

from kernels.fermions.implicit import SolveStats, normal_solve, pseudofermion_force
from kernels.theories.schwinger import Schwinger
from parallel import single_rank_grid
from parallel.rng import SiteRNG

KAPPA = 0.24


def _fields(shape=(4, 4), batch=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    theta = 0.6 * torch.randn((batch, 2, *shape), generator=g, dtype=torch.float64)
    b = torch.complex(
        torch.randn((batch, 2, *shape), generator=g, dtype=torch.float64),
        torch.randn((batch, 2, *shape), generator=g, dtype=torch.float64),
    )
    return theta, b


def test_normal_solve_matches_dense_solve():
    grid = single_rank_grid((4, 4))
    theta, b = _fields()
    stats = SolveStats()
    x = normal_solve(theta, b, KAPPA, grid, tol=1e-13, stats=stats)
    d = dense_dirac(theta.numpy(), KAPPA)
    for c in range(theta.shape[0]):
        m = d[c].conj().T @ d[c]
        ref = np.linalg.solve(m, b[c].numpy().reshape(-1))
        np.testing.assert_allclose(x[c].numpy().reshape(-1), ref, rtol=0, atol=1e-10)
    assert stats.solves == 1 and stats.iterations > 0


def test_normal_solve_gradient_against_dense_finite_differences():
    """d/dtheta of a real functional of x: the implicit backward against central differences
    of the dense solve (reference matrix, numpy)."""
    grid = single_rank_grid((4, 4))
    theta, b = _fields(batch=1)
    w = torch.randn(b.shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    th = theta.clone().requires_grad_(True)
    x = normal_solve(th, b, KAPPA, grid, tol=1e-14)
    (g_impl,) = torch.autograd.grad((w.conj() * x).real.sum(), th)

    def dense_functional(t: np.ndarray) -> float:
        d = dense_dirac(t, KAPPA)
        xs = np.linalg.solve(d.conj().T @ d, b[0].numpy().reshape(-1))
        return float((w[0].numpy().reshape(-1).conj() * xs).real.sum())

    h = 1e-5
    t0 = theta[0].numpy()
    num = np.zeros_like(t0)
    for idx in np.ndindex(t0.shape):
        tp, tm = t0.copy(), t0.copy()
        tp[idx] += h
        tm[idx] -= h
        num[idx] = (dense_functional(tp) - dense_functional(tm)) / (2 * h)
    np.testing.assert_allclose(g_impl[0].numpy(), num, rtol=0, atol=1e-7)


def test_normal_solve_first_and_second_derivatives_gradcheck():
    grid = single_rank_grid((2, 4))
    theta, b = _fields((2, 4), batch=1, seed=9)
    theta.requires_grad_(True)
    b.requires_grad_(True)

    def fn(t, r):
        return normal_solve(t, r, KAPPA, grid, tol=1e-14, max_iter=500)

    assert torch.autograd.gradcheck(fn, (theta, b), eps=1e-6, atol=1e-6, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (theta, b), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("hasenbusch", [(), (0.2,)])
def test_pseudofermion_force_value_and_hessian(hasenbusch):
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, 2.0, KAPPA, hasenbusch=hasenbusch, cg_tol=1e-13, cache_solves=False)
    rng = SiteRNG(3)
    theta = th.hot_start(rng, 0, 2)
    th.refresh(theta, rng, 1)
    names = [t.name for t in th.pseudofermion_terms()]
    analytic = th.term_force(names)(theta)
    f = pseudofermion_force(th, theta)
    torch.testing.assert_close(f, analytic, rtol=0, atol=1e-10)

    # Hessian-vector product by autograd through the implicit solve vs central differences of
    # the analytic force
    d = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x = theta.clone().requires_grad_(True)
    (hv,) = torch.autograd.grad((pseudofermion_force(th, x) * w).sum(), x)
    h = 1e-5
    fp = th.term_force(names)(theta + h * d)
    fm = th.term_force(names)(theta - h * d)
    num = ((fp - fm) * w).sum() / (2 * h)
    assert abs(float((hv * d).sum()) - float(num)) < 1e-6 * max(1.0, abs(float(num)))
