"""Exact results of 2D U(1) Wilson gauge theory on a periodic ``L_0 x L_1`` torus.

Character expansion (Wadia 1980; used by Kanwar et al., arXiv:2003.06413, to check flows):
with ``e^{beta cos P} = sum_n I_n(beta) e^{i n P}`` and the Haar integral over every link,
only configurations with the same representation ``n`` on all ``V = L_0 L_1`` plaquettes
survive on a torus, so for ``S = beta sum_P (1 - cos P)``::

    Z = int prod_links d theta  e^{-S} = (2 pi)^{N_links} sum_n [e^{-beta} I_n(beta)]^V,

``N_links = 2 V``, the angles integrated with Lebesgue measure over ``(-pi, pi]`` (the
normalisation of :class:`kernels.flows.priors.UniformAnglePrior`). Then for any flow ``q``
the exact reverse KL divergence is ``KL(q || p) = E_q[log q + S] + log Z``.

``e^{-beta} I_n(beta) = (1/pi) int_0^pi e^{beta (cos t - 1)} cos(n t) dt`` is evaluated by the
trapezoidal rule, which is spectrally accurate for this smooth periodic integrand (numpy
only, no scipy needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def scaled_bessel_i(n: np.ndarray, beta: float, points: int = 4096) -> np.ndarray:
    """``e^{-beta} I_n(beta)`` for integer orders ``n`` (trapezoidal rule on ``[0, pi]``)."""
    t = np.linspace(0.0, math.pi, points + 1)
    w = np.full(points + 1, math.pi / points)
    w[[0, -1]] *= 0.5
    f = np.exp(beta * (np.cos(t) - 1.0))
    n = np.asarray(n, dtype=np.float64)
    return (np.cos(np.multiply.outer(n, t)) * f * w).sum(axis=-1) / math.pi


def log_partition_function(beta: float, shape: Sequence[int], nmax: int = 50) -> float:
    """``log Z`` of 2D U(1) with ``S = beta sum_P (1 - cos P)`` on the periodic ``shape``."""
    if len(shape) != 2:
        raise ValueError(f"the exact U(1) partition function is for 2D lattices, not {shape}")
    vol = int(shape[0]) * int(shape[1])
    ns = np.arange(-nmax, nmax + 1)
    c = scaled_bessel_i(ns, beta)
    c = c[c > 0]
    logs = vol * np.log(c)
    top = logs.max()
    return 2 * vol * math.log(2 * math.pi) + float(top + np.log(np.exp(logs - top).sum()))


def mean_plaquette(beta: float, shape: Sequence[int], nmax: int = 50, h: float = 1e-5) -> float:
    """``<cos P> = 1 + (1/V) d log Z / d beta`` (central difference of the exact ``log Z``)."""
    vol = int(shape[0]) * int(shape[1])
    d = log_partition_function(beta + h, shape, nmax) - log_partition_function(
        beta - h, shape, nmax
    )
    return 1.0 + d / (2 * h * vol)
