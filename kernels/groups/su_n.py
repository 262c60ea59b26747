"""SU(N) group and su(N) algebra tools on batched complex tensors ``(..., N, N)``.

Conventions (docs/conventions-su3.md)
-------------------------------------
* Generators ``T_a = i lambda_a / 2`` (generalised Gell-Mann ``lambda_a``, ordering and
  matrices from :func:`parallel.rng.su_generators`), anti-Hermitian and traceless with
  ``Tr T_a T_b = -delta_ab / 2``.
* An algebra element is stored as the traceless anti-Hermitian matrix ``P = sum_a p_a T_a``;
  components are ``p_a = -2 Tr(T_a P)`` (real).
* HMC kinetic term ``K = -sum Re Tr P^2 = sum_ij |P_ij|^2 = (1/2) sum_a p_a^2``, so momenta
  with standard normal ``p_a`` are distributed as ``exp(-K)``.
* ``TA(M) = (M - M^+)/2 - Tr(M - M^+)/(2N)`` is the traceless anti-Hermitian projection; it
  satisfies ``sum_a T_a Re Tr(T_a M) = -TA(M)/2``, which turns Lie derivatives of
  ``Re Tr(U A)`` into matrices.

Every function is device-agnostic torch and works for any leading batch shape.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from parallel.rng import su_generators as _su_generators_np

__all__ = [
    "algebra_norm2",
    "algebra_to_components",
    "components_to_algebra",
    "dagger",
    "expm_su3",
    "haar_su_n",
    "project_ta",
    "reunitarize",
    "su_expm",
    "su_generators",
    "trace",
]


# --------------------------------------------------------------------------- basics
def dagger(u: torch.Tensor) -> torch.Tensor:
    """Conjugate transpose of the last two dims."""
    return u.conj().transpose(-1, -2)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product ``a @ b`` of small ``(..., N, N)`` matrices, the fast way per device:
    ``(a b)_ij = sum_k a_ik b_kj``.

    CPU: ``torch.matmul`` (batched BLAS). Accelerators (N <= 4): the broadcast product summed
    over ``k``, one elementwise kernel and one reduction. cuBLAS's batched product of 3x3
    complex128 matrices moved 25 GB/s on an H200, the broadcast sum 1150 GB/s
    (``benchmarks/device_check.py --part profile``, docs/performance.md). Same mathematics;
    the rounding differs only in the order of the N-term sums.
    """
    if _batched_blas(a):
        return a @ b
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def _batched_blas(a: torch.Tensor) -> bool:
    """Whether :func:`mm` multiplies ``a`` by batched BLAS (CPU, or N > 4)."""
    return a.device.type == "cpu" or a.shape[-1] > 4


def trace(u: torch.Tensor) -> torch.Tensor:
    """Trace over the last two dims."""
    return torch.diagonal(u, dim1=-2, dim2=-1).sum(-1)


@cache
def _generators_np(n: int) -> np.ndarray:
    return _su_generators_np(n)


