"""Gauge-equivariant flows for U(1) link angles.

Layout ``(B, Nd, *local)`` (``first = 2``), the layout of :class:`kernels.theories.u1.U1Gauge`;
plaquette ``theta_{mu nu}(x) = theta_mu(x) + theta_nu(x + mu) - theta_mu(x + nu) - theta_nu(x)``
(:func:`parallel.shift` convention). A gauge transformation
``theta_mu(x) -> theta_mu(x) + a(x) - a(x + mu)`` leaves plaquettes invariant; both layers
below add to a link a function of plaquettes only, hence ``F(g.U) = g.F(U)``.

Plaquette coupling (Kanwar et al., PRL 125 (2020) 121601, arXiv:2003.06413; the masks of
Albergo et al., arXiv:2101.08176), 2D
-------------------------------------
Layer ``(mu, off)``, ``nu = 1 - mu``, stripes along ``x_nu`` in global coordinates (period 4):

* active links: ``theta_mu(x)`` with ``x_nu = off (mod 4)``;
* plaquettes ``P(x) = theta_{01}(x)``: *active* ``x_nu = off``, *frozen* ``x_nu = off+1, off+2``,
  *passive* ``x_nu = off+3``.

Each active link lies in exactly one active plaquette (``P(x)``, sign ``sigma = +1`` for
``mu = 0``, ``-1`` for ``mu = 1``) and one passive one; frozen plaquettes contain no active
link. With ``p = P(x) mod 2 pi`` in ``[0, 2 pi)``, the context ``(cos P, sin P)`` on the frozen
plaquettes fed to a periodic CNN giving ``s_1..s_K`` and ``t`` per site, the active plaquette
becomes ``h(p) + t`` with the non-compact-projection (NCP) mixture

    h(p) = (1/K) sum_k 2 atan2(e^{s_k} sin(p/2), cos(p/2)),     h(0) = 0, h(2 pi) = 2 pi,
    h'(p) = (1/K) sum_k 1 / (e^{-s_k} cos^2(p/2) + e^{s_k} sin^2(p/2)) > 0,

by moving the active link: ``theta_mu(x) += sigma * D(x)``, ``D = h(p) - p + t``. ``D`` is a
smooth 2 pi-periodic function of ``P`` (``h(p) - p`` vanishes at both ends), so links stay
unwrapped and continuous. The Jacobian is triangular with diagonal ``h'(p)`` on the active
links, ``log|det| = sum_{active x} log h'(p(x))``. Inverse: frozen plaquettes (hence ``s, t``)
are unchanged, ``p = h^{-1}((P' - t) mod 2 pi)`` by safeguarded Newton, then undo ``D``.
Needs ``L_nu`` divisible by 4. ``8`` layers cycle through all ``(mu, off)``.

``transform="spline"`` replaces the NCP mixture by a circular rational-quadratic spline
(Rezende et al., arXiv:2002.02428; Durkan et al., arXiv:1906.04032; formulas in
:mod:`kernels.flows.splines`): ``K = n_mix`` bins, the CNN gives per site ``K`` widths, ``K``
heights, ``K`` knot derivatives (``h'(0) = h'(2 pi)``) and ``t`` (``3 K + 1`` channels).
``h(0) = 0``, ``h(2 pi) = 2 pi`` as before, so the update, the log-det and the periodicity are
the same; ``h`` is ``C^1`` (piecewise rational), and the inverse ``p = h^{-1}((P' - t) mod 2 pi)``
is the analytic root of a quadratic per site (no iteration, differentiable by autograd).

Stout-like residual layer (any dimension)
-----------------------------------------
Layer ``(mu, parity)``: active links ``theta_mu(x)`` with ``sum_{nu != mu} x_nu = parity
(mod 2)``; no two active links share a plaquette. With learned ``eps_nu``::

    theta_mu(x) -> theta_mu(x)
                   + sum_{nu != mu} eps_nu [sin theta_{mu nu}(x) - sin theta_{mu nu}(x - nu)]

(``-eps/beta`` times the Wilson force: ``eps < 0`` is a gradient-flow/stout smearing step).
The update depends on the link itself and on inactive links only, so the Jacobian is
triangular with diagonal
``J(x) = 1 + sum_nu eps_nu [cos theta_{mu nu}(x) + cos theta_{mu nu}(x - nu)]``;
``eps_nu = eps_max tanh(a_nu) / (2 (d - 1))`` keeps ``J >= 1 - eps_max > 0`` (invertible).
``log|det| = sum_active log J``. Inverse: per link a 1D increasing equation (the other links of
its plaquettes are fixed), solved by safeguarded Newton with a tolerance and an iteration cap;
:class:`kernels.flows.base.FlowError` when not met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from parallel import ProcessGrid, shift

from .base import (
    Composition,
    Flow,
    check_converged,
    dtype_from_name,
    implicit_newton_step,
    logdet_terms,
    parity_mask,
    record_architecture,
    require_divisible,
    solve_increasing,
    stout_sublattice,
    stripe_mask,
)
from .phi4 import ConvNet
from .splines import circular_spline_knots, rq_spline, rq_spline_inverse

TWO_PI = 2.0 * math.pi


def wrap_2pi(a: torch.Tensor) -> torch.Tensor:
    """``a mod 2 pi`` in ``[0, 2 pi)``."""
    return torch.remainder(a, TWO_PI)


def plaquette(theta: torch.Tensor, grid: ProcessGrid, mu: int, nu: int) -> torch.Tensor:
    """``theta_{mu nu}(x)``, shape ``(B, *local)``, unwrapped (distributed via shifts)."""
    tm, tn = theta[:, mu], theta[:, nu]
    return tm + shift(tn, grid, mu, 1, first=1) - shift(tm, grid, nu, 1, first=1) - tn


# ------------------------------------------------------------------ NCP mixture
def atan2_upper(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` for ``y >= 0`` (not both 0) from ``atan`` of a ratio of magnitude <= 1.

    torch's CPU ``atan2`` rounds differently in its vectorized and scalar loops, and which
    loop a site takes depends on the size of the local block, so flows using it would not be
    bit-identical across process grids; ``atan`` and the divisions here are. Same value up
    to rounding, finite gradients everywhere (no division by 0)."""
    steep = y.abs() >= x.abs()
    r = torch.atan(torch.where(steep, x, y) / torch.where(steep, y, x))
    return torch.where(steep, 0.5 * math.pi - r, torch.where(x > 0, r, r + math.pi))


