"""The ``soa`` and ``compiled`` kernel backends: SU(3) Wilson kernels on real planes.

Layout: links as a real structure of arrays ``(B, Nd, 2, 3, 3, *local)`` (real / imaginary
planes, each entry a contiguous lattice-sized array), so a 3x3 complex product is 27 x 4
elementwise real multiply-adds over whole lattices, written out (:func:`_mm`), with no
small-matrix BLAS calls. Per ordered plane ``(mu, nu)`` (:func:`_plane_staples`)::

    up(x)   = U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^+
    down(x) = [U_mu(x) U_nu(x+mu)]^+ U_nu(x)          (then shifted by -nu)

and per direction (:func:`_force_mu`) ``coef * TA(U_mu A_mu)``, ``A_mu = sum of its 2 (Nd-1)
staples``. ``soa`` runs these as plain torch ops (autograd-capable, any device);
``compiled`` fuses each of the two functions into one loop with ``torch.compile`` (compiled
once per process, ``dynamic=True`` for every lattice size). Only the Wilson terms are native;
``c1 != 0`` (rectangles) is delegated to :mod:`kernels.backends.eager`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from parallel import ProcessGrid, shift
from parallel.settings import flag

from .eager import EagerBackend

SOA_FIRST = 5  # array dim of lattice axis 0 in (B, Nd, 2, 3, 3, *local)


def to_soa(u: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, Nd, *local, 3, 3)`` -> real ``(B, Nd, 2, 3, 3, *local)`` (contiguous)."""
    nd = u.ndim - 4
    soa = torch.stack((u.real, u.imag), -3)  # (B, Nd, *L, 2, 3, 3)
    perm = (0, 1, nd + 2, nd + 3, nd + 4, *range(2, nd + 2))
    return soa.permute(perm).contiguous()


def from_soa(x: torch.Tensor) -> torch.Tensor:
    """Real ``(B, Nd, 2, 3, 3, *local)`` -> complex ``(B, Nd, *local, 3, 3)``."""
    nd = x.ndim - 5
    perm = (0, 1, *range(5, 5 + nd), 2, 3, 4)
    y = x.permute(perm)
    return torch.complex(y[..., 0, :, :], y[..., 1, :, :])


