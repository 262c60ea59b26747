"""Gauge-covariant neural field transformations for SU(3) (NTHMC; Jin, arXiv:2201.01862).

The stout-like layer of :mod:`kernels.flows.su3` (links ``U_mu(x)`` with
``sum_{nu != mu} x_nu = parity (mod 2)`` active, all their staples frozen) with coefficients
from a convolutional network over gauge-invariant loops of the *frozen* links, the idea of
nthmc's ``CoefficientNets``. Layout ``(B, Nd, *local, 3, 3)``, generators ``T_a = i lambda_a/2``
(docs/conventions-su3.md).

Update (one ``(mu, parity)`` layer)::

    U_mu(x) -> exp(Q(x)) U_mu(x),   Q = TA(C U_mu(x)^+),
    C(x) = sum_{nu != mu} [rho^up_nu(x) C^up_nu(x) + rho^dn_nu(x) C^dn_nu(x)],

the staples ``C^up/dn_nu`` as in :class:`kernels.flows.su3.SU3StoutLayer`, i.e. ``Q`` is the
projected gradient of the local potential ``sum_k rho_k Re Tr(C_k U^+)`` (a sum of weighted
plaquettes through the link). One coefficient per staple (``2 (Nd - 1)``), bounded::

    rho_k(x) = rho_max tanh(o_k(x)) / (2 (Nd - 1)),   so   sum_k |rho_k| <= rho_max < 1,

for *any* network output ``o``. ``||Omega||_op <= sum_k |rho_k| <= rho_max`` (staples are
unitary), which is all the invertibility proof of :mod:`kernels.flows.su3` uses: the
fixed-point map ``U -> exp(-Q(U)) U'`` contracts with rate ``<= rho_max``, the layer is a
bijection of each active link and ``log|det dF/dV| = sum_active log det(1 + phi(-ad_Q) L)``
exactly (:func:`kernels.flows.su3.link_log_det`; rectangles cannot enter the potential: every
rectangle through an active link holds a second active link of the same layer).

Network inputs, on every site (``y`` the loop's corner)::

    Re Tr W(y) / 3,  Im Tr W(y) / 3    for the loops W free of active links:

* plaquettes ``U_{ab}(y)`` of the planes without ``mu`` (every ``(mu, nu)`` plaquette holds an
  active link);
* rectangles ``R_{ab}(y)`` (2 along ``a``, 1 along ``b``, :mod:`kernels.theories.su3`) of the
  planes without ``mu``, and ``R_{nu mu}(y)`` (long along ``nu``), whose two ``mu``-links
  ``U_mu(y)``, ``U_mu(y + 2 nu)`` are both frozen where ``y`` lies on sublattice
  ``1 - parity``; every channel is masked to 0 where its loop holds an active link
  (``R_{mu nu}`` always does);
* with ``staple_features``, at the active sites, ``Re Tr(C_k C_l^+) / 3`` for the pairs of
  staples (:meth:`kernels.flows.su3.SU3StoutLayer.features`: 1x2 rectangles centred on the
  link and bent "chair" loops, all of frozen links).

A :class:`kernels.flows.phi4.ConvNet` of ``kernel_size^Nd`` convolutions (distributed
:class:`parallel.LatticeConv`, halo exchanges inside) maps these channels to ``o`` at the
active sites; with ``n_hidden`` hidden layers its receptive field reaches
``(n_hidden + 1)(kernel_size - 1)/2`` sites. Since every input is gauge invariant and made of
frozen links only, ``rho`` does not depend on the active links (triangular Jacobian) and
``F(g.U) = g.F(U)``.

Inverse: fixed-point iteration ``U_{k+1} = exp(-Q(U_k)) U'`` from ``U_0 = U'`` until
``max |U_{k+1} - U_k| <= tol`` (default ``1e3`` machine epsilon) or ``max_iter``
(:class:`kernels.flows.base.FlowError` on every rank); ``last_iterations`` holds the count of
the layer's last inverse, :func:`inverse_iterations` those of a composition. With autograd on,
one implicit Newton step makes the inverse differentiable (the exact gradient of a loss on
``V = F^{-1}(U)`` over a fixed ensemble, :func:`kernels.flows.force_norm.force_through_inverse`).
Translation
covariant by steps of 2: a model trained on one lattice runs on any lattice with even extents
(:meth:`kernels.flows.base.Flow.rebuild_for`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from parallel import ProcessGrid, global_max, shift

from ..groups.su_n import (
    algebra_to_components,
    components_to_algebra,
    dagger,
    mm,
    project_ta,
    su_expm,
)
from .base import (
    Composition,
    Flow,
    dtype_from_name,
    layer_iterations,
    record_architecture,
)
from .phi4 import ConvNet
from .su3 import NC, Links, SU3StoutLayer, link_jacobian, link_log_det


def _sh(x: torch.Tensor, grid: ProcessGrid, steps: dict[int, int]) -> torch.Tensor:
    """``x(y + sum_a k_a e_a)`` at ``y`` for a one-direction field ``(B, *local, ...)``; a
    shift longer than the local extent is done in steps of one (any process grid works)."""
    for axis, k in steps.items():
        if k and abs(k) <= grid.local_shape[axis]:
            x = shift(x, grid, axis, k, first=1)
        else:
            for _ in range(abs(k)):
                x = shift(x, grid, axis, 1 if k > 0 else -1, first=1)
    return x


def _tr(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Re, Im) Tr(a b^+)`` over the last two dims."""
    re = (a.real * b.real + a.imag * b.imag).sum((-1, -2))
    im = (a.imag * b.real - a.real * b.imag).sum((-1, -2))
    return re, im


