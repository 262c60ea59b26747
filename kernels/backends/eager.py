"""The ``eager`` kernel backend: the reference implementation of the gauge kernels.

Plain torch on complex128 ``(B, Nd, *local, 3, 3)`` links (SU(3)) or real angles
``(B, Nd, *local)`` (U(1)), neighbours through :func:`parallel.shift`, autograd everywhere,
any device. Every other backend (kernels/backends/__init__.py) is tested against these
functions. Conventions and formulas: kernels/theories/su3.py and u1.py module docstrings and
docs/conventions-su3.md; summarised here:

SU(3) (``c0 = 1 - 8 c1``; ``A_mu(x)`` the staple sum, ``TA`` the traceless anti-Hermitian part)::

    S      = beta [ c0 sum_P (1 - Re Tr U_P / 3) + c1 sum_R (1 - Re Tr U_R / 3) ]
    F_mu   = (beta / 6) TA(U_mu(x) A_mu(x))                (left Lie derivative of S)
    Z_mu   = -TA(U_mu(x) A_mu(x))                          (Wilson-flow generator, g0^2 = 6/beta)

U(1) (``theta_{mu nu}(x) = theta_mu(x) + theta_nu(x+mu) - theta_mu(x+nu) - theta_nu(x)``)::

    S      = beta sum_x sum_{mu<nu} (1 - cos theta_{mu nu}(x))
    F_mu   = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin theta_{mu nu}(x - nu)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from parallel import ProcessGrid, lattice_sum, shift

from ..groups.su_n import dagger, mm, project_ta, reunitarize, su_expm

NC = 3


# --------------------------------------------------------------------------- SU(3)
def _retr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Re Tr(a b^+) = Re sum_ij a_ij conj(b_ij)`` without forming the product."""
    return (a.real * b.real + a.imag * b.imag).sum((-1, -2))


def _sh(x: torch.Tensor, grid: ProcessGrid, mu: int, k: int = 1) -> torch.Tensor:
    """Shift of a single-direction field ``(B, *local, 3, 3)`` (lattice axes from dim 1)."""
    return shift(x, grid, mu, k, first=1)


def _forward_links(u: torch.Tensor, grid: ProcessGrid) -> list[torch.Tensor]:
    """``fwd[mu][:, a] = U_a(x + mu)``: all directions shifted once along each axis."""
    return [shift(u, grid, mu, 1, first=2) for mu in range(u.shape[1])]


