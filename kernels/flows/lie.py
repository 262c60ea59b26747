"""Lie derivatives of actions on SU(N) link fields through autograd.

Convention (kernels/theory.py, docs/conventions-su3.md): generators ``T_a = i lambda_a / 2``,
``Tr T_a T_b = -delta_ab / 2``; the force of an action ``S(U)`` is the *left Lie derivative*

    F(U) = sum_a T_a d/dw_a S(exp(w_b T_b) U) |_{w = 0},

one traceless anti-Hermitian 3x3 matrix per link, with components ``f_a = -2 Re Tr(T_a F)``.

Derivation used here. torch's gradient of a real ``S`` with respect to a complex tensor ``U``
is ``G = dS/dRe U + i dS/dIm U``, so that ``dS = Re sum_ij conj(G_ij) dU_ij = Re Tr(G^+ dU)``.
Along ``dU = T_a U dw_a`` this gives ``dS/dw_a = Re Tr(T_a U G^+)`` and, with the identity
``sum_a T_a Re Tr(T_a M) = -TA(M)/2`` (:mod:`kernels.groups.su_n`),

    F = -TA(U G^+) / 2 = TA(G U^+) / 2.

Only the derivative along the tangent directions ``T_a U`` enters, so ``S`` may be any
differentiable function of the 2 N^2 real entries of ``U`` (what it does off the group does
not matter). This is the same as perturbing ``U -> (1 + X) U`` with ``X = 0`` requiring grad
and projecting ``dS/dX = G U^+`` onto the algebra: ``F = TA(dS/dX) / 2``.

Check: the Wilson action ``S = -(beta/3) Re Tr(U A) + ...`` has ``G = -(beta/3) A^+`` and
``F = (beta/6) TA(U A)``, the analytic :func:`kernels.theories.su3.gauge_force`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..groups.su_n import dagger, mm, project_ta

__all__ = ["lie_autograd_force", "lie_force_from_gradient"]


def lie_force_from_gradient(u: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Left Lie derivative ``F = -TA(U G^+)/2`` from torch's complex gradient ``G = dS/dU``.

    Shapes ``(..., N, N)``; differentiable (used with ``create_graph`` for force matching).
    """
    return -0.5 * project_ta(mm(u, dagger(grad)))


def lie_autograd_force(
    action_fn: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """``F = sum_a T_a d/dw_a S(exp(w_b T_b) U)`` at ``w = 0`` by autograd, shape of ``u``.

    ``action_fn(u)`` returns the action per chain (any shape; it is summed, so chains must not
    couple). With ``create_graph=False`` the result is detached from ``u``; with
    ``create_graph=True`` it stays differentiable with respect to ``u`` (if ``u`` requires
    grad) and to the parameters ``action_fn`` uses (double backward, e.g. force matching).
    On a distributed lattice ``action_fn`` must return the global action (all-reduced with
    :func:`parallel.global_sum`); the result is then the local block of the global force.
    """
    with torch.enable_grad():
        x = u if (create_graph and u.requires_grad) else u.detach().requires_grad_(True)
        s = action_fn(x)
        (grad,) = torch.autograd.grad(s.sum(), x, create_graph=create_graph)
    force = lie_force_from_gradient(x if create_graph else u.detach(), grad)
    return force if create_graph else force.detach()