def loop_traces(u: torch.Tensor, grid: ProcessGrid, kind: str, a: int, b: int):
    """``(Re, Im) Tr W(y)`` (not divided by 3), each ``(B, *local)``, for ``W`` the plaquette
    ``U_{ab}(y) = U_a(y) U_b(y+a) U_a(y+b)^+ U_b(y)^+`` (``kind="plaq"``) or the rectangle
    ``R_{ab}(y) = U_a(y) U_a(y+a) U_b(y+2a) U_a(y+a+b)^+ U_a(y+b)^+ U_b(y)^+`` (``"rect"``)."""
    ua, ub = u[:, a], u[:, b]
    if kind == "plaq":
        return _tr(mm(ua, _sh(ub, grid, {a: 1})), mm(ub, _sh(ua, grid, {b: 1})))
    dbl = mm(ua, _sh(ua, grid, {a: 1}))
    return _tr(mm(dbl, _sh(ub, grid, {a: 2})), mm(ub, _sh(dbl, grid, {b: 1})))


def frozen_loops(nd: int, mu: int, rectangles: bool) -> list[tuple[str, int, int]]:
    """The loop kinds ``(kind, a, b)`` that are free of active links somewhere (module
    docstring): plaquettes and both rectangles of the planes without ``mu``, and the
    rectangles ``R_{nu mu}`` long along ``nu``."""
    out: list[tuple[str, int, int]] = []
    for a in range(nd):
        for b in range(a + 1, nd):
            if mu in (a, b):
                if rectangles:
                    nu = b if a == mu else a
                    out.append(("rect", nu, mu))
                continue
            out.append(("plaq", a, b))
            if rectangles:
                out += [("rect", a, b), ("rect", b, a)]
    return out


def _indicator_loop(ind: torch.Tensor, grid: ProcessGrid, kind: str, a: int, b: int):
    """Number of active links in each loop ``(kind, a, b)`` at ``y``, from the 0/1 link
    indicator ``ind`` ``(1, Nd, *local)``."""
    ia, ib = ind[:, a], ind[:, b]
    if kind == "plaq":
        return ia + _sh(ib, grid, {a: 1}) + _sh(ia, grid, {b: 1}) + ib
    return (
        ia
        + _sh(ia, grid, {a: 1})
        + _sh(ib, grid, {a: 2})
        + _sh(ia, grid, {a: 1, b: 1})
        + _sh(ia, grid, {b: 1})
        + ib
    )


