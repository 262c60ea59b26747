"""Gauge-covariant stout-like residual flow layers for SU(3) links.

Layout ``(B, Nd, *local, 3, 3)`` complex (``first = 2``), the layout of
:class:`kernels.theories.su3.SU3Gauge`; generators ``T_a = i lambda_a / 2``,
``Tr T_a T_b = -delta_ab / 2``, algebra components ``w_a = -2 Re Tr(T_a W)``.

Layer ``(mu, parity)``
----------------------
*Active* links are ``U_mu(x)`` with ``sum_{nu != mu} x_nu = parity (mod 2)`` (global
coordinates, so the same pattern on every process grid; needs even extents ``L_nu``,
``nu != mu``). Neighbours ``x +- nu`` of an active site are inactive, so every staple of an
active link holds *frozen* links only. Staples (paths from ``x`` to ``x + mu``)::

    C^up_nu(x) = U_nu(x) U_mu(x + nu) U_nu(x + mu)^+
    C^dn_nu(x) = U_nu(x - nu)^+ U_mu(x - nu) U_nu(x - nu + mu)

Update (Morningstar & Peardon, PRD 69 (2004) 054501, stout form, with learned local
coefficients)::

    U_mu(x) -> exp(Q(x)) U_mu(x),   Q = TA(Omega),   Omega = C U_mu(x)^+,
    C(x) = sum_{nu != mu} rho_nu(x) [C^up_nu(x) + C^dn_nu(x)],

``TA`` the traceless anti-Hermitian projection. ``rho_nu > 0`` smooths (a stout / Wilson-flow
step: ``Q = -(6 rho / beta) F_Wilson`` for constant ``rho``), ``rho_nu < 0`` roughens.
Under ``U_mu(x) -> g(x) U_mu(x) g(x + mu)^+`` the staples transform like the link, ``Omega``
and ``Q`` by ``g(x) . g(x)^+``, so ``F(g.U) = g.F(U)`` when ``rho`` is gauge invariant.

Coefficients: ``rho_nu(x) = rho_max tanh(r_nu(x)) / (2 (Nd - 1))`` with ``r = CNN(features)``
(:class:`kernels.flows.phi4.ConvNet`, kernel size 1 = a pointwise MLP), fed with
gauge-invariant loops made of frozen links only, on the active sites (zero elsewhere):

* ``Re Tr(C_k C_l^+) / 3`` for every pair ``k < l`` of the ``2 (Nd - 1)`` staples: closed
  loops through ``x`` and ``x + mu`` around the active link (``up_nu``/``dn_nu``: the 1x2
  rectangle centred on it; other pairs: bent "chair" loops);
* ``Re Tr U_{nu lam}(x) / 3``, the plaquettes at ``x`` in the planes without ``mu``.

So ``rho`` and ``C`` do not depend on any active link.

Jacobian and log-det
--------------------
Frozen links are unchanged and each active link depends on itself and frozen links only, so
the Jacobian is block triangular with one 8x8 block per active link. In left-trivialised
coordinates ``U -> exp(w) U`` (input) and ``U' -> exp(w') U'`` (output), with ``C`` frozen,
``Omega(w) = Omega exp(-w)``, ``dQ = -TA(Omega w)`` and

    J = exp(ad_Q) + phi(ad_Q) L,     phi(z) = (e^z - 1) / z,
    (ad_Q)_ab = -2 Re Tr(T_a [Q, T_b]),   L_ab = 2 Re Tr(T_a Omega T_b),

from ``d exp(Q) exp(-Q) = phi(ad_Q) dQ`` (both terms in one 16x16 matrix exponential,
``exp([[A, L], [0, 0]]) = [[e^A, phi(A) L], [0, 1]]``). Haar measure is Lebesgue measure in
these coordinates, so ``log|det dF/dV| = sum_active log det J``.

Invertibility: ``ad_Q`` is skew (``Q`` anti-Hermitian), so ``||phi(+-ad_Q)|| <= 1``; ``TA`` is an
orthogonal projection, so ``||L|| <= ||Omega||_op <= s = sum_nu 2 |rho_nu| <= rho_max``
(staples are unitary). Hence the fixed-point map ``U -> exp(-Q(U)) U'`` is a contraction with
rate ``<= s < 1`` for ``rho_max < 1``: the layer is a bijection of each link, its inverse is
the unique fixed point, and ``J = e^{ad_Q} (1 + phi(-ad_Q) L)`` has ``det J > 0``.

Inverse: fixed-point iteration ``U_{k+1} = exp(-Q(U_k)) U'`` from ``U_0 = U'`` until
``max |U_{k+1} - U_k| <= tol`` or ``max_iter``
(:class:`kernels.flows.base.FlowError` on every rank when not met). The inverse runs without
autograd (it refuses a field that requires grad); forward, log-det and their first and
second derivatives are autograd-ready (trivialized force, force matching).

Implementation (cost of the trivialized force, docs/performance.md): a layer reads the 25
links it needs at its active sites with one gather from the field (halo-padded only along
axes split over ranks), computes staples, loops and the update on those sites only (the
loops are scattered back to the lattice for the coefficient network's convolution), the 15
staple-pair loops as one Gram matrix, ``ad_Q`` and ``L`` as real GEMMs, ``phi`` by a fused
Horner series, and ``exp(Q)`` by Cayley-Hamilton with a spectral first derivative
(:class:`_SU3Exp`). That eager torch path is the reference and the fallback. On CPU with
complex128 links and numba installed (:mod:`kernels.flows.su3_fused`, setting
``TRIVHMC_STOUT_KERNEL=auto|eager``) the same layer runs as numba site loops with analytic
first-order backwards: staples and loops read straight from the field
(:func:`~kernels.flows.su3_fused.stout_loops`), the update and log-det in the eigenbasis of
``i Q`` (:func:`~kernels.flows.su3_fused.stout_core`: ``log det`` of a 9x9 matrix on ``gl(3)``,
inverted in a real basis of ``u(3)``), the new links written by
:func:`~kernels.flows.su3_fused.replace_links`; a network of ``1^D`` convolutions is then
evaluated on the active sites only. A backward that builds a graph (``create_graph``, force
matching) differentiates the eager pieces instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch

from parallel import LatticeConv, ProcessGrid, halo_pad

from ..groups.su_n import dagger, expm_su3, mm, project_ta, su_generators
from .base import (
    Composition,
    Flow,
    FlowError,
    check_converged,
    dtype_from_name,
    parity_mask,
    record_architecture,
    stout_sublattice,
)
from .phi4 import ConvNet
from .su3_fused import backward_slabs, replace_links, stout_core, stout_loops, uses_fused

NC = 3
NG = NC * NC - 1
#: links read by a layer at its active sites (:meth:`SU3StoutLayer.neighbourhood`)
Links = tuple[torch.Tensor, ...]


def _retr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Re Tr(a b^+)`` over the last two dims."""
    return (a.real * b.real + a.imag * b.imag).sum((-1, -2))


