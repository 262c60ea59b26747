"""SU(3) lattice gauge theory: Wilson and rectangle-improved (Symanzik, Iwasaki) actions.

Layout and conventions (docs/conventions-su3.md)
------------------------------------------------
Links ``U_mu(x)`` are stored as complex tensors ``(B, Nd, *local, 3, 3)`` (``first = 2``),
``mu = x, y, z, t = 0 .. 3`` in the lattice-axis order of the process grid; the last axis is
time. Every neighbour is reached with :func:`parallel.shift` (``U_nu(x + mu)`` is
``shift(U_nu, mu, +1)``), so all kernels run unchanged on any process grid.

Plaquette and rectangle (``L_mu(x) = U_mu(x) U_mu(x + mu)`` is the double link)::

    U_{mu nu}(x) = U_mu(x) U_nu(x + mu) U_mu(x + nu)^+ U_nu(x)^+
    R_{mu nu}(x) = L_mu(x) U_nu(x + 2 mu) L_mu(x + nu)^+ U_nu(x)^+      (2 along mu, 1 along nu)

Action (``sum_P`` over the ``6 V`` unoriented plaquettes, ``sum_R`` over the ``12 V``
unoriented 1x2 rectangles, i.e. ``R_{mu nu}`` for all ordered ``mu != nu``)::

    S = beta [ c0 sum_P (1 - Re Tr U_P / 3) + c1 sum_R (1 - Re Tr U_R / 3) ],  c0 = 1 - 8 c1

``c1 = 0`` (Wilson), ``-1/12`` (tree-level Symanzik, Luscher-Weisz), ``-0.331`` (Iwasaki).

Force (left Lie derivative, kernels/theory.py): with generators ``T_a``,
``Tr T_a T_b = -delta_ab/2``, write the part of ``S`` that holds ``U_mu(x)`` as
``-(beta/3) Re Tr(U_mu(x) A_mu(x))`` where the *staple sum* ``A_mu(x)`` adds, with weight
``c0`` / ``c1``, the open paths from ``x + mu`` back to ``x`` that close every plaquette /
rectangle containing the link. Then ``d/dw_a S(exp(w T) U) = -(beta/3) Re Tr(T_a U A)`` and,
by ``sum_a T_a Re Tr(T_a M) = -TA(M)/2``::

    F_mu(x) = sum_a T_a d/dw_a S = (beta / 6) TA(U_mu(x) A_mu(x))

traceless anti-Hermitian, so that ``dP/dt = -F``, ``dU/dt = P U`` conserve
``H = K + S`` with ``K = -sum Re Tr P^2 = (1/2) sum_a p_a^2``.

Observables (per chain, whole lattice, the same on every rank): plaquette (all 6 planes,
spatial = planes among the first Nd-1 axes, temporal = planes with t), rectangle (all 12
orientations), each averaged ``Re Tr / 3``; the Polyakov loop
``P = (1/V_s) sum_xs Tr prod_t U_t(xs, t) / 3`` (real part, imaginary part, modulus); the
(gauge-variant) link trace ``<Re Tr U> / 3``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch
from mpi4py import MPI

from parallel import ProcessGrid, exact_segment_sum, halo_begin, halo_end, lattice_sum, shift
from parallel.rng import PURPOSE_MOMENTUM, PURPOSE_START
from parallel.settings import flag

from ..backends import get_backend
from ..backends.eager import _site_sum, wilson_loops
from ..groups.su_n import algebra_norm2, dagger, haar_su_n, mm, project_ta
from ..theory import Theory

#: rectangle coefficient c1 of each named action
ACTIONS: dict[str, float] = {"wilson": 0.0, "symanzik": -1.0 / 12.0, "iwasaki": -0.331}

NC = 3


# --------------------------------------------------------------------------- kernels
# The hot kernels live behind the backend seam (kernels/backends); the eager reference
# implementations are re-exported here under their historical names.
def _sh(x: torch.Tensor, grid: ProcessGrid, mu: int, k: int = 1) -> torch.Tensor:
    """Shift of a single-direction field ``(B, *local, 3, 3)`` (lattice axes from dim 1)."""
    return shift(x, grid, mu, k, first=1)


def staple_sum(u: torch.Tensor, grid: ProcessGrid, c0: float, c1: float) -> torch.Tensor:
    """``A_mu(x)`` (:func:`kernels.backends.eager.staple_sum`) from the active backend."""
    return get_backend().su3_staple_sum(u, grid, c0, c1)


def gauge_force(
    u: torch.Tensor, grid: ProcessGrid, beta: float, c0: float = 1.0, c1: float = 0.0
) -> torch.Tensor:
    """``F_mu(x) = (beta/6) TA(U_mu(x) A_mu(x))`` (module docstring) from the active backend."""
    return get_backend().su3_force(u, grid, beta, c0, c1)


# --------------------------------------------------------------------------- overlap
#: set_overlap's choice; None: $TRIVHMC_OVERLAP (read when a theory is built), else off
_OVERLAP: bool | None = None


def set_overlap(enabled: bool) -> None:
    """Default of :class:`SU3Gauge`'s ``overlap`` for theories built afterwards (the deck key
    ``parallel.overlap``; else the environment variable ``TRIVHMC_OVERLAP``). As a default it
    applies to the Wilson action only; improved actions keep the backend's force."""
    global _OVERLAP
    _OVERLAP = bool(enabled)