class SU3NeuralLayer(SU3StoutLayer):
    """One NTHMC layer on the links ``mu`` of sublattice ``parity`` (module docstring).

    ``hidden``/``kernel_size``/``activation`` shape the coefficient CNN; ``rho_max`` in (0, 1)
    bounds ``sum_k |rho_k|``; ``rectangles`` adds the frozen rectangles to the inputs;
    ``staple_features`` the staple-pair loops at the active sites.
    """

    def __init__(
        self,
        grid: ProcessGrid,
        mu: int,
        parity: int,
        hidden: Sequence[int] = (8,),
        kernel_size: int = 3,
        activation: str = "tanh",
        rho_max: float = 0.9,
        rectangles: bool = True,
        staple_features: bool = True,
        tol: float | None = None,
        max_iter: int = 100,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            grid, mu, parity, (), 1, activation, rho_max, 1.0, tol, max_iter, dtype=dtype
        )
        dt = dtype or torch.get_default_dtype()
        nd = grid.ndim
        self.loops = frozen_loops(nd, self.mu, rectangles)
        self.staple_features = bool(staple_features)
        ind = torch.zeros((1, nd) + tuple(grid.local_shape), dtype=dt)
        ind[0, self.mu] = self.active
        masks = [(_indicator_loop(ind, grid, *loop)[0] == 0).to(dt) for loop in self.loops]
        self.register_buffer(
            "frozen",
            torch.stack(masks) if masks else torch.zeros((0, *grid.local_shape), dtype=dt),
            persistent=False,
        )
        n_in = 2 * len(self.loops) + (self.n_features if self.staple_features else 0)
        if n_in == 0:
            raise ValueError("SU3NeuralLayer needs rectangles or staple_features (no inputs)")
        self.n_inputs = n_in
        self.n_coefficients = 2 * len(self.others)
        self.net = ConvNet(
            grid, n_in, self.n_coefficients, hidden, kernel_size, activation, True, dt
        )
        self.last_iterations = 0

    # ------------------------------------------------------------ pieces
    def inputs(
        self, u: torch.Tensor, staples: list[torch.Tensor] | None = None, nb: Links | None = None
    ) -> torch.Tensor:
        """Gauge-invariant frozen-link inputs, ``(B, n_inputs, *local)``; ``staples`` (active
        sites) and ``nb`` as from :meth:`staples` and :meth:`neighbourhood` (computed if not
        given)."""
        chans: list[torch.Tensor] = []
        for i, (kind, a, b) in enumerate(self.loops):
            re, im = loop_traces(u, self.grid, kind, a, b)
            m = self.frozen[i].to(re.dtype)
            chans += [re * m / NC, im * m / NC]
        x = torch.stack(chans, dim=1) if chans else None
        if self.staple_features:
            nb = self.neighbourhood(u) if nb is None else nb
            s = super().features(u, self.staples(u, nb) if staples is None else staples, nb)
            x = s if x is None else torch.cat((x, s), dim=1)
        return x

    def coefficients(  # type: ignore[override]
        self, u: torch.Tensor, staples: list[torch.Tensor] | None = None, nb: Links | None = None
    ) -> torch.Tensor:
        """``rho_k`` at the active sites, ``(B, 2 (Nd - 1), n_active)``; staple ``k`` is
        ``[up_nu, dn_nu for nu != mu][k]``."""
        x = self.inputs(u, staples, nb)
        pdt = self.active.dtype
        o = self.net.at_sites(x.to(pdt), self.active_index).to(x.dtype)
        return self.rho_max * torch.tanh(o) / (2.0 * len(self.others))

    def _core_inputs(
        self, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inputs of the layer core (:func:`kernels.flows.su3_fused.stout_core`, fused on
        CPU, the torch core elsewhere): the weighted plane sums ``rho_{2 nu} C_{2 nu} + rho_{2
        nu + 1} C_{2 nu + 1}`` (up, down of plane ``nu``), ``(B, Nd-1, n_active, 3, 3)``, with
        unit plane coefficients, so the core's ``C = sum_nu P_nu`` is this layer's ``sum_k
        rho_k C_k``; ``U_mu(x)``; the field."""
        nb = self.neighbourhood(u)
        staples = self.staples(u, nb)
        rho = self.coefficients(u, staples, nb).to(u.dtype)
        x = nb[self._item[(self.mu, (0,) * self.grid.ndim)]]
        b, n = x.shape[:2]
        planes = torch.stack(
            [
                rho[:, 2 * i, :, None, None] * staples[2 * i]
                + rho[:, 2 * i + 1, :, None, None] * staples[2 * i + 1]
                for i in range(len(staples) // 2)
            ],
            1,
        )
        ones = torch.ones(b, planes.shape[1], n, dtype=x.real.dtype, device=x.device)
        return planes, ones, x, u

    def _context(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The active links ``U_mu(x)`` and ``C = sum_k rho_k C_k``, on the active sites,
        ``(B, n_active, 3, 3)`` each."""
        nb = self.neighbourhood(u)
        staples = self.staples(u, nb)
        rho = self.coefficients(u, staples, nb).to(u.dtype)
        x = nb[self._item[(self.mu, (0,) * self.grid.ndim)]]
        c = sum(rho[:, k, :, None, None] * s for k, s in enumerate(staples))
        return x, c  # type: ignore[return-value]

    # ------------------------------------------------------------ Flow
    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log|det dv/du|)`` by the fixed-point iteration (module docstring); sets
        ``last_iterations`` (maximum over the domain group). With autograd on, one implicit
        Newton step (:meth:`implicit_step`) makes ``v`` differentiable in ``u`` and the
        parameters."""
        with torch.no_grad():
            y, c = self._context(u)
            x, it = self.solve_active(y, c)
            self.last_iterations = int(global_max(float(it), self.grid))
        if torch.is_grad_enabled():
            x, c = self.implicit_step(u, x)
        q, omega = self._step(c, x)
        return self._scatter(u, x), -link_log_det(q, omega)  # per active link

    def implicit_step(self, u: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x', C)``: one Newton step from the converged active links ``x`` of
        ``G(x) = exp(TA(C x^+)) x = y`` with autograd through ``C`` and ``y``.

        ``G(exp(w) x) = exp(J w) G(x) + O(w^2)`` with the per-link 8x8
        :func:`kernels.flows.su3.link_jacobian` ``J`` (detached), so
        ``x' = exp(-J^{-1} e) x`` with ``e = TA(G(x) y^+)`` (algebra components): the value
        is unchanged up to the residual and the gradient is the implicit one,
        ``dw = -J^{-1} de`` (the exact derivative of the inverse).
        """
        x = x.detach()
        y, c = self._context(u)
        q, omega = self._step(c, x)
        e = algebra_to_components(project_ta(mm(mm(su_expm(q), x), dagger(y))))
        jac = link_jacobian(q.detach(), omega.detach())
        w = -torch.linalg.solve(jac, e.unsqueeze(-1)).squeeze(-1)
        return mm(su_expm(components_to_algebra(w, NC)), x), c


