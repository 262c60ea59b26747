"""Circular rational-quadratic (RQ) splines on ``[0, 2 pi]``.

Rational-quadratic spline of Durkan et al., "Neural Spline Flows", arXiv:1906.04032; its
circular variant (equal end-point derivatives, a diffeomorphism of the circle) of Rezende et
al., "Normalizing flows on tori and spheres", arXiv:2002.02428. Used as the element-wise
transform of :class:`kernels.flows.u1.U1PlaquetteCoupling` with ``transform="spline"``.

Parameters
----------
``K`` bins; per element ``K`` unnormalised widths ``a_k``, heights ``b_k`` and knot
derivatives ``c_k`` (the bin dimension is dim 1, the other dims are the element dims, as in
:func:`kernels.flows.u1.ncp_mixture`). :func:`circular_spline_knots` makes

    w_k = 2 pi [m + (1 - K m) softmax(a)_k],    h_k = 2 pi [m + (1 - K m) softmax(b)_k],
    x_0 = 0, x_k = w_1 + ... + w_k, x_K = 2 pi      (y_k likewise from h_k),
    d_k = delta + softplus(c_k + log(e^{1 - delta} - 1)),   k = 0..K-1,   d_K = d_0,

with minimum bin size ``m`` (fraction of the interval, default ``1e-3``) and minimum derivative
``delta`` (default ``1e-3``). The shift inside the softplus makes ``c = 0`` give ``d = 1``, so
all-zero raw parameters are the identity. ``d_K = d_0`` is the circular condition: the map
extends to a ``C^1`` diffeomorphism of the circle.

Forward (:func:`rq_spline`), in bin ``k`` (``x_k <= x <= x_{k+1}``), with ``s_k = h_k / w_k``,
``xi = (x - x_k) / w_k`` in ``[0, 1]``:

    h(x)  = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)]
    h'(x) = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)]^2  > 0

so ``h(x_k) = y_k``, ``h'(x_k) = d_k``: ``h(0) = 0``, ``h(2 pi) = 2 pi``, ``h'(0) = h'(2 pi)``.

Inverse (:func:`rq_spline_inverse`), analytic: in the bin with ``y_k <= y <= y_{k+1}``,
``u = y - y_k``, ``D = d_k + d_{k+1} - 2 s_k``, ``xi`` is the root in ``[0, 1]`` of
``A xi^2 + B xi + C = 0`` with

    A = h_k (s_k - d_k) + u D,   B = h_k d_k - u D,   C = -s_k u,

taken in the cancellation-free form ``xi = 2 C / (-B - sqrt(B^2 - 4 A C))`` (the discriminant
is clamped at 0 against rounding; for ``B < 0`` the equivalent ``(-B + sqrt(B^2 - 4 A C)) / 2A``,
``A > 0``, avoids the cancellation), ``x = x_k + w_k xi``; ``y = y_K`` gives ``x = x_K``
exactly. No iteration.

Bin search: ``k = #{j in 1..K-1 : x_j <= x}`` (a sum over the interior knots), so ``x = 0``
falls in bin 0 and ``x = 2 pi`` in bin ``K-1`` (``xi = 1``); ``xi`` is clamped to ``[0, 1]``.
Inputs must lie in ``[0, 2 pi]`` (e.g. ``torch.remainder(p, 2 pi)``, which may round to exactly
``2 pi``). Everything is differentiable with autograd in the input and the parameters (the bin
index is piecewise constant).
"""

from __future__ import annotations

import math

import torch

from .grid_stable import softplus

TWO_PI = 2.0 * math.pi

#: default minimum bin width/height, as a fraction of the interval
MIN_BIN = 1e-3
#: default minimum knot derivative
MIN_DERIV = 1e-3


def _knots(raw: torch.Tensor, length: float, min_bin: float) -> torch.Tensor:
    """Knots ``0 = z_0 < ... < z_K = length`` from unnormalised bin sizes ``(B, K, ...)``."""
    k = raw.shape[1]
    if not 0.0 <= min_bin * k < 1.0:
        raise ValueError(f"min_bin * K must lie in [0, 1), got {min_bin} * {k}")
    sizes = length * (min_bin + (1.0 - min_bin * k) * torch.softmax(raw, dim=1))
    inner = torch.cumsum(sizes, dim=1).narrow(1, 0, k - 1)
    edge = torch.zeros_like(sizes.narrow(1, 0, 1))
    return torch.cat((edge, inner, edge + length), dim=1)


