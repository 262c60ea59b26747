"""A differentiable solve ``x = (D^+ D)^{-1} b`` (implicit differentiation, any order) and the
differentiable pseudofermion force built on it (NTHMC training on the full force, issue 15).

Convention (docs/conventions.md, "Schwinger model"): ``D = D(theta; kappa)`` the 2D Wilson-Dirac
operator of :mod:`kernels.fermions.wilson`, ``M = D^+ D`` Hermitian positive definite, spinors
``(B, 2, Lx, Lt)`` complex, angles ``theta`` ``(B, 2, Lx, Lt)`` real. For spinors ``a, b``

    G_mu(x)[a, b; k] = d/dtheta_mu(x) 2 Re (a, D(k) b)            (a, b held fixed)

(:func:`kernels.theories.schwinger.hopping_derivative`).

**Implicit derivative.** ``x = M^{-1} b`` is found by CG (no gradient through its iterations).
With torch's convention for a real loss ``L`` (the gradient ``g`` of a complex tensor ``z`` is
``dL/dRe z + i dL/dIm z``, so ``dL = Re (g, dz)``) and ``dx = M^{-1} (db - dM x)``:

    lambda = M^{-1} g                                    (a second CG solve)
    dL/db      = lambda
    dL/dtheta  = -d/dtheta Re (lambda, M x) = -(1/2) (G[D x, lambda] + G[D lambda, x])

The backward is written with differentiable operations and calls the same solve for
``lambda``, so it is itself differentiable (double backward and beyond): the loss gradient of a
force-norm objective that contains the pseudofermion force needs exactly that.

**Differentiable pseudofermion force** (:func:`pseudofermion_force`). With the pseudofermion
``phi`` held fixed (as in a molecular-dynamics trajectory) and ``X = M^{-1} eta``, ``Y = D X``:

    plain term  (eta = phi):            F = -G[Y, X; k]
    ratio term  (eta = D_1^+ phi):      F =  G[phi, X; k_1] - G[Y, X; k]

(the formulas of :mod:`kernels.theories.schwinger`), evaluated with differentiable links and
the differentiable ``X``: the value equals the analytic force and its derivative with respect
to ``theta`` is the exact Hessian-vector product of ``S_pf``.

A solve that does not converge raises :class:`kernels.fermions.cg.CGNotConverged` (training has
no Metropolis step to reject a bad force).
"""

from __future__ import annotations

from typing import Any

import torch

from parallel import ProcessGrid

from .cg import conjugate_gradient
from .wilson import FERMION_BC, WilsonDirac


class SolveStats:
    """CG work of the differentiable solves: ``solves`` and summed ``iterations`` (all chains)."""

    def __init__(self) -> None:
        self.solves = 0
        self.iterations = 0

    def add(self, iterations: torch.Tensor) -> None:
        """Count one solve with per-chain ``iterations``."""
        self.solves += 1
        self.iterations += int(iterations.sum())


class _NormalSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, theta, rhs, kappa, grid, tol, max_iter, stats, bc):
        op = WilsonDirac(grid, theta.detach(), kappa, bc=bc)
        res = conjugate_gradient(op.normal, rhs.detach(), grid, tol, max_iter)
        res.check(f"differentiable solve (D^+D)^-1 b at kappa={kappa}")
        if stats is not None:
            stats.add(res.iterations)
        ctx.args = (kappa, grid, tol, max_iter, stats, bc)
        ctx.save_for_backward(theta, res.x)
        return res.x

    @staticmethod
    def backward(ctx: Any, g):
        theta, x = ctx.saved_tensors
        kappa, grid, tol, max_iter, stats, bc = ctx.args
        lam = _NormalSolve.apply(theta, g, kappa, grid, tol, max_iter, stats, bc)
        grad_theta = None
        if ctx.needs_input_grad[0]:
            from ..theories.schwinger import hopping_derivative

            op = WilsonDirac(grid, theta, kappa, bc=bc, differentiable=True)
            grad_theta = -0.5 * (
                hopping_derivative(op, op.apply(x), lam, kappa)
                + hopping_derivative(op, op.apply(lam), x, kappa)
            )
        grad_rhs = lam if ctx.needs_input_grad[1] else None
        return grad_theta, grad_rhs, None, None, None, None, None, None


def normal_solve(
    theta: torch.Tensor,
    rhs: torch.Tensor,
    kappa: float,
    grid: ProcessGrid,
    tol: float = 1e-10,
    max_iter: int = 2000,
    stats: SolveStats | None = None,
    bc: tuple[str, str] = FERMION_BC,
) -> torch.Tensor:
    """``x = (D^+ D)^{-1} rhs`` by CG, differentiable in ``theta`` and ``rhs`` to any order
    (module docstring); ``stats`` accumulates the CG work of the forward and backward solves."""
    return _NormalSolve.apply(theta, rhs, float(kappa), grid, float(tol), int(max_iter), stats, bc)


def pseudofermion_force(
    theory, theta: torch.Tensor, stats: SolveStats | None = None
) -> torch.Tensor:
    """The summed force ``dS_pf/dtheta`` of every pseudofermion term (plain and Hasenbusch
    ratio) of a :class:`kernels.theories.schwinger.Schwinger` theory with its current
    pseudofermions, differentiable in ``theta`` (module docstring). Real, shape of ``theta``."""
    out = None
    for term in theory.pseudofermion_terms():
        op, eta = term._eta(theta, differentiable=True)
        x = normal_solve(
            theta, eta, term.kappa, theory.grid, theory.cg_tol, theory.cg_max_iter, stats
        )
        f = term.force_of_solution(theta, op, x, differentiable=True)
        out = f if out is None else out + f
    if out is None:
        return torch.zeros_like(theta)
    return out.to(theta.dtype)
