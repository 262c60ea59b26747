"""Reweighting diagnostics of a flow: ESS and the reverse-KL estimate.

For samples ``U ~ q`` (the flow's model density) the reweighting factors to the target
``p(U) = exp(-S(U)) / Z`` are ``w = exp(log_w)``, ``log_w = -S(U) - log q(U)``. Then

* ESS (per sample, in ``(0, 1]``): ``ESS = (sum w)^2 / (N sum w^2)``
  (Kong 1992; Albergo et al. 2019);
* reverse KL ``KL(q || p) = E_q[log q + S] + log Z`` with ``log Z`` estimated by
  ``log mean w``: ``KL_est = log mean w - mean log_w >= 0`` (Jensen), the exact KL for
  ``N -> infinity``.

Both are computed over the whole batch of every replica group (the per-chain ``log_w`` are
global lattice sums, identical on the ranks of a domain group; the replica groups hold
different chains and are gathered over ``grid.replica_comm``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from parallel import ProcessGrid


def gather_replicas(x: torch.Tensor, grid: ProcessGrid | None) -> torch.Tensor:
    """Concatenate a per-chain tensor ``(B,)`` over all replica groups (float64, detached)."""
    local = x.detach().to(torch.float64).cpu().reshape(-1)
    if grid is None or grid.replicas == 1:
        return local
    parts = grid.replica_comm.allgather(local.numpy())
    return torch.from_numpy(np.concatenate(parts))


def ess_from_log_weights(log_w: torch.Tensor, grid: ProcessGrid | None = None) -> float:
    """``(sum w)^2 / (N sum w^2)`` over the batch of all replicas (stable in log space)."""
    lw = gather_replicas(log_w, grid)
    lw = lw[~torch.isnan(lw)]
    if lw.numel() == 0:
        return float("nan")
    num = 2.0 * torch.logsumexp(lw, 0)
    den = torch.logsumexp(2.0 * lw, 0) + math.log(lw.numel())
    return float(torch.exp(num - den))


def kl_estimate(log_w: torch.Tensor, grid: ProcessGrid | None = None) -> float:
    """``log mean w - mean log w`` (>= 0; the reverse KL up to the finite-N bias)."""
    lw = gather_replicas(log_w, grid)
    n = lw.numel()
    return float(torch.logsumexp(lw, 0) - math.log(n) - lw.mean())


def replica_mean(x: float, grid: ProcessGrid | None) -> float:
    """Average a per-replica scalar over the replica groups."""
    if grid is None or grid.replicas == 1:
        return float(x)
    return float(grid.replica_comm.allreduce(float(x))) / grid.replicas