def su_generators(
    n: int, dtype: torch.dtype = torch.complex128, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The ``n^2 - 1`` generators ``T_a = i lambda_a / 2``, tensor ``(n^2 - 1, n, n)``.

    The same matrices, in the same order, as :func:`parallel.rng.su_generators` (which the
    site-keyed momentum draws use), so components agree with the RNG's ``p_a``.
    """
    return torch.as_tensor(_generators_np(int(n)), dtype=dtype, device=device)


def project_ta(m: torch.Tensor) -> torch.Tensor:
    """Traceless anti-Hermitian part ``TA(M) = (M - M^+)/2 - Tr(M - M^+)/(2N) 1``."""
    n = m.shape[-1]
    a = 0.5 * (m - dagger(m))
    tr = trace(a) / n
    return a - tr[..., None, None] * torch.eye(n, dtype=m.dtype, device=m.device)


def algebra_to_components(p: torch.Tensor) -> torch.Tensor:
    """Real components ``p_a = -2 Re Tr(T_a P)`` of an algebra matrix, shape ``(..., n^2-1)``."""
    n = p.shape[-1]
    gens = su_generators(n, dtype=p.dtype, device=p.device)
    # Tr(T_a P) = sum_ij (T_a)_ij P_ji
    return -2.0 * torch.einsum("aij,...ji->...a", gens, p).real


def components_to_algebra(
    c: torch.Tensor, n: int, dtype: torch.dtype = torch.complex128
) -> torch.Tensor:
    """``P = sum_a c_a T_a`` for real components ``c`` of shape ``(..., n^2 - 1)``."""
    gens = su_generators(n, dtype=dtype, device=c.device)
    return torch.einsum("...a,aij->...ij", c.to(dtype), gens)


def algebra_norm2(p: torch.Tensor) -> torch.Tensor:
    """``-Re Tr P^2`` per matrix, i.e. ``sum_ij |P_ij|^2`` for anti-Hermitian ``P``.

    Equals ``(1/2) sum_a p_a^2``: the HMC kinetic energy density of one link.
    """
    return (p.real.square() + p.imag.square()).sum((-1, -2))


# --------------------------------------------------------------------------- exponential
def _xi0(w: torch.Tensor) -> torch.Tensor:
    """``sin(w)/w`` with its Taylor series for small ``|w|``."""
    w2 = w * w
    small = w.abs() < 0.05
    series = 1.0 - w2 / 6.0 * (1.0 - w2 / 20.0 * (1.0 - w2 / 42.0 * (1.0 - w2 / 72.0)))
    safe = torch.where(small, torch.ones_like(w), w)
    return torch.where(small, series, torch.sin(safe) / safe)


def expm_su3(x: torch.Tensor) -> torch.Tensor:
    """Exact ``exp(X)`` of traceless anti-Hermitian 3x3 matrices (Cayley-Hamilton).

    Morningstar & Peardon, Phys. Rev. D 69 (2004) 054501, eqs. (19)-(34): with the
    traceless Hermitian ``Q = -i X``, ``exp(iQ) = f0 + f1 Q + f2 Q^2`` where, from
    ``c0 = det Q = Tr Q^3 / 3``, ``c1 = Tr Q^2 / 2``, ``c0max = 2 (c1/3)^(3/2)``,
    ``theta = arccos(c0 / c0max)``, ``u = sqrt(c1/3) cos(theta/3)``, ``w = sqrt(c1) sin(theta/3)``::

        h0 = (u^2 - w^2) e^{2iu} + e^{-iu} [8u^2 cos w + 2iu (3u^2 + w^2) xi0(w)]
        h1 = 2u e^{2iu} - e^{-iu} [2u cos w - i (3u^2 - w^2) xi0(w)]
        h2 = e^{2iu} - e^{-iu} [cos w + 3iu xi0(w)]
        f_j = h_j / (9u^2 - w^2),     xi0(w) = sin(w)/w

    evaluated at ``|c0|`` and mapped back with ``f_j(-c0) = (-1)^j f_j(c0)^*`` (this keeps
    ``theta`` in ``[0, pi/2]`` where ``9u^2 - w^2 >= 2 c1``). Matrices with ``c1 < 1e-12``
    (``|X| < ~1e-6``) use the Taylor series to third order instead (error ``< 1e-24``).

    Not meant for autograd (``arccos`` has an infinite slope at degenerate eigenvalues); use
    :func:`su_expm`, which falls back to ``torch.linalg.matrix_exp`` when grad is needed.
    """
    if x.shape[-2:] != (3, 3):
        raise ValueError(f"expm_su3 needs (..., 3, 3) matrices, got {tuple(x.shape)}")
    q = -1j * x
    q2 = mm(q, q)
    c1 = 0.5 * trace(q2).real
    c0 = torch.einsum("...ij,...ji->...", q2, q).real / 3.0
    sign = torch.where(c0 < 0, -1.0, 1.0).to(c1.dtype)
    c0a = c0.abs()
    tiny = c1 < 1e-12
    c1s = torch.where(tiny, torch.ones_like(c1), c1)
    c0max = 2.0 * (c1s / 3.0) ** 1.5
    theta = torch.arccos(torch.clamp(c0a / c0max, max=1.0))
    u = torch.sqrt(c1s / 3.0) * torch.cos(theta / 3.0)
    w = torch.sqrt(c1s) * torch.sin(theta / 3.0)
    u2, w2 = u * u, w * w
    cw = torch.cos(w)
    xi = _xi0(w)
    e2iu = torch.polar(torch.ones_like(u), 2.0 * u)
    emiu = torch.polar(torch.ones_like(u), -u)
    i = 1j
    h0 = (u2 - w2) * e2iu + emiu * (8.0 * u2 * cw + i * (2.0 * u * (3.0 * u2 + w2) * xi))
    h1 = 2.0 * u * e2iu - emiu * (2.0 * u * cw - i * ((3.0 * u2 - w2) * xi))
    h2 = e2iu - emiu * (cw + i * (3.0 * u * xi))
    den = 9.0 * u2 - w2
    f0, f1, f2 = h0 / den, h1 / den, h2 / den
    neg = sign < 0
    f0 = torch.where(neg, f0.conj(), f0)
    f1 = torch.where(neg, -f1.conj(), f1)
    f2 = torch.where(neg, f2.conj(), f2)
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    out = f0[..., None, None] * eye + f1[..., None, None] * q + f2[..., None, None] * q2
    if bool(tiny.any()):
        x2 = mm(x, x)
        taylor = eye + x + 0.5 * x2 + mm(x2, x) / 6.0
        out = torch.where(tiny[..., None, None], taylor, out)
    return out


def su_expm(x: torch.Tensor) -> torch.Tensor:
    """``exp(X)`` for traceless anti-Hermitian ``(..., N, N)``: Cayley-Hamilton for N = 3
    (:func:`expm_su3`), ``torch.linalg.matrix_exp`` otherwise or when autograd is needed."""
    if x.shape[-1] == 3 and not (torch.is_grad_enabled() and x.requires_grad):
        return expm_su3(x)
    return torch.linalg.matrix_exp(x)


# --------------------------------------------------------------------------- unitarity
def _det_fix(u: torch.Tensor) -> torch.Tensor:
    """Divide by the principal ``det(u)^(1/N)`` so that ``det = 1`` (``u`` unitary)."""
    n = u.shape[-1]
    phase = torch.angle(torch.linalg.det(u)) / n
    return u * torch.polar(torch.ones_like(phase), -phase)[..., None, None]


def reunitarize(u: torch.Tensor) -> torch.Tensor:
    """The SU(N) matrix nearest a slightly non-unitary ``u``.

    SU(3): Gram-Schmidt of rows 0 and 1, row 2 = complex conjugate of their cross product
    (which makes ``det = 1``). Other N: the unitary polar factor ``W V^+`` of the SVD
    ``u = W S V^+``, times the principal ``det^(-1/N)``.
    """
    n = u.shape[-1]
    if n != 3:
        w, _, vh = torch.linalg.svd(u)
        return _det_fix(w @ vh)
    a = u[..., 0, :]
    b = u[..., 1, :]
    a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    b = b - (a.conj() * b).sum(-1, keepdim=True) * a
    b = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    c = torch.stack(
        (
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ),
        dim=-1,
    ).conj()
    return torch.stack((a, b, c), dim=-2)


def haar_su_n(normals: torch.Tensor, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """Haar-distributed SU(N) matrices from real standard normals of shape ``(..., N, N, 2)``.

    ``Z = (x + i y)/sqrt(2)`` is a Ginibre matrix; its QR factor with the phases of
    ``diag(R)`` moved into ``Q`` is Haar on U(N) (Mezzadri, Notices AMS 54 (2007) 592), and
    dividing by ``det^(1/N)`` maps U(N)-Haar to SU(N)-Haar (the map commutes with left
    multiplication by SU(N)).
    """
    z = torch.complex(normals[..., 0], normals[..., 1]).to(dtype) / math.sqrt(2.0)
    q, r = torch.linalg.qr(z)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    q = q * (d / d.abs())[..., None, :]
    return _det_fix(q)