# Wilson staples with the halo exchange hidden behind the interior: the links are padded by
# one site on every axis (axes held by one rank by local copies right away, split axes by
# faces posted at once, parallel.halo_begin); the staples of the interior sites, whose
# neighbours are all on this rank, are computed while the faces travel; the boundary slabs
# (first and last slice along each split axis) after halo_end.
Box = tuple[tuple[int, int], ...]


def _at(p: torch.Tensor, a: int, box: Box, step: dict[int, int]) -> torch.Tensor:
    """``U_a(x + step)`` for the sites ``x`` of ``box`` (local coordinates) from the links
    ``p`` padded by one site on every axis."""
    idx = [slice(None), a]
    for m, (lo, hi) in enumerate(box):
        e = 1 + step.get(m, 0)
        idx.append(slice(lo + e, hi + e))
    return p[tuple(idx)]


def _staples_box(
    p: torch.Tensor, out: torch.Tensor, box: Box, progress: Callable[[], object] | None = None
) -> None:
    """Write the Wilson staple sum ``A_mu(x)`` (without ``c0``) of the sites in ``box`` into
    ``out``, the same products and association as :func:`kernels.backends.eager.staple_sum`::

        A_mu(x) = sum_{nu != mu} U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^+
                               + [U_mu(x-nu) U_nu(x-nu+mu)]^+ U_nu(x-nu)
    """
    nd = p.shape[1]
    dst = [slice(None)] + [slice(lo, hi) for lo, hi in box]
    for mu in range(nd):
        acc = None
        for nu in range(nd):
            if nu == mu:
                continue
            up = mm(
                _at(p, nu, box, {mu: 1}), dagger(mm(_at(p, nu, box, {}), _at(p, mu, box, {nu: 1})))
            )
            down = mm(
                dagger(mm(_at(p, mu, box, {nu: -1}), _at(p, nu, box, {mu: 1, nu: -1}))),
                _at(p, nu, box, {nu: -1}),
            )
            term = up + down
            acc = term if acc is None else acc + term
            if progress is not None:
                progress()  # let the faces in flight advance (MPI without a progress thread)
        out[(dst[0], mu, *dst[1:])] = acc


def _boxes(grid: ProcessGrid) -> tuple[Box | None, list[Box]]:
    """The interior box (``None`` when empty) and the boundary slabs: along each split axis
    its first and last slice, the earlier split axes restricted to their interior, so the
    boxes are disjoint and cover the local domain."""
    local = grid.local_shape
    split = [m for m in range(grid.ndim) if grid.grid[m] > 1]
    inner = [(1, n - 1) if m in split else (0, n) for m, n in enumerate(local)]
    interior = tuple(inner) if all(hi > lo for lo, hi in inner) else None
    slabs = []
    for j, s in enumerate(split):
        n = local[s]
        for part in sorted({(0, 1), (n - 1, n)}):
            box = [(0, m) for m in local]
            for e in split[:j]:
                box[e] = inner[e]
            box[s] = part
            if all(hi > lo for lo, hi in box):
                slabs.append(tuple(box))
    return interior, slabs