def inverse_iterations(flow: Flow) -> list[int]:
    """Iteration counts of the last inverse of every :class:`SU3NeuralLayer` of ``flow``."""
    return layer_iterations(flow, SU3NeuralLayer)


def su3_nthmc_flow(
    grid: ProcessGrid,
    n_layers: int | None = None,
    hidden: Sequence[int] = (8,),
    kernel_size: int = 3,
    activation: str = "tanh",
    rho_max: float = 0.9,
    rectangles: bool = True,
    staple_features: bool = True,
    tol: float | None = None,
    max_iter: int = 100,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
    identity_init: bool = True,
) -> Composition:
    """``n_layers`` :class:`SU3NeuralLayer` cycling ``(mu, parity)`` = (0,0), (1,0), ...,
    (Nd-1,0), (0,1), ...; default ``2 Nd`` (every link once). ``identity_init``: the CNNs'
    output layers start at zero (``F`` = identity, NTHMC starts as plain HMC). ``dtype`` is
    that of the coefficient networks; the links keep their own complex dtype."""
    kwargs = dict(locals())
    kwargs.pop("grid")
    nd = grid.ndim
    n = 2 * nd if n_layers is None else int(n_layers)
    if n < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    dt = dtype_from_name(dtype)
    layers: list[Flow] = [
        SU3NeuralLayer(
            grid,
            i % nd,
            (i // nd) % 2,
            hidden,
            kernel_size,
            activation,
            rho_max,
            rectangles,
            staple_features,
            tol,
            max_iter,
            dt,
        )
        for i in range(n)
    ]
    if identity_init:
        with torch.no_grad():
            for layer in layers:
                last = layer.net.net[-1]
                last.weight.zero_()
                last.bias.zero_()
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.nthmc_su3:su3_nthmc_flow", kwargs)