def ncp_mixture(p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NCP mixture ``h(p)`` and ``h'(p)`` for ``p`` in ``[0, 2pi]``; ``s`` has the K components
    on dim 1: ``p`` ``(B, *local)``, ``s`` ``(B, K, *local)``."""
    half = 0.5 * p.unsqueeze(1)
    c, sn = torch.cos(half), torch.sin(half)
    es = torch.exp(s)
    h = (2.0 * atan2_upper(es * sn, c.expand_as(es))).mean(dim=1)
    dh = (1.0 / (c * c / es + es * sn * sn)).mean(dim=1)
    return h, dh


def ncp_log_derivative(p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``log h'(p)`` computed stably (logsumexp over the components)."""
    half = 0.5 * p.unsqueeze(1)
    c2, s2 = torch.cos(half) ** 2, torch.sin(half) ** 2
    logs = -torch.log(torch.exp(-s) * c2 + torch.exp(s) * s2)
    return torch.logsumexp(logs, dim=1) - math.log(s.shape[1])


TRANSFORMS = ("ncp", "spline")


class U1PlaquetteCoupling(Flow):
    """Gauge-equivariant coupling on masked plaquettes (2D), see the module docstring.

    ``transform="ncp"``: the NCP mixture of ``n_mix`` components (CNN outputs ``n_mix + 1``
    channels); ``"spline"``: a circular rational-quadratic spline of ``K = n_mix`` bins (CNN
    outputs ``3 K + 1`` channels: widths, heights, knot derivatives, shift), analytic inverse
    (``tol`` and ``max_iter`` are then unused).
    """

    first = 2
    periodic = True

    def __init__(
        self,
        grid: ProcessGrid,
        mu: int,
        off: int,
        n_mix: int = 2,
        hidden: Sequence[int] = (8, 8),
        kernel_size: int = 3,
        activation: str = "tanh",
        tol: float | None = None,
        max_iter: int = 100,
        dtype: torch.dtype | None = None,
        transform: str = "ncp",
    ) -> None:
        super().__init__(grid)
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; known: {list(TRANSFORMS)}")
        if grid.ndim != 2:
            raise ValueError(f"U1PlaquetteCoupling is 2D only, lattice {list(grid.shape)}")
        if mu not in (0, 1):
            raise ValueError(f"mu must be 0 or 1, got {mu}")
        self.mu, self.nu, self.off = int(mu), 1 - int(mu), int(off) % 4
        require_divisible(grid, self.nu, 4, "the U(1) plaquette coupling")
        self.sigma = 1.0 if self.mu == 0 else -1.0
        self.n_mix = int(n_mix)
        if self.n_mix < 1:
            raise ValueError(f"n_mix must be >= 1, got {n_mix}")
        self.transform = transform
        self.tol = tol
        self.max_iter = int(max_iter)
        n_out = self.n_mix + 1 if transform == "ncp" else 3 * self.n_mix + 1
        self.net = ConvNet(grid, 2, n_out, hidden, kernel_size, activation, True, dtype)
        dt = dtype or torch.get_default_dtype()
        o = self.off
        self.register_buffer("active", stripe_mask(grid, self.nu, [o], 4, dt), persistent=False)
        self.register_buffer(
            "frozen", stripe_mask(grid, self.nu, [o + 1, o + 2], 4, dt), persistent=False
        )

    def _plaq(self, theta: torch.Tensor) -> torch.Tensor:
        return plaquette(theta, self.grid, 0, 1)

    def _knots(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.n_mix
        return circular_spline_knots(raw[:, :k], raw[:, k : 2 * k], raw[:, 2 * k :])

    def _move(self, theta: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        upd = (self.sigma * self.active) * delta
        parts = [theta[:, d] + upd if d == self.mu else theta[:, d] for d in range(2)]
        return torch.stack(parts, dim=1)

    # The conditioner's output layer and the element-wise transform run on the active
    # plaquettes only (a quarter of the sites for the stripe masks, one row or one site for
    # the sweep masks of u1_sweep.py); the link update is scattered back.
    def _active_index(self) -> torch.Tensor:
        """Flat local indices of the active plaquettes (cached per mask and device)."""
        key = (self.active.data_ptr(), self.active.device)
        if getattr(self, "_index_key", None) != key:
            self._index = torch.nonzero(self.active.reshape(-1) > 0).reshape(-1)
            self._index_key = key
        return self._index

    def _gather(self, plaq: torch.Tensor, shift: float = 0.0):
        """``(p, raw, t)`` at the active sites: ``p = (plaq - shift t) mod 2 pi`` ``(B, n)``,
        raw transform parameters ``(B, k, n)`` and shift ``t`` ``(B, n)``, from the network on
        the frozen plaquettes ``frozen * (cos P, sin P)``."""
        idx = self._active_index()
        ctx = torch.stack((self.frozen * torch.cos(plaq), self.frozen * torch.sin(plaq)), dim=1)
        out = self.net.at_sites(ctx, idx)  # conditioner output at the active sites only
        raw, t = out[:, :-1], out[:, -1]
        p = wrap_2pi(plaq.reshape(plaq.shape[0], -1).index_select(1, idx) - shift * t)
        return p, raw, t

    def _scatter_move(self, theta: torch.Tensor, delta: torch.Tensor, sign: float):
        """Add ``sign sigma delta`` (given at the active sites) to the active links."""
        full = delta.new_zeros(delta.shape[0], self.active.numel())
        full = full.index_copy(1, self._active_index(), delta)
        return self._move(theta, sign * full.reshape(theta.shape[:1] + theta.shape[2:]))

    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log|det du/dv|)`` of this layer on the local block (halo exchanges inside)."""
        if self.transform == "spline":
            return self._spline_forward(v)
        p, s, t = self._gather(self._plaq(v))
        h, _ = ncp_mixture(p, s)
        return self._scatter_move(v, h - p + t, 1.0), ncp_log_derivative(p, s)

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log|det dv/du|)``: the exact inverse of :meth:`forward_local`."""
        if self.transform == "spline":
            return self._spline_inverse(u)
        y, s, t = self._gather(self._plaq(u), shift=1.0)
        # start from the exact inverse of the single component with the mean s
        sbar = s.mean(dim=1)
        x0 = 2.0 * atan2_upper(torch.exp(-sbar) * torch.sin(0.5 * y), torch.cos(0.5 * y))

        def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ncp_mixture(x, s)

        tol = self.tol if self.tol is not None else 64 * torch.finfo(y.dtype).eps * TWO_PI
        zeros = torch.zeros_like(y)
        p, ok, err = solve_increasing(fn, y, zeros, zeros + TWO_PI, x0, tol, self.max_iter)
        check_converged(ok, err, self.grid, "U1PlaquetteCoupling", tol, self.max_iter)
        p = implicit_newton_step(fn, p, y)
        h, _ = ncp_mixture(p, s)
        ld = -ncp_log_derivative(p, s)
        return self._scatter_move(u, h - p + t, -1.0), ld

    def _spline_forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, raw, t = self._gather(self._plaq(v))
        h, _, logdh = rq_spline(p, *self._knots(raw))
        return self._scatter_move(v, h - p + t, 1.0), logdh

    def _spline_inverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, raw, t = self._gather(self._plaq(u), shift=1.0)
        p, logdh = rq_spline_inverse(y, *self._knots(raw))
        return self._scatter_move(u, y - p + t, -1.0), -logdh


class U1StoutLayer(Flow):
    """Stout-like residual update of one direction on one sublattice (any dimension)."""

    first = 2
    periodic = True

    def __init__(
        self,
        grid: ProcessGrid,
        mu: int,
        parity: int,
        eps_max: float = 0.9,
        tol: float | None = None,
        max_iter: int = 100,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(grid)
        self.mu, self.parity, self.others = stout_sublattice(
            grid, mu, parity, ("eps_max", eps_max), "U1StoutLayer", "U(1)"
        )
        self.eps_max = float(eps_max)
        self.tol = tol
        self.max_iter = int(max_iter)
        self.coeff = nn.Parameter(torch.zeros(len(self.others), dtype=dtype))
        dt = dtype or torch.get_default_dtype()
        mask = parity_mask(grid, self.parity, axes=self.others, dtype=dt)
        self.register_buffer("active", mask, persistent=False)

    @property
    def eps(self) -> torch.Tensor:
        """The bounded coefficients ``eps_nu = eps_max tanh(a_nu) / (2 (d - 1))``."""
        return self.eps_max * torch.tanh(self.coeff) / (2.0 * len(self.others))

    def _staples(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per ``nu``: ``(c1, c2)`` with ``theta_{mu nu}(x) = theta_mu(x) + c1`` and
        ``theta_{mu nu}(x - nu) = c2 - theta_mu(x)``; independent of the active links."""
        g, mu = self.grid, self.mu
        tm = theta[:, mu]
        out = []
        for nu in self.others:
            tn = theta[:, nu]
            c1 = shift(tn, g, mu, 1, first=1) - shift(tm, g, nu, 1, first=1) - tn
            tm_m = shift(tm, g, nu, -1, first=1)
            tn_m = shift(tn, g, nu, -1, first=1)
            c2 = tm_m + shift(tn_m, g, mu, 1, first=1) - tn_m
            out.append((c1, c2))
        return out

    def _g(self, x: torch.Tensor, staples, eps) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``g(x)`` of the active link value ``x`` and ``1 + g'(x)``."""
        g = torch.zeros_like(x)
        dg = torch.ones_like(x)
        for i, (c1, c2) in enumerate(staples):
            a, b = x + c1, c2 - x
            g = g + eps[i] * (torch.sin(a) - torch.sin(b))
            dg = dg + eps[i] * (torch.cos(a) + torch.cos(b))
        return g, dg

    def _replace(self, theta: torch.Tensor, new_mu: torch.Tensor) -> torch.Tensor:
        parts = [new_mu if d == self.mu else theta[:, d] for d in range(theta.shape[1])]
        return torch.stack(parts, dim=1)

    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log|det du/dv|)`` of this layer on the local block (halo exchanges inside)."""
        staples = self._staples(v)
        x = v[:, self.mu]
        g, dg = self._g(x, staples, self.eps)
        u_mu = x + self.active * g
        return self._replace(v, u_mu), logdet_terms(self.active * torch.log(dg))

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log|det dv/du|)``: the exact inverse of :meth:`forward_local`."""
        staples = self._staples(u)
        y = u[:, self.mu]
        eps = self.eps
        bound = float(2.0 * eps.detach().abs().sum()) + 1e-12

        def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            g, dg = self._g(x, staples, eps)
            return x + g, dg

        tol = self.tol if self.tol is not None else 64 * torch.finfo(y.dtype).eps * TWO_PI
        x, ok, err = solve_increasing(fn, y, y - bound, y + bound, y, tol, self.max_iter)
        check_converged(ok, err, self.grid, "U1StoutLayer", tol, self.max_iter)
        x = implicit_newton_step(fn, x, y)
        _, dg = self._g(x, staples, eps)
        v_mu = self.active * x + (1.0 - self.active) * y
        return self._replace(u, v_mu), -logdet_terms(self.active * torch.log(dg))


# ------------------------------------------------------------------ builders
def u1_ncp_flow(
    grid: ProcessGrid,
    n_layers: int = 8,
    n_mix: int = 2,
    hidden: Sequence[int] = (8, 8),
    kernel_size: int = 3,
    activation: str = "tanh",
    stout_layers: int = 0,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
    transform: str = "ncp",
) -> Composition:
    """``n_layers`` plaquette couplings cycling ``(mu, off)`` = (0,0), (1,0), (0,1), ...,
    followed by ``stout_layers`` stout layers cycling ``(mu, parity)``.

    ``transform``: ``"ncp"`` (NCP mixtures of ``n_mix`` components) or ``"spline"`` (circular
    rational-quadratic splines of ``n_mix`` bins). Architecture records without the key (made
    before it existed) rebuild NCP flows."""
    kwargs = dict(locals())
    kwargs.pop("grid")
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; known: {list(TRANSFORMS)}")
    dt = dtype_from_name(dtype)
    layers: list[Flow] = [
        U1PlaquetteCoupling(
            grid,
            i % 2,
            (i // 2) % 4,
            n_mix,
            hidden,
            kernel_size,
            activation,
            dtype=dt,
            transform=transform,
        )
        for i in range(int(n_layers))
    ]
    layers += _stout_layers(grid, stout_layers, 0.9, dt)
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.u1:u1_ncp_flow", kwargs)


def _stout_layers(grid: ProcessGrid, n: int, eps_max: float, dt) -> list[Flow]:
    nd = grid.ndim
    return [U1StoutLayer(grid, i % nd, (i // nd) % 2, eps_max, dtype=dt) for i in range(int(n))]


def u1_stout_flow(
    grid: ProcessGrid,
    n_layers: int = 4,
    eps_max: float = 0.9,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
) -> Composition:
    """``n_layers`` stout-like layers cycling ``(mu, parity)``; ``2 d`` cover every link once."""
    kwargs = dict(locals())
    kwargs.pop("grid")
    layers = _stout_layers(grid, n_layers, eps_max, dtype_from_name(dtype))
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.u1:u1_stout_flow", kwargs)
