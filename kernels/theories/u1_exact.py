"""Exact results of 2D U(1) Wilson gauge theory on a periodic ``L_0 x L_1`` torus.

Character expansion (Wadia 1980; used by Kanwar et al., arXiv:2003.06413, to check flows):
with ``e^{beta cos P} = sum_n I_n(beta) e^{i n P}`` and the Haar integral over every link,
only configurations with the same representation ``n`` on all ``V = L_0 L_1`` plaquettes
survive on a torus, so for ``S = beta sum_P (1 - cos P)``::

    Z = int prod_links d theta  e^{-S} = (2 pi)^{N_links} sum_n [e^{-beta} I_n(beta)]^V,

``N_links = 2 V``, the angles integrated with Lebesgue measure over ``(-pi, pi]`` (the
normalisation of :class:`kernels.flows.priors.UniformAnglePrior`). Then for any flow ``q``
the exact reverse KL divergence is ``KL(q || p) = E_q[log q + S] + log Z``.

Topology: with the geometric charge ``Q = (1/2 pi) sum_x [P_x]`` (``[P]`` in ``(-pi, pi]``,
:meth:`kernels.theories.u1.U1Gauge.topological_charge_int`), every plaquette factor
``e^{beta cos P + i theta [P] / 2 pi}`` is 2 pi-periodic in ``P`` with Fourier coefficients
``c_n(theta) = (1/2 pi) int_{-pi}^{pi} e^{beta (cos P - 1)} cos((n - theta/2 pi) P) dP``
(times ``e^{beta}``), so ``Z(theta) / Z(0) = <e^{i theta Q}> = sum_n c_n^V / sum_n c_n(0)^V``
and ``<Q^2> = -d^2 log Z / d theta^2`` at ``theta = 0`` (``<Q> = 0``)::

    <Q^2> = -[sum_n V c_n^{V-1} c_n'' + V (V - 1) c_n^{V-2} (c_n')^2] / sum_n c_n^V

with ``' = d/d theta``: ``c_n' = (1/4 pi^2) int e^{..} P sin(n P) dP`` and
``c_n'' = -(1/8 pi^3) int e^{..} P^2 cos(n P) dP``.

The integrals are evaluated on ``[0, pi]`` (even integrands) by Simpson's rule; for the
periodic ``c_n(0) = e^{-beta} I_n(beta)`` this is spectrally accurate. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _simpson(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and Simpson weights on ``[0, pi]`` (``points`` even)."""
    t = np.linspace(0.0, math.pi, points + 1)
    w = np.full(points + 1, 2.0)
    w[1::2] = 4.0
    w[[0, -1]] = 1.0
    return t, w * (math.pi / points) / 3.0


def _moments(n: np.ndarray, beta: float, points: int) -> tuple[np.ndarray, ...]:
    """``c_n, c_n', c_n''`` at ``theta = 0`` (see the module docstring), all times ``e^{-beta}``."""
    t, w = _simpson(points)
    f = np.exp(beta * (np.cos(t) - 1.0)) * w
    nt = np.multiply.outer(np.asarray(n, dtype=np.float64), t)
    c = (np.cos(nt) * f).sum(axis=-1) / math.pi
    c1 = (t * np.sin(nt) * f).sum(axis=-1) / (2 * math.pi**2)
    c2 = -(t * t * np.cos(nt) * f).sum(axis=-1) / (4 * math.pi**3)
    return c, c1, c2


def scaled_bessel_i(n: np.ndarray, beta: float, points: int = 4096) -> np.ndarray:
    """``e^{-beta} I_n(beta)`` for integer orders ``n``."""
    return _moments(n, beta, points)[0]


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


def topological_charge_squared(
    beta: float, shape: Sequence[int], nmax: int = 50, points: int = 8192
) -> float:
    """``<Q^2>`` of the geometric charge on the periodic 2D ``shape`` (``chi_t = <Q^2> / V``)."""
    if len(shape) != 2:
        raise ValueError(f"the exact U(1) charge is for 2D lattices, not {shape}")
    vol = int(shape[0]) * int(shape[1])
    c, c1, c2 = _moments(np.arange(-nmax, nmax + 1), beta, points)
    keep = c > 0
    c, c1, c2 = c[keep], c1[keep], c2[keep]
    logc = np.log(c)
    scale = np.exp(vol * (logc - logc.max()))  # c_n^V up to a common factor
    num = (vol * c2 / c + vol * (vol - 1) * (c1 / c) ** 2) * scale
    return float(-num.sum() / scale.sum())
