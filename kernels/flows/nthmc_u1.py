"""Gauge-covariant neural field transformations for U(1) (NTHMC; Jin, arXiv:2201.01862).

One layer updates one *subset* of the links: direction ``mu`` and the sites of one cell of the
``2^d`` tiling ``x_a = t_a (mod 2)`` of every axis ``a`` (``d 2^d`` subsets, 8 in 2D; the tiling
is built from global coordinates, so it is aligned with any domain decomposition whose local
extents are even). An active link ``theta_l = theta_mu(x)`` moves along the gradient of a
gauge-invariant potential::

    theta_l -> theta_l + d phi / d theta_l,    phi = sum_{loops L} c_L(frozen) Re U_L
                                                  = sum_L c_L cos(theta_L),

with the loops, for each ``nu != mu``, the two plaquettes ``P_{mu nu}(x)``, ``P_{mu nu}(x - nu)``
and the four ``2 x 1`` rectangles long along ``mu`` that contain ``theta_l``
(``R_{mu nu}(y) = theta_mu(y) + theta_mu(y + mu) + theta_nu(y + 2 mu) - theta_mu(y + mu + nu)
- theta_mu(y + nu) - theta_nu(y)`` at ``y = x, x - mu, x - nu, x - mu - nu``). Each such loop
contains exactly one active link (the ``1 x 2`` rectangles long along ``nu`` would join
``theta_mu(x)`` and ``theta_mu(x + 2 nu)``, both active, and are left out of ``phi``). Writing a
loop angle as ``theta_L = s_L theta_l + r_L`` (``s_L = +-1``, ``r_L`` made of frozen links)::

    theta_l -> theta_l + g(theta_l),   g(x) = -sum_L c_L s_L sin(s_L x + r_L),
    dF/dtheta_l = 1 + g'(x) = 1 - sum_L c_L cos(s_L x + r_L) >= 1 - sum_L |c_L| > 0.

The coefficients come from a CNN (:class:`kernels.flows.phi4.ConvNet`, i.e. distributed
:class:`parallel.LatticeConv` layers) evaluated at the active sites, on gauge-invariant
features of the *frozen* links only: ``cos``/``sin`` of every plaquette and ``2 x 1`` /
``1 x 2`` rectangle that contains no active link (the others are masked to zero, a value
``(cos, sin)`` never takes). Bound: ``c_L = b_L tanh(o_L)`` with ``b = eps_max share / (2(d-1))``
for plaquettes and ``eps_max (1 - share) / (4(d-1))`` for rectangles, so
``sum_L |c_L| <= eps_max < 1`` for *any* network output: every per-link map is strictly
increasing (invertible) and the Jacobian is triangular (the update of an active link depends
on itself and on frozen links only), so ``log|det| = sum_active log(1 + g'(theta_l))`` exactly.

Inverse: per active link the 1D increasing equation ``x + g(x) = y`` with the root in
``[y - sum|c|, y + sum|c|]`` (the coefficients and ``r_L`` are the same at ``U`` as at ``V``),
solved by safeguarded Newton (:func:`kernels.flows.base.solve_increasing`) with tolerance and
iteration cap; :class:`kernels.flows.base.FlowError` when not met; ``last_iterations`` holds
the iteration count (maximum over the domain group) of the layer's last inverse.

Gauge covariance: under ``theta_mu(x) -> theta_mu(x) + a(x) - a(x + mu)`` every loop angle and
every feature is invariant, so ``g`` is and ``F`` commutes with the gauge transformation. The
map is 2 pi periodic in every angle (``periodic = True``) and translation-covariant by
steps of 2, so a model trained on one lattice runs on any other with even extents
(:meth:`kernels.flows.base.Flow.rebuild_for`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from parallel import ProcessGrid, global_max, shift

from .base import (
    Composition,
    Flow,
    check_converged,
    dtype_from_name,
    implicit_newton_step,
    layer_iterations,
    record_architecture,
    require_divisible,
    solve_increasing,
)
from .phi4 import ConvNet

TWO_PI = 2.0 * math.pi


def _sh(x: torch.Tensor, grid: ProcessGrid, steps: dict[int, int]) -> torch.Tensor:
    """``x(y + sum_a k_a e_a)`` brought to ``y`` (``x`` of shape ``(B, *local)``)."""
    for axis, k in steps.items():
        if k:
            x = shift(x, grid, axis, k, first=1)
    return x


def plaquette_angle(theta, grid, a: int, b: int, absolute: bool = False) -> torch.Tensor:
    """``P_{ab}(y) = theta_a(y) + theta_b(y+a) - theta_a(y+b) - theta_b(y)``, ``(B, *local)``.

    ``absolute=True`` adds the four links with sign ``+`` (used on 0/1 link indicators)."""
    s = 1.0 if absolute else -1.0
    ta, tb = theta[:, a], theta[:, b]
    return ta + _sh(tb, grid, {a: 1}) + s * _sh(ta, grid, {b: 1}) + s * tb


def rectangle_angle(theta, grid, a: int, b: int, absolute: bool = False) -> torch.Tensor:
    """The ``2 x 1`` rectangle long along ``a``: ``R_{ab}(y) = theta_a(y) + theta_a(y+a) +
    theta_b(y+2a) - theta_a(y+a+b) - theta_a(y+b) - theta_b(y)``, ``(B, *local)``."""
    s = 1.0 if absolute else -1.0
    ta, tb = theta[:, a], theta[:, b]
    return (
        ta
        + _sh(ta, grid, {a: 1})
        + _sh(tb, grid, {a: 2})
        + s * _sh(ta, grid, {a: 1, b: 1})
        + s * _sh(ta, grid, {b: 1})
        + s * tb
    )


def feature_loops(grid: ProcessGrid, rectangles: bool) -> list[tuple[str, int, int]]:
    """The loop kinds of the CNN features: per plane ``a < b`` the plaquette and (optionally)
    the rectangles long along ``a`` and along ``b``."""
    out: list[tuple[str, int, int]] = []
    for a, b in itertools.combinations(range(grid.ndim), 2):
        out.append(("plaq", a, b))
        if rectangles:
            out += [("rect", a, b), ("rect", b, a)]
    return out


def _loop(kind: str, theta, grid, a: int, b: int, absolute: bool = False) -> torch.Tensor:
    fn = plaquette_angle if kind == "plaq" else rectangle_angle
    return fn(theta, grid, a, b, absolute)


class U1NeuralLayer(Flow):
    """One NTHMC layer on links ``mu`` of the tiling cell ``tile`` (see module docstring).

    ``hidden``/``kernel_size``/``activation`` shape the coefficient CNN; ``eps_max`` in (0, 1)
    bounds ``sum_L |c_L|``; ``plaquette_share`` in (0, 1] is the part of ``eps_max`` given to
    the plaquettes (the rest to the rectangles; 1 without rectangles).
    """

    first = 2
    periodic = True

    def __init__(
        self,
        grid: ProcessGrid,
        mu: int,
        tile: Sequence[int],
        hidden: Sequence[int] = (8,),
        kernel_size: int = 3,
        activation: str = "tanh",
        eps_max: float = 0.9,
        plaquette_share: float = 0.6,
        rectangles: bool = True,
        tol: float | None = None,
        max_iter: int = 100,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(grid)
        d = grid.ndim
        if d < 2:
            raise ValueError(f"U1NeuralLayer needs >= 2 dimensions, lattice {list(grid.shape)}")
        if not 0.0 < eps_max < 1.0:
            raise ValueError(f"eps_max must lie in (0, 1) for invertibility, got {eps_max}")
        if not rectangles:
            plaquette_share = 1.0
        if not 0.0 < plaquette_share <= 1.0:
            raise ValueError(f"plaquette_share must lie in (0, 1], got {plaquette_share}")
        if len(tile) != d:
            raise ValueError(f"tile needs one parity per axis ({d}), got {list(tile)}")
        for a in range(d):
            require_divisible(grid, a, 2, "the NTHMC layer's 2^d tiling")
        self.mu = int(mu) % d
        self.tile = tuple(int(t) % 2 for t in tile)
        self.others = [nu for nu in range(d) if nu != self.mu]
        self.rectangles = bool(rectangles)
        self.eps_max = float(eps_max)
        self.tol = tol
        self.max_iter = int(max_iter)
        self.last_iterations = 0
        dt = dtype or torch.get_default_dtype()

        # active-link indicator (1, d, *local) from global coordinates
        mask = torch.ones(grid.local_shape, dtype=torch.bool)
        for a in range(d):
            c = torch.from_numpy(grid.global_coords[a] % 2 == self.tile[a])
            mask = mask & c
        active = torch.zeros((1, d) + tuple(grid.local_shape), dtype=dt)
        active[0, self.mu] = mask.to(dt)
        self.register_buffer("active", active[0, self.mu], persistent=False)
        self.register_buffer("index", torch.nonzero(mask.reshape(-1)).reshape(-1), persistent=False)
        # feature masks: 1 where the loop contains no active link
        self.loops = feature_loops(grid, self.rectangles)
        frozen = [
            (_loop(k, active, grid, a, b, absolute=True)[0] == 0).to(dt) for k, a, b in self.loops
        ]
        self.register_buffer("frozen", torch.stack(frozen), persistent=False)

        # loops through an active link: (kind, nu, offsets of y from x, sign s_L)
        self.link_loops: list[tuple[str, int, dict[int, int], float]] = []
        bounds: list[float] = []
        per_plaq = self.eps_max * plaquette_share / (2 * (d - 1))
        per_rect = self.eps_max * (1.0 - plaquette_share) / (4 * (d - 1))
        m = self.mu
        for nu in self.others:
            self.link_loops += [("plaq", nu, {}, 1.0), ("plaq", nu, {nu: -1}, -1.0)]
            bounds += [per_plaq, per_plaq]
            if self.rectangles:
                self.link_loops += [
                    ("rect", nu, {}, 1.0),
                    ("rect", nu, {m: -1}, 1.0),
                    ("rect", nu, {nu: -1}, -1.0),
                    ("rect", nu, {m: -1, nu: -1}, -1.0),
                ]
                bounds += [per_rect] * 4
        self.register_buffer("bound", torch.tensor(bounds, dtype=dt), persistent=False)
        self.register_buffer(
            "signs", torch.tensor([s for *_, s in self.link_loops], dtype=dt), persistent=False
        )
        self.net = ConvNet(
            grid,
            2 * len(self.loops),
            len(self.link_loops),
            hidden,
            kernel_size,
            activation,
            True,
            dtype,
        )

    # ------------------------------------------------------------ pieces
    def features(self, theta: torch.Tensor) -> torch.Tensor:
        """``(cos, sin)`` of the loops free of active links, ``(B, 2 n_loops, *local)``."""
        chans = []
        for i, (k, a, b) in enumerate(self.loops):
            ang = _loop(k, theta, self.grid, a, b)
            chans += [self.frozen[i] * torch.cos(ang), self.frozen[i] * torch.sin(ang)]
        return torch.stack(chans, dim=1)

    def coefficients(self, features: torch.Tensor) -> torch.Tensor:
        """Bounded ``c_L = b_L tanh(o_L)`` at the active sites, ``(B, K, n_active)``."""
        out = self.net.at_sites(features, self.index)
        return self.bound.view(1, -1, 1) * torch.tanh(out)

    def _rest(self, theta: torch.Tensor) -> torch.Tensor:
        """``r_L`` at the active sites, ``(B, K, n_active)``: the loop angles with the active
        links set to zero (each loop holds exactly one)."""
        t0 = torch.stack(
            [
                theta[:, a] * (1.0 - self.active) if a == self.mu else theta[:, a]
                for a in range(theta.shape[1])
            ],
            dim=1,
        )
        cache: dict[tuple[str, int], torch.Tensor] = {}
        rs = []
        for kind, nu, offs, _ in self.link_loops:
            if (kind, nu) not in cache:
                cache[(kind, nu)] = _loop(kind, t0, self.grid, self.mu, nu)
            r = _sh(cache[(kind, nu)], self.grid, offs)
            rs.append(r.reshape(r.shape[0], -1).index_select(1, self.index))
        return torch.stack(rs, dim=1)

    def _g(self, x: torch.Tensor, c: torch.Tensor, r: torch.Tensor):
        """``(x + g(x), 1 + g'(x))`` for active-link values ``x`` ``(B, n)``."""
        s = self.signs.view(1, -1, 1)
        arg = s * x.unsqueeze(1) + r
        g = -(c * s * torch.sin(arg)).sum(1)
        dg = 1.0 - (c * torch.cos(arg)).sum(1)
        return x + g, dg

    def _gather(self, theta: torch.Tensor) -> torch.Tensor:
        t = theta[:, self.mu]
        return t.reshape(t.shape[0], -1).index_select(1, self.index)

    def _scatter(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = theta[:, self.mu]
        flat = t.reshape(t.shape[0], -1).index_copy(1, self.index, x)
        parts = [
            flat.reshape(t.shape) if a == self.mu else theta[:, a] for a in range(theta.shape[1])
        ]
        return torch.stack(parts, dim=1)

    # ------------------------------------------------------------ flow
    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F(v), sum_active log(1 + g'(theta_l)))``: every active link moved by ``g`` (module
        docstring); the log-det as its per-active-link terms ``(B, n_active)`` (summed exactly by
        :meth:`Flow.forward`)."""
        c = self.coefficients(self.features(v))
        r = self._rest(v)
        y, dg = self._g(self._gather(v), c, r)
        return self._scatter(v, y), torch.log(dg)

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F^{-1}(u), -log(1 + g'(x_l)) per active link)`` by safeguarded Newton per active link
        (module docstring); sets ``last_iterations``; :class:`kernels.flows.base.FlowError` if not
        converged."""
        c = self.coefficients(self.features(u))
        r = self._rest(u)
        y = self._gather(u)
        half = c.detach().abs().sum(1) + 1e-12
        calls = [0]

        def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls[0] += 1
            return self._g(x, c, r)

        tol = self.tol if self.tol is not None else 64 * torch.finfo(y.dtype).eps * TWO_PI
        x, ok, err = solve_increasing(fn, y, y - half, y + half, y, tol, self.max_iter)
        self.last_iterations = int(global_max(float(calls[0]), self.grid))
        check_converged(ok, err, self.grid, "U1NeuralLayer", tol, self.max_iter)
        x = implicit_newton_step(fn, x, y)
        _, dg = self._g(x, c, r)
        return self._scatter(u, x), -torch.log(dg)


def inverse_iterations(flow: Flow) -> list[int]:
    """Iteration counts of the last inverse of every NTHMC layer of ``flow``."""
    return layer_iterations(flow, U1NeuralLayer)


def u1_nthmc_flow(
    grid: ProcessGrid,
    n_layers: int | None = None,
    hidden: Sequence[int] = (8,),
    kernel_size: int = 3,
    activation: str = "tanh",
    eps_max: float = 0.9,
    plaquette_share: float = 0.6,
    rectangles: bool = True,
    max_iter: int = 100,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
    identity_init: bool = True,
) -> Composition:
    """``n_layers`` :class:`U1NeuralLayer` cycling the ``d 2^d`` link subsets
    (``mu`` fastest, then the tiling cells in binary order); default one sweep (8 in 2D).
    ``identity_init``: the CNNs' output layers start at zero (``F`` = identity); else the
    default (Kaiming-uniform) initialisation of every layer."""
    kwargs = dict(locals())
    kwargs.pop("grid")
    d = grid.ndim
    n_sub = d * 2**d
    n = n_sub if n_layers is None else int(n_layers)
    if n < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    dt = dtype_from_name(dtype)
    layers: list[Flow] = []
    for i in range(n):
        j = i % n_sub
        mu, cell = j % d, j // d
        tile = [(cell >> a) & 1 for a in range(d)]
        layers.append(
            U1NeuralLayer(
                grid,
                mu,
                tile,
                hidden,
                kernel_size,
                activation,
                eps_max,
                plaquette_share,
                rectangles,
                max_iter=max_iter,
                dtype=dt,
            )
        )
    if identity_init:
        with torch.no_grad():
            for layer in layers:
                last = layer.net.net[-1]
                last.weight.zero_()
                last.bias.zero_()
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.nthmc_u1:u1_nthmc_flow", kwargs)