def circular_spline_knots(
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivs: torch.Tensor,
    min_bin: float = MIN_BIN,
    min_deriv: float = MIN_DERIV,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots ``(xk, yk, dk)``, each ``(B, K + 1, ...)``, of the circular RQ spline on
    ``[0, 2 pi]`` from the unnormalised parameters, each ``(B, K, ...)`` (see the module
    docstring); ``dk[:, K] = dk[:, 0]``."""
    if not (widths.shape == heights.shape == derivs.shape):
        raise ValueError(
            f"spline parameters disagree in shape: {list(widths.shape)}, "
            f"{list(heights.shape)}, {list(derivs.shape)}"
        )
    if not 0.0 < min_deriv < 1.0:
        raise ValueError(f"min_deriv must lie in (0, 1), got {min_deriv}")
    xk = _knots(widths, TWO_PI, min_bin)
    yk = _knots(heights, TWO_PI, min_bin)
    shift = math.log(math.expm1(1.0 - min_deriv))
    d = min_deriv + softplus(derivs + shift)  # grid-stable (kernels/flows/grid_stable.py)
    dk = torch.cat((d, d.narrow(1, 0, 1)), dim=1)
    return xk, yk, dk


def _bin(z: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Bin index ``k`` in ``0..K-1``: the number of interior knots ``<= z``, ``(B, 1, ...)``."""
    k = knots.shape[1] - 1
    inner = knots.narrow(1, 1, k - 1)
    return (z.unsqueeze(1) >= inner).sum(dim=1, keepdim=True)


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, 1, idx).squeeze(1)


def _bin_data(
    idx: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``(x_k, y_k, w_k, h_k, d_k, d_{k+1})`` of the bins ``idx``."""
    x0, y0, d0 = _take(xk, idx), _take(yk, idx), _take(dk, idx)
    w = _take(xk, idx + 1) - x0
    h = _take(yk, idx + 1) - y0
    d1 = _take(dk, idx + 1)
    return x0, y0, w, h, d0, d1


def _eval(
    xi: torch.Tensor,
    y0: torch.Tensor,
    h: torch.Tensor,
    s: torch.Tensor,
    d0: torch.Tensor,
    d1: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h(x), h'(x), log h'(x))`` at ``xi = (x - x_k) / w_k`` in one bin (slope ``s``)."""
    om = 1.0 - xi
    xo = xi * om
    den = s + (d0 + d1 - 2.0 * s) * xo
    y = y0 + h * (s * xi * xi + d0 * xo) / den
    num = d1 * xi * xi + 2.0 * s * xo + d0 * om * om
    dy = s * s * num / (den * den)
    logdy = 2.0 * torch.log(s) + torch.log(num) - 2.0 * torch.log(den)
    return y, dy, logdy


def rq_spline(
    x: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h(x), h'(x), log h'(x))`` for ``x`` in ``[xk_0, xk_K]``; ``x`` ``(B, ...)``, knots
    ``(B, K + 1, ...)`` from :func:`circular_spline_knots`."""
    x0, y0, w, h, d0, d1 = _bin_data(_bin(x, xk), xk, yk, dk)
    xi = torch.clamp((x - x0) / w, 0.0, 1.0)
    return _eval(xi, y0, h, h / w, d0, d1)


def rq_spline_inverse(
    y: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, log h'(x))`` with ``h(x) = y`` for ``y`` in ``[yk_0, yk_K]`` (analytic root)."""
    x0, y0, w, h, d0, d1 = _bin_data(_bin(y, yk), xk, yk, dk)
    s = h / w
    u = torch.clamp(y - y0, min=0.0)
    u = torch.minimum(u, h)
    dd = (d0 + d1 - 2.0 * s) * u
    a = h * (s - d0) + dd
    b = h * d0 - dd
    c = -s * u
    sq = torch.sqrt(torch.clamp(b * b - 4.0 * a * c, min=0.0))
    # cancellation-free root: 2C / (-B - sqrt) for B >= 0, (-B + sqrt) / 2A (A > 0) for B < 0;
    # the denominators of the branch not taken are replaced (no 0/0 in the gradients)
    pos = b >= 0.0
    num = torch.where(pos, 2.0 * c, sq - b)
    den = torch.where(pos, -b - sq, 2.0 * a)
    xi = torch.clamp(num / torch.where(den == 0.0, -1.0, den), 0.0, 1.0)
    xi = torch.where(u >= h, 1.0, xi)  # the top of the last bin exactly (y = 2 pi)
    _, _, logdy = _eval(xi, y0, h, s, d0, d1)
    return x0 + w * xi, logdy
