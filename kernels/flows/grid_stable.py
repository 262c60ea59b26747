"""Elementwise functions that round alike on every process grid.

torch's CPU kernels of some elementwise functions round differently in their vectorized loop
and in the scalar loop that finishes a tensor whose size is not a multiple of the vector
width; which loop a site takes then depends on the size of the local block, so a flow or
network using them would give records that differ between process grids in the last bits.
Which functions do so depends on the CPU (docs/conventions.md, "Reductions"): on the dev VM's
Zen 4 host with torch's AVX512 kernels ``log1p``, ``softplus``, ``sigmoid``, ``silu``,
``gelu`` and ``elu`` among others; ``exp``, ``log``, ``tanh``, ``erf`` and the arithmetic
operations do not. The functions here are built from the latter (tests/test_grid_stable.py
checks both properties: the same bits for any tensor size, and agreement with torch to a few
ulp), and autograd differentiates them as written.

* ``log1p(x) = log(u) - ((u - 1) - x) / u`` with ``u = 1 + x`` (the rounding error of ``u``
  corrected to first order, which makes it accurate to a few ulp for every ``x > -1``;
  ``u = 1`` gives ``x``); where the correction is not finite (``x = -1``, ``x = inf``) it is
  ``log(u)``;
* ``softplus(x) = x`` for ``x > 20`` (torch's threshold), else ``log1p(exp(x))``;
* ``sigmoid(x) = 1 / (1 + exp(-x))``, ``silu(x) = x sigmoid(x)``;
* ``gelu(x) = x (1 + erf(x / sqrt 2)) / 2``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def log1p(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + x)``, accurate for small ``x`` (module docstring)."""
    u = 1.0 + x
    log_u = torch.log(u)
    corrected = log_u - ((u - 1.0) - x) / u
    return torch.where(torch.isfinite(corrected), corrected, log_u)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` (``x`` itself above 20, as ``torch.nn.functional.softplus``)."""
    return torch.where(x > 20.0, x, log1p(torch.exp(torch.clamp(x, max=20.0))))


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + e^-x)``."""
    return 1.0 / (1.0 + torch.exp(-x))


class Softplus(nn.Module):
    """:func:`softplus` as a module (an activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return softplus(x)


class SiLU(nn.Module):
    """``x sigmoid(x)`` as a module (an activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * sigmoid(x)


class GELU(nn.Module):
    """``x (1 + erf(x / sqrt 2)) / 2`` as a module (an activation; torch's exact GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
