"""One pass of the L2HMC layers for a batch of chains with mixed directions (shared by the
U(1)/phi^4 model of :mod:`.layers` and the SU(3) model of :mod:`.su3`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ForceFn = Callable[[torch.Tensor], torch.Tensor]


def _merge(fwd: torch.Tensor, bwd: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows ``fwd`` from ``a`` and rows ``bwd`` from ``b`` (autograd-aware)."""
    order = torch.argsort(torch.cat([fwd, bwd]))
    return torch.cat([a, b])[order]


def run_layers(
    model: Any, x: torch.Tensor, v: torch.Tensor, direction: torch.Tensor, force: ForceFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The L2HMC map of every chain in one pass: chains with ``direction > 0`` run layers
    ``0 .. N-1`` forward, the others the inverse layers ``N-1 .. 0``.

    Both sequences evaluate the force at the same points (start, then after the x-updates of
    each layer), so the force is always evaluated on the *whole* batch: theories whose action
    holds per-chain auxiliary fields (pseudofermions, drawn for the batch) work unchanged, and
    a trajectory costs ``N + 1`` force evaluations whatever the directions. The networks run on
    the chains of each direction separately (they act chain by chain). ``direction`` must be
    the same on every rank of a lattice (site-keyed chain draws). ``model`` provides
    ``to_internal``, ``from_internal``, ``v_update(k, which, x, v, f, inverse)`` and
    ``x_updates(k, x, v, inverse)``, each update returning its per-site log-Jacobian.
    """
    n = model.n_layers
    x, v = model.to_internal(x), model.to_internal(v)
    direction = (direction.real if direction.is_complex() else direction).to("cpu")
    fwd = torch.nonzero(direction > 0).flatten().to(x.device)
    bwd = torch.nonzero(direction <= 0).flatten().to(x.device)
    groups = [(idx, inv) for idx, inv in ((fwd, False), (bwd, True)) if len(idx)]

    def per_group(fn, *tensors):
        if len(groups) == 1:
            return fn(groups[0][1], *tensors)
        outs = [fn(inv, *(t[idx] for t in tensors)) for idx, inv in groups]
        return tuple(_merge(fwd, bwd, a, b) for a, b in zip(*outs, strict=True))

    def force_int(xi):
        return model.to_internal(force(model.from_internal(xi)))

    logj = None
    f = force_int(x)
    n_force = 1
    for i in range(n):

        def v_first(inv, x_, v_, f_, i=i):
            k = n - 1 - i if inv else i
            return model.v_update(k, 1 if inv else 0, x_, v_, f_, inv)

        def x_all(inv, x_, v_, i=i):
            k = n - 1 - i if inv else i
            return model.x_updates(k, x_, v_, inv)

        def v_last(inv, x_, v_, f_, i=i):
            k = n - 1 - i if inv else i
            return model.v_update(k, 0 if inv else 1, x_, v_, f_, inv)

        v, lj1 = per_group(v_first, x, v, f)
        x, lj2 = per_group(x_all, x, v)
        f = force_int(x)
        n_force += 1
        v, lj3 = per_group(v_last, x, v, f)
        step = lj1 + lj2 + lj3
        logj = step if logj is None else logj + step
    return model.from_internal(x), model.from_internal(v), logj, n_force