def wilson_staples_overlap(u: torch.Tensor, grid: ProcessGrid, c0: float = 1.0) -> torch.Tensor:
    """``c0 A_mu(x)`` (Wilson plaquette staples, :func:`_staples_box`) with the halo exchange
    overlapped: interior staples computed between :func:`parallel.halo_begin` and
    :func:`parallel.halo_end`, boundary slabs after. No autograd graph (the links are read
    detached); equals :func:`kernels.backends.eager.staple_sum` with ``c1 = 0`` to rounding."""
    handle = halo_begin(u.detach(), grid, 1, first=2)
    out = torch.empty_like(u)
    interior, slabs = _boxes(grid)
    if interior is not None:
        _staples_box(handle.padded, out, interior, handle.progress)
    padded = halo_end(handle)
    for box in slabs:
        _staples_box(padded, out, box)
    return c0 * out if c0 != 1.0 else out


def gauge_force_overlap(u: torch.Tensor, grid: ProcessGrid, beta: float, c0: float = 1.0):
    """``F_mu(x) = (beta/6) TA(U_mu(x) A_mu(x))`` for the Wilson action with the staples of
    :func:`wilson_staples_overlap` (communication hidden behind the interior)."""
    return (beta / (2.0 * NC)) * project_ta(mm(u, wilson_staples_overlap(u, grid, c0)))


