"""Random inputs of the SU(3) stout layer's core, shared by its lane-kernel tests."""

from __future__ import annotations

import numpy as np
import torch

from kernels.groups.su_n import expm_su3, project_ta


def su3(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Random SU(3) matrices ``(*shape, 3, 3)`` (exponentials of random algebra elements)."""
    a = torch.randn(*shape, 3, 3, dtype=torch.complex128, generator=gen)
    return expm_su3(project_ta(a))


def reals(t: torch.Tensor) -> np.ndarray:
    """Float64 numpy view ``(..., 18)`` of complex 3x3 matrices."""
    return torch.view_as_real(t).flatten(-3).numpy()


def core_inputs(scale: float, b: int, n: int, nnu: int = 3, seed: int = 1):
    """``(planes, rho, x)``: plane sums ``P_nu = C^up_nu + C^dn_nu`` of random SU(3) staples
    ``(b, nnu, n, 3, 3)``, coefficients ``scale * N(0, 1)`` ``(b, nnu, n)``, links ``(b, n, 3,
    3)``."""
    gen = torch.Generator().manual_seed(seed)
    staples = su3(gen, b, 2, nnu, n)
    x = su3(gen, b, n)
    rho = scale * torch.randn(b, nnu, n, dtype=torch.float64, generator=gen)
    return staples[:, 0] + staples[:, 1], rho, x