def _el(a: torch.Tensor, i: int, k: int, dag: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(re, im) planes of element (i, k) of ``a`` or of ``a^+``; ``a``: (B, 2, 3, 3, *L)."""
    if dag:
        return a[:, 0, k, i], -a[:, 1, k, i]
    return a[:, 0, i, k], a[:, 1, i, k]


def _mm(a: torch.Tensor, b: torch.Tensor, da: bool = False, db: bool = False) -> torch.Tensor:
    """3x3 complex product ``op(a) op(b)`` on real planes, unrolled; ``op`` = ``+`` if dagged."""
    re, im = [], []
    for i in range(3):
        for j in range(3):
            r = m = None
            for k in range(3):
                ar, ai = _el(a, i, k, da)
                br, bi = _el(b, k, j, db)
                rr = ar * br - ai * bi
                mm = ar * bi + ai * br
                r = rr if r is None else r + rr
                m = mm if m is None else m + mm
            re.append(r)
            im.append(m)
    out = torch.stack((torch.stack(re, 1), torch.stack(im, 1)), 1)
    return out.unflatten(2, (3, 3))


def _plane_staples(umu, unu, unu_xmu, umu_xnu):
    """Up staple ``U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^+`` and the down staple's local part
    ``[U_mu(x) U_nu(x+mu)]^+ U_nu(x)`` (shifted by -nu afterwards)."""
    up = _mm(unu_xmu, _mm(unu, umu_xnu), db=True)
    down = _mm(_mm(umu, unu_xmu), unu, da=True)
    return up, down


def _force_mu(umu, a, coef: float):
    """``coef * TA(U A)`` in the SoA layout, ``TA(M) = (M - M^+)/2 - Tr(M - M^+)/6``."""
    m = _mm(umu, a)
    re, im = m[:, 0], m[:, 1]
    are = 0.5 * (re - re.transpose(1, 2))
    aim = 0.5 * (im + im.transpose(1, 2))
    tr = (aim[:, 0, 0] + aim[:, 1, 1] + aim[:, 2, 2]) / 3.0
    eye = torch.eye(3, dtype=re.dtype, device=re.device).view(1, 3, 3, *([1] * (re.ndim - 3)))
    aim = aim - eye * tr.unsqueeze(1).unsqueeze(1)
    return coef * torch.stack((are, aim), 1)


def _plaquette_retr(umu, unu, unu_xmu, umu_xnu):
    """``Re Tr(U_mu U_nu(x+mu) [U_nu U_mu(x+nu)]^+)`` per site, ``(B, *local)``."""
    a = _mm(umu, unu_xmu)
    b = _mm(unu, umu_xnu)
    return (a * b).sum((1, 2, 3))


class SoABackend(EagerBackend):
    """SU(3) Wilson staples, force, action and flow generator in the SoA layout."""

    name = "soa"
    compile_kernels = False

    def __init__(self) -> None:
        self._staples: Callable = _plane_staples
        self._force_mu: Callable = _force_mu
        self._plaq: Callable = _plaquette_retr

    def _staple_planes(self, s: torch.Tensor, grid: ProcessGrid) -> list[torch.Tensor]:
        """``A_mu`` in SoA ``(B, 2, 3, 3, *local)`` for each direction ``mu``."""
        nd = s.shape[1]
        fwd = [shift(s, grid, mu, 1, first=SOA_FIRST) for mu in range(nd)]
        out = []
        for mu in range(nd):
            a = None
            for nu in range(nd):
                if nu == mu:
                    continue
                up, down = self._staples(s[:, mu], s[:, nu], fwd[mu][:, nu], fwd[nu][:, mu])
                part = up + shift(down, grid, nu, -1, first=SOA_FIRST - 1)
                a = part if a is None else a + part
            out.append(a)
        return out

    def _ta_ua(self, u: torch.Tensor, grid: ProcessGrid, coef: float) -> torch.Tensor:
        s = to_soa(u)
        staples = self._staple_planes(s, grid)
        f = [self._force_mu(s[:, mu], a, coef) for mu, a in enumerate(staples)]
        return from_soa(torch.stack(f, 1))

    def su3_staple_sum(self, u, grid, c0, c1):
        """Staple sum ``A_mu(x)``; native for ``c1 == 0``."""
        if c1:
            return super().su3_staple_sum(u, grid, c0, c1)
        return c0 * from_soa(torch.stack(self._staple_planes(to_soa(u), grid), 1))

    def su3_force(self, u, grid, beta, c0, c1):
        """``(beta/6) TA(U A)``; native for ``c1 == 0``."""
        if c1:
            return super().su3_force(u, grid, beta, c0, c1)
        return self._ta_ua(u, grid, beta * c0 / 6.0)

    def su3_flow_generator(self, u, grid, c1=0.0):
        """``-TA(V A)``; native for ``c1 == 0``."""
        if c1:
            return super().su3_flow_generator(u, grid, c1)
        return self._ta_ua(u, grid, -1.0)

    def su3_action_local(self, u, grid, c0, c1):
        """``c0 sum_P (3 - Re Tr U_P)`` per chain; native for ``c1 == 0``."""
        if c1:
            return super().su3_action_local(u, grid, c0, c1)
        s = to_soa(u)
        nd = s.shape[1]
        fwd = [shift(s, grid, mu, 1, first=SOA_FIRST) for mu in range(nd)]
        tot = None
        for mu in range(nd):
            for nu in range(mu + 1, nd):
                p = self._plaq(s[:, mu], s[:, nu], fwd[mu][:, nu], fwd[nu][:, mu])
                p = (3.0 - p).sum(tuple(range(1, p.ndim)))
                tot = p if tot is None else tot + p
        return c0 * tot


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str, fn: Callable) -> Callable:
    """One ``torch.compile(dynamic=True)`` per kernel and process, for all lattice sizes
    (``TRIVHMC_COMPILE_DYNAMIC=0``: static shapes, one compile per lattice size, which
    compiles faster and lets the code generator specialise on the extents)."""
    if name not in _COMPILED:
        dynamic = flag("TRIVHMC_COMPILE_DYNAMIC", True)
        _COMPILED[name] = torch.compile(fn, dynamic=dynamic)
    return _COMPILED[name]


class CompiledSoABackend(SoABackend):
    """:class:`SoABackend` with the plane staples, ``TA(U A)`` and plaquette fused by
    ``torch.compile`` (compile time: minutes on a small CPU, once per process)."""

    name = "compiled"

    def __init__(self) -> None:
        self._staples = _compiled("staples", _plane_staples)
        self._force_mu = _compiled("force_mu", _force_mu)
        self._plaq = _compiled("plaquette", _plaquette_retr)
