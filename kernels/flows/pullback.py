"""The trivialized force: a physical force pulled back through a flow (one implementation).

With ``U = F(V)`` and ``S~(V) = S(F(V)) - log|det dF/dV|(V)`` the force in the variable ``V`` is
the vector-Jacobian product of the *physical* force through the flow,

    dS~/dV = (dU/dV)^T g(U) - d log|det dF/dV| / dV,        g = dS/dU (Euclidean cotangent),

so an analytic force (a gauge force, or a fermion force from a solver) is pulled back without
differentiating through the action or the solver: one flow forward and one backward.

Conventions (kernels/theory.py): forces live in the theory's momentum space. For real fields
(phi^4, U(1) angles) the force *is* the Euclidean gradient. For SU(N) links the force is the
left Lie derivative ``F = sum_a T_a d/dw_a S(exp(w T) U)`` (:mod:`kernels.flows.lie`); torch's
complex gradient ``G`` with ``dS = Re Tr(G^+ dU)`` that has the same derivatives along the
tangent directions ``dU = T_a U`` is ``G = 2 F U`` (check: ``-TA(U G^+)/2 = -TA(-2F)/2 = F``
for anti-Hermitian traceless ``F``), and the force in ``V`` is ``-TA(V G_V^+)/2`` of the
pulled-back gradient ``G_V``. A theory can override both maps with ``gradient_from_force(u,
f)`` and ``force_from_gradient(v, g)``. The flow maps the group to itself, so only the tangent
part of ``G`` matters.

With ``create_graph=True`` the result stays differentiable with respect to the flow parameters
(the physical force is then evaluated on the differentiable ``U``): force matching and the
force-norm losses train through it by double backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import Flow
from .lie import lie_force_from_gradient

ForceFn = Callable[[torch.Tensor], torch.Tensor]


def _lie_fused(*ts: torch.Tensor):
    """:mod:`kernels.flows.lie_fused` when it applies to ``ts`` (numba, CPU complex128 3x3,
    no graph to build), else None."""
    try:
        from . import lie_fused
    except ImportError:
        return None
    return lie_fused if lie_fused.available(*ts) else None


def gradient_from_force(theory, u: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    """Euclidean cotangent ``g = dS/dU`` of a momentum-space force (see module docstring)."""
    hook = getattr(theory, "gradient_from_force", None)
    if hook is not None:
        return hook(u, force)
    if u.is_complex():
        fused = _lie_fused(u, force)
        return fused.gradient_from_force(u, force) if fused else 2.0 * (force @ u)
    return force


def force_from_gradient(theory, v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Momentum-space force of a Euclidean gradient ``dS/dV`` (the inverse map)."""
    hook = getattr(theory, "force_from_gradient", None)
    if hook is not None:
        return hook(v, grad)
    if v.is_complex():
        fused = _lie_fused(v, grad)
        return fused.lie_force_from_gradient(v, grad) if fused else lie_force_from_gradient(v, grad)
    return grad


def pullback_force(
    flow: Flow,
    theory,
    v: torch.Tensor,
    physical_force: ForceFn | None,
    *,
    with_logdet: bool = True,
    create_graph: bool = False,
) -> torch.Tensor:
    """``dS~/dV`` for the part of the action whose physical force is ``physical_force``
    (``None``: no physical part), minus the log-det gradient if ``with_logdet``.

    ``theory`` is the *physical* theory (it supplies the tangent-space conventions). The
    result has the local shape of ``v``; detached unless ``create_graph``.
    """
    with torch.enable_grad():
        x = v.detach().contiguous().requires_grad_(True)  # one copy, not one per fused kernel
        # the per-site log-det terms: the gradient of their sum is the same without the
        # exact global sum (whose backward broadcasts the cotangent), which costs a reduction
        local = getattr(flow, "forward_local", None)
        u, logdet = local(x) if local is not None else flow(x)
        outputs: list[torch.Tensor] = []
        cotangents: list[torch.Tensor] = []
        if physical_force is not None:
            at = u if create_graph else u.detach()
            f = physical_force(at)
            outputs.append(u)
            cotangents.append(gradient_from_force(theory, at, f))
        if with_logdet:
            outputs.append(logdet)
            cotangents.append(torch.full_like(logdet, -1.0))  # one pass, not ones and a negation
        if not outputs:
            raise ValueError("pullback_force needs a physical force or the log-det")
        (grad,) = torch.autograd.grad(
            outputs, x, cotangents, create_graph=create_graph, allow_unused=True
        )
    if grad is None:  # e.g. the log-det alone of a volume-preserving flow
        grad = torch.zeros_like(x)
    f_v = force_from_gradient(theory, x if create_graph else x.detach(), grad)
    return f_v if create_graph else f_v.detach()