def _site_sum(x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """Global sum over every dim but the batch dim 0, shape ``(B,)`` (exact, grid-independent)."""
    return lattice_sum(x, grid, 1)


def wilson_loops(
    u: torch.Tensor, grid: ProcessGrid, rectangles: bool = True
) -> tuple[dict[tuple[int, int], torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
    """``Re Tr`` (not divided by 3) of plaquettes ``{(mu, nu): (B, *local)}`` for ``mu < nu``
    and of rectangles ``R_{mu nu}`` (2 along ``mu``) for all ordered ``mu != nu``."""
    nd = u.shape[1]
    fwd = _forward_links(u, grid)
    plaq, rect = {}, {}
    for mu in range(nd):
        umu = u[:, mu]
        for nu in range(mu + 1, nd):
            # Re Tr(U_mu(x) U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^+)
            plaq[(mu, nu)] = _retr(mm(umu, fwd[mu][:, nu]), mm(u[:, nu], fwd[nu][:, mu]))
    if rectangles:
        for mu in range(nd):
            dbl = mm(u[:, mu], fwd[mu][:, mu])
            for nu in range(nd):
                if nu == mu:
                    continue
                unu_2mu = _sh(fwd[mu][:, nu], grid, mu, 1)
                rect[(mu, nu)] = _retr(mm(dbl, unu_2mu), mm(u[:, nu], _sh(dbl, grid, nu, 1)))
    return plaq, rect


def _pairs(nd: int) -> tuple[list[int], list[int]]:
    """The ordered planes ``(mu, nu)``, ``nu != mu``, mu-major: their mu's and nu's."""
    pairs = [(mu, nu) for mu in range(nd) for nu in range(nd) if nu != mu]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _group_shift(x: torch.Tensor, grid: ProcessGrid, axes: list[int], k: int) -> torch.Tensor:
    """Shift entry ``p`` of the stacked field ``x`` ``(B, P, *local, ...)`` by ``k`` along
    lattice axis ``axes[p]``: one :func:`parallel.shift` per distinct axis."""
    parts, order = [], []
    for axis in sorted(set(axes)):
        idx = [p for p, a in enumerate(axes) if a == axis]
        sel = x[:, idx] if len(idx) < len(axes) else x
        parts.append(shift(sel, grid, axis, k, first=2))
        order += idx
    if len(parts) == 1:
        return parts[0]
    inverse = torch.argsort(torch.tensor(order, device=x.device))
    return torch.cat(parts, dim=1).index_select(1, inverse)


def staple_sum(u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float) -> torch.Tensor:
    """``A_mu(x)``: ``c0`` x plaquette staples + ``c1`` x rectangle staples, ``(B, Nd, *local,
    3, 3)``, so that ``Re Tr(U_mu(x) A_mu(x))`` sums (weighted) every loop holding the link.

    Plaquette staples (``nu != mu``): ``U_nu(x+mu) U_mu(x+nu)^+ U_nu(x)^+`` (up) and
    ``U_nu(x+mu-nu)^+ U_mu(x-nu)^+ U_nu(x-nu)`` (down). Rectangle staples (6 per ``nu``):
    the up/down staple extended along ``nu`` (``U_nu(x+mu) S_up(x+nu) U_nu(x)^+`` and its
    mirror), and the double-link staples ``Sigma(x) = U_nu(x+2mu) L_mu(x+nu)^+ U_nu(x)^+`` +
    mirror, entering as ``U_mu(x+mu) Sigma(x)`` and ``Sigma(x-mu) U_mu(x-mu)``.

    All ``Nd (Nd - 1)`` ordered planes are stacked along dim 1 and processed together (one
    batched product per step, one shift per axis), so the op count does not grow with the
    number of planes.
    """
    b, nd = u.shape[:2]
    mus, nus = _pairs(nd)
    fwd = torch.stack(_forward_links(u, grid))  # fwd[s, :, a] = U_a(x + s)
    umu = u[:, mus]
    unu = u[:, nus]
    unu_mu = fwd[mus, :, nus].transpose(0, 1)  # U_nu(x + mu)
    umu_nu = fwd[nus, :, mus].transpose(0, 1)  # U_mu(x + nu)
    up = mm(unu_mu, dagger(mm(unu, umu_nu)))
    down = _group_shift(mm(dagger(mm(umu, unu_mu)), unu), grid, nus, -1)
    per_mu = (b, nd, nd - 1) + tuple(u.shape[2:])
    a = c0 * (up + down) if c0 else torch.zeros_like(up)
    if c1:
        dirs = list(range(nd))
        umu_mu = fwd[dirs, :, dirs].transpose(0, 1)  # U_mu(x + mu)
        dbl = mm(u, umu_mu)[:, mus]  # L_mu(x)
        # rectangles 1 along mu, 2 along nu
        r_up = mm(mm(unu_mu, _group_shift(up, grid, nus, 1)), dagger(unu))
        r_down = _group_shift(mm(mm(dagger(unu_mu), down), unu), grid, nus, -1)
        a = a + c1 * (r_up + r_down)
        # rectangles 2 along mu: staples Sigma of the double link
        unu_2mu = _group_shift(unu_mu, grid, mus, 1)
        sigma = mm(unu_2mu, dagger(mm(unu, _group_shift(dbl, grid, nus, 1))))
        sigma = sigma + _group_shift(mm(dagger(mm(dbl, unu_2mu)), unu), grid, nus, -1)
        sigma = sigma.reshape(per_mu).sum(2)
        ends = mm(umu_mu, sigma) + _group_shift(mm(sigma, u), grid, dirs, -1)
        return a.reshape(per_mu).sum(2) + c1 * ends
    return a.reshape(per_mu).sum(2)


def gauge_force(
    u: torch.Tensor, grid: ProcessGrid, beta: float, c0: float = 1.0, c1: float = 0.0
) -> torch.Tensor:
    """``F_mu(x) = (beta/6) TA(U_mu(x) A_mu(x))`` (module docstring), ``(B, Nd, *local, 3, 3)``."""
    return (beta / (2.0 * NC)) * project_ta(mm(u, staple_sum(u, grid, c0, c1)))


def su3_action_local(u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float) -> torch.Tensor:
    """This rank's ``c0 sum_P (3 - Re Tr U_P) + c1 sum_R (3 - Re Tr U_R)`` per chain, ``(B,)``
    (the action is ``(beta / 3)`` times its global sum)."""
    plaq, rect = wilson_loops(u, grid, rectangles=bool(c1))
    s = c0 * sum((NC - p).sum(tuple(range(1, p.ndim))) for p in plaq.values())
    if c1:
        s = s + c1 * sum((NC - r).sum(tuple(range(1, r.ndim))) for r in rect.values())
    return s


def su3_action_density(u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float) -> torch.Tensor:
    """Per-site ``c0 sum_P (3 - Re Tr U_P) + c1 sum_R (3 - Re Tr U_R)``, shape ``(B, *local)``
    (the loops rooted at each site; the action is ``(beta / 3)`` times its exact lattice
    sum, so the result does not depend on the process grid)."""
    plaq, rect = wilson_loops(u, grid, rectangles=bool(c1))
    s = c0 * sum(NC - p for p in plaq.values())
    if c1:
        s = s + c1 * sum(NC - r for r in rect.values())
    return s


def flow_generator(u: torch.Tensor, grid: ProcessGrid, c1: float = 0.0) -> torch.Tensor:
    """``Z(V) = -TA(V A)`` with the staples of ``c0 = 1 - 8 c1``, ``c1`` (Wilson flow)."""
    return -project_ta(mm(u, staple_sum(u, grid, 1.0 - 8.0 * c1, c1)))


def flow_step_rk3(
    u: torch.Tensor, grid: ProcessGrid, eps: float, c1: float = 0.0, generator=None
) -> torch.Tensor:
    """One step of Luscher's RK3 Wilson-flow integrator (JHEP 1008 (2010) 071, (C.1)-(C.3)),
    the same arithmetic as :func:`kernels.wilson_flow.flow_step_rk3`::

        W1 = exp(Z0/4) V,  W2 = exp(8/9 Z1 - 17/36 Z0) W1,
        V' = exp(3/4 Z2 - 8/9 Z1 + 17/36 Z0) W2,      Z_i = eps Z(W_i)

    ``generator(u, grid, c1)`` computes ``Z`` (default :func:`flow_generator`).
    """
    flow_generator_ = generator or flow_generator
    z0 = eps * flow_generator_(u, grid, c1)
    w1 = mm(su_expm(0.25 * z0), u)
    z1 = eps * flow_generator_(w1, grid, c1)
    w2 = mm(su_expm((8.0 / 9.0) * z1 - (17.0 / 36.0) * z0), w1)
    z2 = eps * flow_generator_(w2, grid, c1)
    return mm(su_expm(0.75 * z2 - (8.0 / 9.0) * z1 + (17.0 / 36.0) * z0), w2)


# --------------------------------------------------------------------------- U(1)
def u1_plaquette_angles(
    theta: torch.Tensor, grid: ProcessGrid, planes: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Unwrapped plaquette angles ``theta_{mu nu}(x)``, ``(B, len(planes), *local)``."""
    out = []
    for mu, nu in planes:
        tm, tn = theta[:, mu], theta[:, nu]
        out.append(tm + shift(tn, grid, mu, 1, first=1) - shift(tm, grid, nu, 1, first=1) - tn)
    return torch.stack(out, dim=1)


def u1_action_density(
    theta: torch.Tensor, grid: ProcessGrid, planes: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``sum_{mu<nu} (1 - cos theta_{mu nu}(x))`` per site, ``(B, *local)``."""
    return (1.0 - torch.cos(u1_plaquette_angles(theta, grid, planes))).sum(dim=1)


def u1_force(
    theta: torch.Tensor, grid: ProcessGrid, planes: Sequence[tuple[int, int]], beta: float
) -> torch.Tensor:
    """``F_mu(x) = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin theta_{mu nu}(x - nu)]``."""
    nd = theta.shape[1]
    sin_p = torch.sin(u1_plaquette_angles(theta, grid, planes))
    f = [torch.zeros_like(theta[:, 0]) for _ in range(nd)]
    for i, (mu, nu) in enumerate(planes):
        s = sin_p[:, i]
        f[mu] = f[mu] + s - shift(s, grid, nu, -1, first=1)
        f[nu] = f[nu] - s + shift(s, grid, mu, -1, first=1)
    return beta * torch.stack(f, dim=1)


# --------------------------------------------------------------------------- backend
class EagerBackend:
    """The reference backend (and the base class: a backend overrides what it fuses)."""

    name = "eager"

    # SU(3)
    def su3_staple_sum(self, u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float):
        """Staple sum ``A_mu(x)`` (:func:`staple_sum`)."""
        return staple_sum(u, grid, c0, c1)

    def su3_force(self, u: torch.Tensor, grid: ProcessGrid, beta: float, c0: float, c1: float):
        """``(beta/6) TA(U A)`` (:func:`gauge_force`)."""
        return gauge_force(u, grid, beta, c0, c1)

    def su3_action_density(self, u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float):
        """Per-site weighted loop sum (:func:`su3_action_density`), used by the theory."""
        return su3_action_density(u, grid, c0, c1)

    def su3_clover_density(self, u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
        """Per-site clover energy density ``sum_{mu<nu} sum_ij |G_{mu nu}(x)_ij|^2``,
        ``(B, *local)``, with ``G`` of :func:`kernels.wilson_flow.clover_field_strength`
        (what ``wilson_flow.energy_density`` averages)."""
        from ..wilson_flow import clover_field_strength

        g = clover_field_strength(u, grid)
        return sum((x.real.square() + x.imag.square()).sum((-1, -2)) for x in g.values())

    def su3_clover_charge_density(self, u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
        """Per-site ``Re tr(G01 G23 - G02 G13 + G03 G12)`` (4D, clover ``G``), ``(B, *local)``:
        ``-1/(4 pi^2)`` times it, summed, is the topological charge."""
        from ..wilson_flow import clover_field_strength

        g = clover_field_strength(u, grid)

        def trp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.einsum("...ij,...ji->...", a, b).real

        return trp(g[(0, 1)], g[(2, 3)]) - trp(g[(0, 2)], g[(1, 3)]) + trp(g[(0, 3)], g[(1, 2)])

    def su3_action_local(self, u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float):
        """Local weighted loop sum per chain (:func:`su3_action_local`)."""
        return su3_action_local(u, grid, c0, c1)

    def su3_flow_generator(self, u: torch.Tensor, grid: ProcessGrid, c1: float = 0.0):
        """Wilson-flow generator ``-TA(V A)`` (:func:`flow_generator`)."""
        return flow_generator(u, grid, c1)

    def su3_expm_mul(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``exp(X) W`` for traceless anti-Hermitian ``X`` (the MD link update)."""
        return mm(su_expm(x), w)

    def su3_reunitarize(self, u: torch.Tensor) -> torch.Tensor:
        """The SU(3) link nearest each of ``u`` (:func:`kernels.groups.su_n.reunitarize`)."""
        return reunitarize(u)

    def su3_flow_step_rk3(self, u: torch.Tensor, grid: ProcessGrid, eps: float, c1: float = 0.0):
        """One RK3 Wilson-flow step (:func:`flow_step_rk3`) with this backend's generator."""
        return flow_step_rk3(u, grid, eps, c1, self.su3_flow_generator)

    # U(1)
    def u1_action_density(self, theta: torch.Tensor, grid: ProcessGrid, planes):
        """``sum_{mu<nu} (1 - cos theta_{mu nu})`` per site (:func:`u1_action_density`)."""
        return u1_action_density(theta, grid, planes)

    def u1_action_sum(self, theta: torch.Tensor, grid: ProcessGrid, planes):
        """The exact lattice sum (:func:`parallel.lattice_sum`) of this backend's
        :meth:`u1_action_density` per chain, ``(B,)`` (autograd-aware)."""
        return lattice_sum(self.u1_action_density(theta, grid, planes), grid, 1)

    def u1_force(self, theta: torch.Tensor, grid: ProcessGrid, planes, beta: float):
        """U(1) Wilson force (:func:`u1_force`)."""
        return u1_force(theta, grid, planes, beta)

    def __repr__(self) -> str:
        return f"<kernel backend {self.name!r}>"