def gauge_transform(u: torch.Tensor, g: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``U_mu(x) -> g(x) U_mu(x) g(x + mu)^+`` for ``g`` of shape ``(B, *local, N, N)``."""
    nd = u.shape[1]
    return torch.stack([g @ u[:, mu] @ dagger(_sh(g, grid, mu, 1)) for mu in range(nd)], dim=1)


# --------------------------------------------------------------------------- Polyakov loop
_LINE_COMMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _line_comm(grid: ProcessGrid, axis: int) -> MPI.Comm:
    """The 1D sub-communicator of the ranks sharing all Cartesian coords but ``axis``
    (created collectively on first use, then cached per grid)."""
    comms = _LINE_COMMS.setdefault(grid, {})
    if axis not in comms:
        comms[axis] = grid.cart.Sub([a == axis for a in range(grid.ndim)])
    return comms[axis]


def ordered_product(m: torch.Tensor, grid: ProcessGrid, axis: int, first: int) -> torch.Tensor:
    """``prod_{n=0}^{L-1} m(.., n, ..)`` along lattice ``axis`` in increasing order, with the
    axis removed; the global product, the same on every rank of a line along ``axis``.

    The slices of the other ranks on the line along ``axis`` are gathered (``MPI_Allgather``
    in the line communicator, ordered by the coordinate along ``axis``) and all ``L`` factors
    are multiplied in one sequence, so the rounding is that of the single-rank product on
    every process grid. Not autograd-aware.
    """
    dim = first + axis
    if grid.grid[axis] > 1:
        comm = _line_comm(grid, axis)
        local = np.ascontiguousarray(m.detach().cpu().numpy())
        blocks = np.empty((comm.Get_size(),) + local.shape, dtype=local.dtype)
        comm.Allgather(local, blocks)
        order = sorted(range(comm.Get_size()), key=lambda r: comm.Get_coords(r)[0])
        m = torch.from_numpy(np.concatenate([blocks[r] for r in order], axis=dim)).to(m.device)
    prod = m.select(dim, 0)
    for n in range(1, m.shape[dim]):
        prod = prod @ m.select(dim, n)
    return prod


def polyakov_loop(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """Complex ``(1/V_s) sum_xs Tr prod_t U_t(xs, t) / 3`` per chain, shape ``(B,)``.

    The time axis is the last lattice axis; only ranks at time coordinate 0 add their
    spatial sites, so each spatial site counts once.
    """
    nd = u.shape[1]
    t = nd - 1
    line = ordered_product(u[:, t], grid, t, first=1)  # (B, *local_spatial, 3, 3)
    tr = torch.diagonal(line, dim1=-2, dim2=-1).sum(-1) / NC
    if grid.coords[t] != 0:
        tr = torch.zeros_like(tr)
    vs = grid.volume // grid.shape[t]
    comm = grid.cart if grid.size > 1 else None
    flat = tr.reshape(tr.shape[0], -1)
    re, im = (exact_segment_sum(x, comm).to(tr.real.dtype) for x in (flat.real, flat.imag))
    return torch.complex(re, im) / vs


# --------------------------------------------------------------------------- theory
class SU3Gauge(Theory):
    """4D (any ``Nd >= 2``) SU(3) gauge theory with Wilson or rectangle-improved action."""

    name = "su3"
    first = 2
    is_gauge = True

    def __init__(
        self,
        grid: ProcessGrid,
        beta: float,
        action: str = "wilson",
        c1: float | None = None,
        dtype: torch.dtype = torch.complex128,
        device: torch.device | str = "cpu",
        overlap: bool | None = None,
    ) -> None:
        super().__init__(grid, dtype=dtype, device=device)
        if grid.ndim < 2:
            raise ValueError(f"SU(3) gauge theory needs >= 2 dimensions, lattice {grid.shape}")
        if action not in ACTIONS:
            raise ValueError(f"unknown SU(3) action {action!r}; known: {sorted(ACTIONS)}")
        if not dtype.is_complex:
            raise ValueError(f"SU(3) links need a complex dtype, got {dtype}")
        self.beta = float(beta)
        self.action_name = action
        self.c1 = float(ACTIONS[action] if c1 is None else c1)
        self.c0 = 1.0 - 8.0 * self.c1
        if overlap is None:  # the process default (set_overlap), for the Wilson action only
            overlap = self.c1 == 0.0 and (
                flag("TRIVHMC_OVERLAP", False) if _OVERLAP is None else _OVERLAP
            )
        if overlap and self.c1 != 0.0:
            raise ValueError(
                f"overlap (communication hidden behind the interior staples) supports the "
                f"Wilson action only, not {action!r} with c1 = {self.c1}"
            )
        #: force through :func:`gauge_force_overlap` (Wilson; same result to rounding) where
        #: the active backend is ``eager``; the fused backends keep their own exchange
        #: (:meth:`_overlapped`)
        self.overlap = bool(overlap)
        self.nd = grid.ndim
        self.planes = [(mu, nu) for mu in range(self.nd) for nu in range(mu + 1, self.nd)]
        self.real_dtype = torch.empty((), dtype=dtype).real.dtype

    # ------------------------------------------------------------ layout
    def field_shape(self, batch: int) -> tuple[int, ...]:
        """``(B, Nd, *local, 3, 3)``: one complex 3x3 link ``U_mu(x)`` per direction and site."""
        return (batch, self.nd, *self.grid.local_shape, NC, NC)

    @property
    def params(self) -> dict[str, float]:
        """``beta``, ``c0 = 1 - 8 c1`` and the rectangle coefficient ``c1``."""
        return {"beta": self.beta, "c0": self.c0, "c1": self.c1}

    # ------------------------------------------------------------ dynamics
    def action(self, field: torch.Tensor) -> torch.Tensor:
        """``S = (beta/3) sum_x [c0 sum_P (3 - Re Tr U_P) + c1 sum_R (3 - Re Tr U_R)]`` (B,)."""
        # per-site density from the backend, then one exact lattice sum (grid-independent)
        return self._action_of(get_backend().su3_action_density(field, self.grid, self.c0, self.c1))

    def _action_of(self, density: torch.Tensor) -> torch.Tensor:
        """``(beta/3)`` times the exact lattice sum of the weighted loop density ``(B, *local)``."""
        return (self.beta / NC) * lattice_sum(density, self.grid, 1)

    def force(self, field: torch.Tensor) -> torch.Tensor:
        """Gauge force ``F_mu(x) = (beta/6) TA(U_mu(x) A_mu(x))`` (left Lie derivative), see
        :func:`gauge_force`; with ``overlap`` (and no autograd graph) through
        :func:`gauge_force_overlap`, the halo exchange hidden behind the interior staples."""
        if self._overlapped() and not (torch.is_grad_enabled() and field.requires_grad):
            return gauge_force_overlap(field, self.grid, self.beta, self.c0)
        return gauge_force(field, self.grid, self.beta, self.c0, self.c1)

    def _overlapped(self) -> bool:
        """``overlap`` on the eager backend: the force through :func:`gauge_force_overlap`.
        Under a fused backend ``overlap`` changes nothing: its own force is several times
        faster than the eager overlapped one, and ``vnode``'s resident MD layout hides the
        face exchange behind the interior planes itself (:class:`kernels.backends.vnode.
        PackedMD`, ``TRIVHMC_VNODE_OVERLAP``); before, ``overlap`` switched ``vnode`` off."""
        return self.overlap and get_backend().name == "eager"

    def kinetic(self, momentum: torch.Tensor) -> torch.Tensor:
        """``K = -sum_{x,mu} Re Tr P_mu(x)^2 = (1/2) sum p_a^2`` per chain (global, exact sum)."""
        return _site_sum(algebra_norm2(momentum), self.grid)

    def evolve_field(self, field: torch.Tensor, momentum: torch.Tensor, eps: float) -> torch.Tensor:
        """MD drift ``U -> exp(eps P) U`` link by link, from the active backend."""
        return get_backend().su3_expm_mul(eps * momentum, field)

    def resident_md(self, field: torch.Tensor, forces: list):
        """The backend's own layout for a trajectory (``vnode``: links and momenta stay in the
        virtual-node layout, :class:`kernels.backends.vnode.PackedMD`) when every level force
        is this theory's force (``overlap`` or not: the layout overlaps its own exchange,
        :meth:`_overlapped`); else None."""
        hook = getattr(get_backend(), "su3_resident_md", None)
        mine = [self.force, *(t.force for t in self.action_terms())]
        if hook is None or any(f not in mine for f in forces):
            return None
        md = hook(field, self.grid, self.beta, self.c0, self.c1)
        if md is not None and self.c1 == 0.0 and type(self).action is SU3Gauge.action:
            # the Hamiltonian's action from the resident links too (bit for bit self.action)
            md.action_of_density = lambda d: self._action_of(self.c0 * d)
        return md

    def random_momentum(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Gaussian su(3) momenta ``P = sum_a p_a T_a``, ``p_a`` standard normal (``P ~ exp(-K)``),
        site-keyed with purpose ``PURPOSE_MOMENTUM`` (:meth:`parallel.rng.SiteRNG.su_algebra`)."""
        return rng.su_algebra(
            self.grid,
            PURPOSE_MOMENTUM,
            counter,
            batch,
            NC,
            lead=(self.nd,),
            chain_offset=chain_offset,
            dtype=self.dtype,
            device=self.device,
        )

    # ------------------------------------------------------------ starts
    def cold_start(self, batch: int) -> torch.Tensor:
        """Unit links, ``U_mu(x) = 1``."""
        eye = torch.eye(NC, dtype=self.dtype, device=self.device)
        return eye.expand(self.field_shape(batch)).clone()

    def hot_start(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Independent Haar-random links from site-keyed normals (purpose ``PURPOSE_START``)."""
        normals = rng.normal(
            self.grid,
            PURPOSE_START,
            counter,
            batch,
            lead=(self.nd,),
            trail=(NC, NC, 2),
            chain_offset=chain_offset,
            dtype=self.real_dtype,
            device=self.device,
        )
        return haar_su_n(normals, dtype=self.dtype)

    def project(self, field: torch.Tensor) -> torch.Tensor:
        """Reunitarise every link (:func:`kernels.groups.su_n.reunitarize`, from the backend)."""
        return get_backend().su3_reunitarize(field)

    # ------------------------------------------------------------ measurements
    def observables(self, field: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-chain plaquette (all, spatial, temporal planes), rectangle, Polyakov loop (re, im,
        abs) and link trace; loops averaged as ``Re Tr / 3`` (module docstring)."""
        with torch.no_grad():
            plaq, rect = wilson_loops(field, self.grid, rectangles=True)
            t = self.nd - 1
            vol = self.grid.volume

            def mean(loops: list[torch.Tensor]) -> torch.Tensor:
                return lattice_sum(sum(loops), self.grid, 1) / (NC * vol * len(loops))

            spatial = [p for (mu, nu), p in plaq.items() if nu != t]
            temporal = [p for (mu, nu), p in plaq.items() if nu == t]
            poly = polyakov_loop(field, self.grid)
            link = _site_sum(torch.diagonal(field, dim1=-2, dim2=-1).real, self.grid)
            obs = {
                "plaquette": mean(list(plaq.values())),
                "plaquette_temporal": mean(temporal),
                "rectangle": mean(list(rect.values())),
                "polyakov_re": poly.real,
                "polyakov_im": poly.imag,
                "polyakov_abs": poly.abs(),
                "link_trace": link / (NC * self.nd * vol),
            }
            if spatial:
                obs["plaquette_spatial"] = mean(spatial)
            return obs