@cache
def _jacobian_tensors(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``W1[a,b,j,k] = (T_b T_a)_kj`` and ``W1 - W2`` with ``W2[a,b,j,k] = (T_a T_b)_kj``, so
    that ``Tr(T_a X T_b) = sum_jk W1[a,b,j,k] X_jk`` and ``Tr(T_a [X, T_b])`` uses W1 - W2."""
    t = su_generators(NC, dtype=dtype, device=device)
    w1 = torch.einsum("bkl,alj->abjk", t, t)
    w2 = torch.einsum("akl,blj->abjk", t, t)
    return w1, w1 - w2


@cache
def _adjoint_maps(dtype: torch.dtype, device: str) -> torch.Tensor:
    """For complex ``dtype``: real ``(2, 18, 64)`` matrices ``M`` with ``ad_Q = q18 @ M[0]``
    and ``L = o18 @ M[1]`` (flattened to 64), ``x18`` the real view ``(Re x_jk, Im x_jk)`` of
    a 3x3 matrix: the real parts ``Re sum_jk W_abjk X_jk = sum_jk (Re W Re X - Im W Im X)``
    of the einsums in :func:`link_jacobian` as one real GEMM each."""
    w1, wad = _jacobian_tensors(dtype, device)
    mats = []
    for w, scale in ((wad, -2.0), (w1, 2.0)):
        m = torch.stack((w.real, -w.imag), dim=-1)  # (a, b, j, k, re/im)
        mats.append(scale * m.reshape(NG * NG, 2 * NC * NC).transpose(0, 1))
    return torch.stack(mats)


def _ad_and_l(q: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ad_Q, L)``, real ``(..., 8, 8)`` each (module docstring)."""
    maps = _adjoint_maps(q.dtype, str(q.device))
    lead = q.shape[:-2]
    ad = torch.view_as_real(q).reshape(-1, 2 * NC * NC) @ maps[0]
    lmat = torch.view_as_real(omega).reshape(-1, 2 * NC * NC) @ maps[1]
    return ad.reshape(*lead, NG, NG), lmat.reshape(*lead, NG, NG)


def link_jacobian(q: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """The real 8x8 ``J = exp(ad_Q) + phi(ad_Q) L`` of ``U -> exp(TA(C U^+)) U`` (module
    docstring) for ``Q = TA(Omega)``, ``Omega = C U^+``; shapes ``(..., 3, 3)`` -> ``(..., 8, 8)``.
    """
    w1, wad = _jacobian_tensors(q.dtype, str(q.device))
    ad = -2.0 * torch.einsum("abjk,...jk->...ab", wad, q).real
    lmat = 2.0 * torch.einsum("abjk,...jk->...ab", w1, omega).real
    top = torch.cat((ad, lmat), dim=-1)
    block = torch.cat((top, torch.zeros_like(top)), dim=-2)
    e = torch.linalg.matrix_exp(block)
    return e[..., :NG, :NG] + e[..., :NG, NG:]


def _phi_series(x: torch.Tensor) -> torch.Tensor:
    """``phi(X) = (e^X - 1)/X`` for real ``(..., n, n)`` ``X``, differentiable.

    Scaling and "squaring": ``X_0 = X / 2^m`` with ``max ||X_0||_F <= 1/2``, the Taylor series
    ``sum_{k <= K} X_0^k / (k+1)!`` by Horner with the tail bound ``e^r r^(K+1) / (K+2)!``
    below ``1e-17``, then ``m`` times ``phi(2Y) = phi(Y) (2 + Y phi(Y)) / 2``. ``m`` and ``K``
    come from the largest *finite* norm of the batch: a NaN or infinite ``X`` (a broken
    chain) gives a non-finite result for itself and leaves the others' bits alone.
    """
    norms = torch.linalg.matrix_norm(x.detach()) if x.numel() else x.new_zeros(0)
    norms = norms[torch.isfinite(norms)]  # a non-finite X (a broken chain) only spoils its own
    r = float(norms.max()) if norms.numel() else 0.0  # result (inf: no scale or series for it)
    m = max(0, math.ceil(math.log2(r / 0.5))) if r > 0.5 else 0
    y = x / 2.0**m
    r0 = r / 2.0**m
    k, tail = 0, math.exp(r0) * r0
    while tail > 1e-17:
        k += 1
        tail *= r0 / (k + 2)
    lead, n = x.shape[:-2], x.shape[-1]
    y = y.reshape(-1, n, n)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    p = (eye / math.factorial(k + 1)).expand(y.shape[0], n, n)
    for j in range(k - 1, -1, -1):
        p = torch.baddbmm(eye / math.factorial(j + 1), y, p)  # one fused pass per term
    for _ in range(m):
        p = p @ (2.0 * eye + y @ p) / 2.0
        y = 2.0 * y
    return p.reshape(*lead, n, n)


def _eigh_or_nan(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of Hermitian ``h``; a matrix with a non-finite entry (a broken
    chain, which ``eigh`` refuses for the whole batch) gets NaN eigenvalues and vectors
    while the others are decomposed as usual."""
    bad = ~torch.isfinite(h).all(dim=(-1, -2))
    if not bool(bad.any()):
        return torch.linalg.eigh(h)
    w, v = torch.linalg.eigh(torch.where(bad[..., None, None], torch.zeros_like(h), h))
    nan = float("nan")
    return w.masked_fill(bad[..., None], nan), v.masked_fill(bad[..., None, None], nan)


class _SU3Exp(torch.autograd.Function):
    """``exp(Q)`` of traceless anti-Hermitian 3x3 ``Q`` with a cheap first derivative.

    Forward: Cayley-Hamilton (:func:`kernels.groups.su_n.expm_su3`, exact). Backward (torch's
    complex convention, ``dL/dQ = L_exp(Q^+, G)``, the Frechet derivative at ``Q^+ = -Q``):
    with ``i Q = V diag(w) V^+`` (Hermitian, ``torch.linalg.eigh``) the eigenvalues of ``Q^+``
    are ``i w_j`` and

        L_exp(Q^+, G) = V [(V^+ G V) o D] V^+,
        D_jk = (e^{i w_j} - e^{i w_k}) / (i (w_j - w_k)) = e^{i (w_j + w_k)/2} sinc((w_j - w_k)/2),

    the divided differences of ``exp``, smooth also at degenerate eigenvalues (``sinc(0) =
    1``). No derivative of ``eigh`` itself is taken. For a differentiable backward
    (``create_graph``, force matching) it uses the vector-Jacobian product of
    ``torch.linalg.matrix_exp`` instead.
    """

    @staticmethod
    def forward(ctx, q):  # type: ignore[override]
        ctx.save_for_backward(q)
        return expm_su3(q)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (q,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            with torch.enable_grad():
                qq = q if q.requires_grad else q.detach().requires_grad_(True)
                (dq,) = torch.autograd.grad(torch.linalg.matrix_exp(qq), qq, g, create_graph=True)
            return dq
        w, v = _eigh_or_nan(1j * q)
        half = 0.5 * (w[..., :, None] + w[..., None, :])
        diff = w[..., :, None] - w[..., None, :]
        d = torch.polar(torch.sinc(diff / (2.0 * math.pi)), half)
        vh = dagger(v)
        return v @ ((vh @ g @ v) * d) @ vh


def su3_exp(q: torch.Tensor) -> torch.Tensor:
    """``exp(Q)`` for traceless anti-Hermitian 3x3 ``Q`` (:class:`_SU3Exp` when autograd
    needs it, else :func:`kernels.groups.su_n.expm_su3`)."""
    if torch.is_grad_enabled() and q.requires_grad:
        return _SU3Exp.apply(q)
    return expm_su3(q)


def link_log_det(q: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``log det J`` per link, shape ``q.shape[:-2]``.

    ``J = e^A (1 + phi(-A) L)`` with ``A = ad_Q`` antisymmetric, so ``det e^A = 1`` and
    ``log det J = log det(1 + phi(-A) L)`` (``> 0``, module docstring); ``phi`` by its series
    (cheaper than the 16x16 exponential of :func:`link_jacobian`, also in the backward).
    """
    ad, lmat = _ad_and_l(q.resolve_conj(), omega.resolve_conj())
    eye = torch.eye(NG, dtype=ad.dtype, device=ad.device)
    return torch.linalg.slogdet(eye + _phi_series(-ad) @ lmat).logabsdet


class SU3StoutLayer(Flow):
    """Stout-like update of direction ``mu`` on one sublattice (module docstring)."""

    first = 2
    #: the layer is defined on all of SU(3): the sampler may reunitarise V (theory.project)
    periodic = True

    def __init__(
        self,
        grid: ProcessGrid,
        mu: int,
        parity: int,
        hidden: Sequence[int] = (8,),
        kernel_size: int = 1,
        activation: str = "tanh",
        rho_max: float = 0.5,
        init_scale: float = 1.0,
        tol: float | None = None,
        max_iter: int = 100,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(grid)
        self.mu, self.parity, self.others = stout_sublattice(
            grid, mu, parity, ("rho_max", rho_max), "SU3StoutLayer", "SU(3)"
        )
        self.rho_max = float(rho_max)
        self.tol = tol
        self.max_iter = int(max_iter)
        n_stap = 2 * len(self.others)
        self.planes = [(a, b) for i, a in enumerate(self.others) for b in self.others[i + 1 :]]
        self.n_features = n_stap * (n_stap - 1) // 2 + len(self.planes)
        dt = dtype or torch.get_default_dtype()
        self.net = ConvNet(
            grid, self.n_features, len(self.others), hidden, kernel_size, activation, True, dt
        )
        if init_scale != 1.0:
            last = self.net.net[-1]
            with torch.no_grad():
                last.weight.mul_(init_scale)
                if last.bias is not None:
                    last.bias.mul_(init_scale)
        #: every convolution 1^D: the fused path evaluates the network on the active sites
        self.pointwise = int(kernel_size) == 1
        mask = parity_mask(grid, self.parity, axes=self.others, dtype=dt)
        self.register_buffer("active", mask, persistent=False)
        idx = torch.nonzero(mask.reshape(-1) > 0).reshape(-1)
        self.register_buffer("active_index", idx, persistent=False)
        self._build_neighbourhood(idx)

    def _build_neighbourhood(self, idx: torch.Tensor) -> None:
        """Flat indices into the field ``(B, Nd * prod(padded local), 3, 3)`` (halos along
        the axes split over ranks only) of every link the layer reads at each active site
        ``x``: ``U_d(x + offset)`` for the staples, the plaquette loops and the active link
        itself (``self._item`` maps ``(d, offset)`` to its position)."""
        local = tuple(self.grid.local_shape)
        nd, mu = len(local), self.mu
        # halos only along axes split over ranks; along the others neighbours wrap around
        self._split = tuple(i for i in range(nd) if self.grid.grid[i] > 1)
        split = torch.tensor([i in self._split for i in range(nd)])
        padded = [n + 2 if i in self._split else n for i, n in enumerate(local)]
        strides = [math.prod(padded[i + 1 :]) for i in range(nd)]
        coords, rest = [], idx
        for i in reversed(range(nd)):
            coords.append(rest % local[i])
            rest = rest // local[i]
        coords = torch.stack(coords[::-1], dim=-1)  # (n_active, nd), local
        #: the fused loops' backward slabs along axis 0 (su3_fused.backward_slabs)
        self._slabs = backward_slabs(coords[:, 0], local[0])
        coords = coords + split.to(idx.dtype)  # into the halo-padded block
        extent = torch.tensor(padded, dtype=idx.dtype)

        def e(axis: int) -> tuple[int, ...]:
            return tuple(int(i == axis) for i in range(nd))

        def add(*vs: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(sum(c) for c in zip(*vs, strict=True))

        def neg(v: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(-c for c in v)

        zero = (0,) * nd
        items: list[tuple[int, tuple[int, ...]]] = []
        for nu in self.others:
            items += [(nu, zero), (mu, e(nu)), (nu, e(mu))]
            items += [(nu, neg(e(nu))), (mu, neg(e(nu))), (nu, add(neg(e(nu)), e(mu)))]
        for a, b in self.planes:
            items += [(a, zero), (b, e(a)), (b, zero), (a, e(b))]
        items.append((mu, zero))
        self._item = {}
        for it in items:
            self._item.setdefault(it, len(self._item))
        site_volume = math.prod(padded)
        flat = []
        for d, off in self._item:
            c = coords + torch.tensor(off, dtype=coords.dtype)
            c = torch.where(split, c, c % extent)  # periodic wrap along unsplit axes
            flat.append(d * site_volume + (c * torch.tensor(strides, dtype=c.dtype)).sum(-1))
        self.register_buffer("neighbour_index", torch.cat(flat), persistent=False)
        # tables of the fused loops (su3_fused.stout_loops): staples (A, B, C, up), loops
        it = self._item
        rows = []
        for nu in self.others:
            rows.append((it[(nu, zero)], it[(mu, e(nu))], it[(nu, e(mu))], 1))
            rows.append(
                (it[(nu, neg(e(nu)))], it[(mu, neg(e(nu)))], it[(nu, add(neg(e(nu)), e(mu)))], 0)
            )
        loops = [
            (it[(a, zero)], it[(b, e(a))], it[(b, zero)], it[(a, e(b))]) for a, b in self.planes
        ]
        self._tables = (
            torch.tensor(rows, dtype=torch.int64),
            torch.tensor(loops, dtype=torch.int64).reshape(-1, 4),
            it[(mu, zero)],
        )

    # ------------------------------------------------------------ pieces
    # Everything runs on the active sites only (half the lattice, one direction): one halo
    # pad of the field and one gather of the links read (neighbourhood), then the staples,
    # the loops fed to the network (scattered to the lattice for the convolution) and the
    # update. Same arithmetic as with shifts of whole fields, a fraction of the copies.
    def neighbourhood(self, u: torch.Tensor) -> Links:
        """Every link the layer reads, at the active sites: ``n_items`` tensors ``(B,
        n_active, 3, 3)`` (``self._item`` gives the order) from one halo-padded copy of ``u``
        and one gather (unbound at once: one gradient stack in the backward pass, not one
        zero-filled copy per item)."""
        b = u.shape[0]
        padded = halo_pad(u, self.grid, 1, axes=self._split, first=2) if self._split else u
        nb = padded.reshape(b, -1, NC, NC).index_select(1, self.neighbour_index)
        return nb.reshape(b, len(self._item), -1, NC, NC).unbind(1)

    def staples(self, u: torch.Tensor, nb: Links | None = None) -> list[torch.Tensor]:
        """``[C^up_nu, C^dn_nu for nu != mu]`` on the active sites, each ``(B, n_active, 3,
        3)`` (paths from ``x`` to ``x + mu``, module docstring); ``nb`` from
        :meth:`neighbourhood` (computed if not given)."""
        nb = self.neighbourhood(u) if nb is None else nb
        nd, mu, it = self.grid.ndim, self.mu, self._item
        zero = (0,) * nd

        def e(axis: int, sign: int = 1, plus_mu: bool = False) -> tuple[int, ...]:
            return tuple(sign * int(i == axis) + int(plus_mu and i == mu) for i in range(nd))

        out = []
        for nu in self.others:
            up = mm(mm(nb[it[(nu, zero)]], nb[it[(mu, e(nu))]]), dagger(nb[it[(nu, e(mu))]]))
            dn = mm(
                mm(dagger(nb[it[(nu, e(nu, -1))]]), nb[it[(mu, e(nu, -1))]]),
                nb[it[(nu, e(nu, -1, True))]],
            )
            out += [up, dn]
        return out

    def features(
        self, u: torch.Tensor, staples: list[torch.Tensor], nb: Links | None = None
    ) -> torch.Tensor:
        """Gauge-invariant frozen-link loops on the active sites (zero elsewhere),
        ``(B, n_features, *local)``; ``staples`` from :meth:`staples`, ``nb`` from
        :meth:`neighbourhood` (computed if not given)."""
        nb = self.neighbourhood(u) if nb is None else nb
        nd, it = self.grid.ndim, self._item
        b, n_act = staples[0].shape[:2]
        # Re Tr(C_k C_l^+) for all pairs at once: Gram matrix of the real views
        sv = torch.view_as_real(torch.stack(staples, dim=2).resolve_conj())
        sv = sv.reshape(b, n_act, len(staples), 2 * NC * NC)
        gram = sv @ sv.transpose(-1, -2)
        k, m = torch.triu_indices(len(staples), len(staples), 1, device=sv.device)
        feats = [gram[:, :, k, m] / NC]
        zero = (0,) * nd
        for p, q in self.planes:
            ep, eq = tuple(int(i == p) for i in range(nd)), tuple(int(i == q) for i in range(nd))
            left = mm(nb[it[(p, zero)]], nb[it[(q, ep)]])  # U_p(x) U_q(x + p)
            right = mm(nb[it[(q, zero)]], nb[it[(p, eq)]])  # U_q(x) U_p(x + q)
            feats.append((_retr(left, right) / NC)[..., None])
        f = torch.cat(feats, dim=-1).transpose(1, 2)  # (B, n_features, n_active)
        return self._on_lattice(f)

    def _on_lattice(self, f: torch.Tensor) -> torch.Tensor:
        """Active-site values ``(B, C, n_active)`` -> ``(B, C, *local)``, zero elsewhere."""
        full = f.new_zeros(f.shape[0], f.shape[1], self.active.numel())
        full = full.index_copy(2, self.active_index, f)
        return full.reshape(f.shape[0], f.shape[1], *self.active.shape)

    def _rho_of(self, f: torch.Tensor) -> torch.Tensor:
        """``rho_nu`` on the active sites, ``(B, Nd - 1, n_active)``, from the features on the
        lattice (:meth:`features`)."""
        pdt = self.active.dtype
        r = self.net.at_sites(f.to(pdt), self.active_index).to(f.dtype)
        return self.rho_max * torch.tanh(r) / (2.0 * len(self.others))

    def _rho_pointwise(self, f: torch.Tensor) -> torch.Tensor:
        """:meth:`_rho_of` for a network of ``1^D`` convolutions, on the active-site features
        ``(B, n_features, n_active)`` directly: each convolution is ``y = W x + b`` per site
        (same parameters; the inactive sites, which the lattice version also computes, are
        skipped)."""
        x = f.to(self.active.dtype)
        for module in self.net.net:
            if isinstance(module, LatticeConv):
                w = module.weight.reshape(module.weight.shape[:2])
                x = torch.einsum("oi,bin->bon", w, x)
                if module.bias is not None:
                    x = x + module.bias[:, None]
            else:
                x = module(x)
        return self.rho_max * torch.tanh(x.to(f.dtype)) / (2.0 * len(self.others))

    def _rho_active(self, u: torch.Tensor, staples: list[torch.Tensor], nb: Links) -> torch.Tensor:
        """``rho_nu`` on the active sites, ``(B, Nd - 1, n_active)``."""
        return self._rho_of(self.features(u, staples, nb))

    def coefficients(self, u: torch.Tensor, staples: list[torch.Tensor]) -> torch.Tensor:
        """``rho_nu(x)``, shape ``(B, Nd - 1, *local)`` (meaningful on active sites)."""
        f = self.features(u, staples)
        pdt = self.active.dtype
        r = self.net(f.to(pdt)).to(f.dtype)
        return self.rho_max * torch.tanh(r) / (2.0 * len(self.others))

    def _core_inputs(
        self, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(planes, rho, U_mu(x), base)`` on the active sites: the plane sums of the staples
        ``P_nu = C^up_nu + C^dn_nu`` ``(B, Nd-1, n_active, 3, 3)``, real ``(B, Nd-1,
        n_active)``, ``(B, n_active, 3, 3)``, and the field
        to write the new links into (``u``, or on the fused path without split axes ``u``
        passed through :func:`~kernels.flows.su3_fused.stout_loops`)."""
        if uses_fused(u):  # numba staples and loops (su3_fused.stout_loops)
            st, pl, ix = self._tables
            b = u.shape[0]
            padded = halo_pad(u, self.grid, 1, axes=self._split, first=2) if self._split else u
            src = padded.reshape(b, -1, NC, NC)
            planes, f, x, passed = stout_loops(src, self.neighbour_index, st, pl, ix, self._slabs)
            base = u if self._split else passed.reshape(u.shape)
            if self.pointwise:  # 1^D network: evaluate it on the active sites only
                return planes, self._rho_pointwise(f), x, base
            return planes, self._rho_of(self._on_lattice(f)), x, base
        nb = self.neighbourhood(u)
        staples = self.staples(u, nb)
        rho = self._rho_active(u, staples, nb)
        x = nb[self._item[(self.mu, (0,) * self.grid.ndim)]]
        planes = torch.stack(
            [staples[2 * i] + staples[2 * i + 1] for i in range(len(self.others))], 1
        )
        return planes, rho, x, u

    def _context(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U_mu(x), C(x))`` on the active sites, ``(B, n_active, 3, 3)`` each."""
        planes, rho, x, _ = self._core_inputs(u)
        rho = rho.to(u.dtype)
        return x, sum(rho[:, i, :, None, None] * planes[:, i] for i in range(len(self.others)))

    def _scatter(self, u: torch.Tensor, new_active: torch.Tensor) -> torch.Tensor:
        """``u`` with the active links ``U_mu(x)`` replaced (one ``index_copy``, or its numba
        version :func:`kernels.flows.su3_fused.replace_links`)."""
        b = u.shape[0]
        where = self.active_index + self.mu * self.active.numel()
        flat = replace_links(u.reshape(b, -1, NC, NC), where, new_active)
        return flat.reshape(u.shape)

    @staticmethod
    def _step(c: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        omega = mm(c, dagger(x))
        return project_ta(omega), omega

    # ------------------------------------------------------------ Flow
    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log|det du/dv|)`` of this layer on the local block (halo exchanges inside);
        the log-det as its per-active-link terms ``(B, n_active)`` (summed exactly by
        :meth:`Flow.forward`, so the total is grid-independent)."""
        planes, rho, x, base = self._core_inputs(v)  # subclasses: their own coefficients
        new, log_det = stout_core(planes, rho, x)  # fused or eager (su3_fused)
        return self._scatter(base, new), log_det  # per active link, (B, n_active)

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log|det dv/du|)``: the exact inverse of :meth:`forward_local`."""
        if torch.is_grad_enabled() and u.requires_grad:
            raise FlowError(
                "SU3StoutLayer.inverse is not differentiable; call it under torch.no_grad() "
                "or on a detached field"
            )
        with torch.no_grad():
            y, c = self._context(u)
            x, _ = self.solve_active(y, c)
            q, omega = self._step(c, x)
            return self._scatter(u, x), -link_log_det(q, omega)

    def solve_active(self, y: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(x, iterations)``: the active links ``x`` with ``exp(TA(C x^+)) x = y`` (``C`` is
        built from frozen links only, so it is the same before and after the update), by the
        fixed-point iteration ``x <- exp(-TA(C x^+)) y`` from ``x = y`` to ``self.tol`` (default
        ``1e3 eps``) or ``self.max_iter``; :class:`FlowError` on every rank if not converged.
        No autograd."""
        tol = self.tol if self.tol is not None else 1e3 * torch.finfo(y.real.dtype).eps
        x = y
        err, it = float("inf"), 0
        while it < self.max_iter and not err <= tol:
            q, _ = self._step(c, x)
            x_new = mm(su3_exp(-q), y)
            err = float((x_new - x).abs().max()) if x.numel() else 0.0
            x, it = x_new, it + 1
        check_converged(err <= tol, err, self.grid, type(self).__name__, tol, self.max_iter)
        return x, it


# ------------------------------------------------------------------ builder
def su3_stout_flow(
    grid: ProcessGrid,
    n_layers: int = 8,
    hidden: Sequence[int] = (8,),
    kernel_size: int = 1,
    activation: str = "tanh",
    rho_max: float = 0.5,
    init_scale: float = 1.0,
    tol: float | None = None,
    max_iter: int = 100,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
) -> Composition:
    """``n_layers`` :class:`SU3StoutLayer` cycling ``(mu, parity)`` = (0,0), (1,0), ...,
    (Nd-1,0), (0,1), ...; ``2 Nd`` layers update every link once. ``dtype`` is that of the
    coefficient network (float32 or float64); the links keep their own complex dtype."""
    kwargs = dict(locals())
    kwargs.pop("grid")
    dt = dtype_from_name(dtype)
    nd = grid.ndim
    layers: list[Flow] = [
        SU3StoutLayer(
            grid,
            i % nd,
            (i // nd) % 2,
            hidden,
            kernel_size,
            activation,
            rho_max,
            init_scale,
            tol,
            max_iter,
            dt,
        )
        for i in range(int(n_layers))
    ]
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.su3:su3_stout_flow", kwargs)
