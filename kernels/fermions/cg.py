"""Conjugate gradient for a batch of Hermitian positive-definite systems ``A x = b``
(the normal equations ``D^+ D x = b`` of the Wilson-Dirac operator), distributed.

Every chain of the batch runs its own CG (Hestenes & Stiefel 1952): per iteration

    alpha = (r, r) / (p, A p),  x += alpha p,  r -= alpha A p,
    beta = (r', r') / (r, r),   p = r' + beta p,

and stops when its recursive residual satisfies ``|r| <= tol |b|``; a stopped chain is frozen
(its step lengths are zero) while the others go on.

Reproducible dot products (:func:`grid_independent_sum`): the per-site values (spin summed
locally first) are summed over the lattice with the exact, correctly rounded
``parallel.lattice_sum`` (one vectorized local pass and one integer ``Allreduce``), so the
result is a pure function of the global field, bit for bit the same on every process grid.
Hence iterates, iteration counts and convergence decisions (and HMC configurations) are
identical on every process grid.

At the end the *true* residual ``|b - A x| / |b|`` is computed; chains whose true residual is
above ``tol`` (the recursion drifted) restart from their ``x`` while iterations remain
(``max_iter`` counts all iterations of a chain). A chain converged iff its true relative
residual is ``<= tol``; a zero right-hand side gives ``x = 0``, converged, in 0 iterations.
Non-finite systems (NaN links) end unconverged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from parallel import ProcessGrid, lattice_sum

Operator = Callable[[torch.Tensor], torch.Tensor]


class CGNotConverged(RuntimeError):
    """The conjugate-gradient solver did not reach its tolerance for some chains."""


@dataclass
class CGResult:
    """Solution and per-chain diagnostics (all ``(B,)`` tensors are global)."""

    x: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    #: true relative residual ``|b - A x| / |b|`` at the end
    residual: torch.Tensor

    def check(self, what: str = "CG") -> None:
        """Raise :class:`CGNotConverged` naming the chains that did not converge."""
        bad = torch.nonzero(~self.converged).flatten().tolist()
        if bad:
            res = [float(self.residual[b]) for b in bad]
            raise CGNotConverged(
                f"{what}: no convergence for chain(s) {bad} after "
                f"{[int(self.iterations[b]) for b in bad]} iterations (true relative residuals "
                f"{res}); raise the iteration cap or check kappa (near critical D^+ D is "
                f"ill-conditioned)"
            )


def grid_independent_sum(x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """Sum of ``x`` (``(B, *local)``, real) over the global lattice per chain, bit for bit the
    same on every process grid (see the module docstring)."""
    return lattice_sum(x.detach(), grid, 1)


def norm2(v: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``(v, v) = sum_x sum_s |v_s(x)|^2`` per chain for spinors ``(B, 2, *local)``."""
    return grid_independent_sum((v.real * v.real + v.imag * v.imag).sum(dim=1), grid)


def redot(a: torch.Tensor, b: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``Re (a, b) = Re sum_x sum_s a_s(x)^* b_s(x)`` per chain."""
    return grid_independent_sum((a.real * b.real + a.imag * b.imag).sum(dim=1), grid)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view((-1,) + (1,) * (like.ndim - 1)).to(like.real.dtype)


def conjugate_gradient(
    apply_a: Operator,
    b: torch.Tensor,
    grid: ProcessGrid,
    tol: float = 1e-10,
    max_iter: int = 1000,
    max_restarts: int = 3,
) -> CGResult:
    """Solve ``A x = b`` per chain (``A`` Hermitian positive definite) from ``x = 0``."""
    if not tol > 0:
        raise ValueError(f"CG tolerance must be > 0, got {tol}")
    if max_iter < 1:
        raise ValueError(f"CG iteration cap must be >= 1, got {max_iter}")
    batch = b.shape[0]
    b = b.detach()
    bb = norm2(b, grid)
    target = (tol * tol) * bb
    x = torch.zeros_like(b)
    iters = torch.zeros(batch, dtype=torch.int64, device=b.device)
    r = b.clone()
    rr = bb.clone()
    for _restart in range(max_restarts + 1):
        active = (rr > target) & (iters < max_iter)
        p = r.clone()
        while bool(active.any()):
            ap = apply_a(p)
            pap = redot(p, ap, grid)
            ok = active & (pap > 0)
            alpha = torch.where(ok, rr / torch.where(ok, pap, torch.ones_like(pap)), 0.0)
            x = x + _bcast(alpha, x) * p
            r = r - _bcast(alpha, r) * ap
            rr_new = norm2(r, grid)
            iters = iters + active.to(iters.dtype)
            beta = torch.where(ok, rr_new / torch.where(ok, rr, torch.ones_like(rr)), 0.0)
            p = r + _bcast(beta, p) * p
            rr = torch.where(active, rr_new, rr)
            # a non-positive or NaN curvature ends the chain (unconverged)
            active = ok & (rr_new > target) & (iters < max_iter)
        r = b - apply_a(x)
        rr = norm2(r, grid)
        if not bool(((rr > target) & (iters < max_iter) & torch.isfinite(rr)).any()):
            break
    residual = torch.sqrt(rr / torch.where(bb > 0, bb, torch.ones_like(bb)))
    converged = torch.isfinite(residual) & (rr <= target)
    return CGResult(x=x, iterations=iters, converged=converged, residual=residual)
