"""The ``numba`` kernel backend: site-fused CPU kernels (optional dependency ``numba``).

Formulation
-----------
The links are halo-padded once (width 1: every neighbour of the Wilson stencil, corners
included, is then local; :func:`periodic_pad` into a reused workspace on a grid with no
split axis, :func:`parallel.halo_pad` otherwise) and stored as real planes
``P[b, mu, k, c]`` with ``k`` the flat padded site and ``c = 2 (3 i + j) + {0: re, 1: im}``.
Neighbours are constant offsets ``k +- stride[nu]``. Each kernel walks the interior rows of
the last (fastest) lattice axis and, per row, runs straight-line generated code over the
sites of the row; the outer loop over (chain, row) is ``numba.prange`` (threads =
``torch.get_num_threads()``; on one thread the serial compilation,
:mod:`kernels.backends.numba_threads`). Floating point: ``fastmath={'contract'}`` only (fused
multiply-adds; no reassociation, NaN/Inf kept).

Vectorisation (numba 0.68 / LLVM; docs/performance.md, "Kernels toward the roofline"): the
row loop is scalar FMA code. LLVM's loop vectoriser refuses it ("too many memory checks":
numba gives no ``noalias`` on array arguments, and with a component stride that is not a
compile-time constant each of the 18 components is its own pointer to check). It does
vectorise (ymm/zmm FMAs, checked in the assembly) a lane loop over a literal width >= 16
with flat arrays and literal component strides; a prototype on rows padded to 16 lanes was
correct (1e-15) but no faster end to end (half the lanes are halo/padding at 8^4, plus the
layout copies), so it is not used here; the ``vnode`` backend (kernels/backends/vnode.py)
vectorises across sites with a layout in which every lane is a real site.

Kernels (same mathematics as :mod:`kernels.backends.eager`):

* SU(3) Wilson staple sum ``A_mu(x) = sum_{nu != mu} [U_nu(x+mu) (U_nu(x) U_mu(x+nu))^+
  + (U_mu(x-nu) U_nu(x-nu+mu))^+ U_nu(x-nu)]`` (accumulated per row in a small buffer),
  then ``coef TA(U_mu A_mu)`` for the force (``coef = beta c0 / 6``) and the flow generator
  (``coef = -1``);
* SU(3) plaquette action density ``sum_{mu<nu} (3 - Re Tr U_{mu nu}(x))`` (per site for
  the theory's exact-sum action, or summed per chain for ``su3_action_local``);
* U(1) action density ``sum_{mu<nu} (1 - cos theta_{mu nu})`` and force
  (:mod:`kernels.backends.u1_kernels`: one pass in chunks of rows, contiguous loops with the
  vectorisable ``sin``/``cos`` of :mod:`kernels.backends.vtrig`; eager when an angle exceeds
  ``vtrig.LIMIT``).

Autograd: the SU(3) action is a ``torch.autograd.Function`` whose backward is the analytic
derivative ``dS_loc/dU_mu(x) = -c0 g A_mu(x)^+`` (torch's convention for a real function
of complex input, ``d/dRe + i d/dIm``; per-chain ``g``, identical on every rank, and the full
staple, so the halo terms of neighbouring ranks are included); the U(1) action density is
a Function whose backward is the force formula with per-site weights. When a graph through
the backward is requested (``create_graph``, e.g. force matching) the backward is computed
with the eager torch kernels, so double backward works. Staples, force and flow generator
called with a graph, any non-CPU tensor, and ``c1 != 0`` (rectangles) go to ``eager``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
import torch
from mpi4py import MPI

from parallel import ProcessGrid, halo_pad, reduce, shift

from . import eager, numba_threads, u1_kernels  # noqa: F401 (numba_threads: layer)
from .eager import EagerBackend
from .numba_threads import match_torch_threads

# the work-queue threading layer and serial twins for one thread: numba_threads

# --------------------------------------------------------------------------- code generation
NC = 3


def _c(i: int, j: int, r: int) -> int:
    return 2 * (NC * i + j) + r


class _Views:
    """Row views ``P[b, d, p0 + off : p0 + off + rowlen, :]`` used by a generated loop body:
    loads index them with ``[x, c]`` (``x`` from ``range``: provably non-negative, so the
    compiler drops negative-index handling and can vectorise across the row)."""

    def __init__(self, arr: str = "P") -> None:
        self.arr, self.defs = arr, {}

    def load(self, name: str, d: str, off: str) -> list[str]:
        key = (d, off)
        if key not in self.defs:
            self.defs[key] = f"v{len(self.defs)}"
        v = self.defs[key]
        return [
            f"{name}{i}{j}{'ri'[r]} = {v}[x, {_c(i, j, r)}]"
            for i in range(NC)
            for j in range(NC)
            for r in range(2)
        ]

    def setup(self) -> list[str]:
        return [
            f"{v} = {self.arr}[b, {d}, p0 + {off} : p0 + {off} + rowlen, :]"
            for (d, off), v in self.defs.items()
        ]


def _mm(out: str, a: str, b: str, da: bool = False, db: bool = False) -> list[str]:
    """``out = op(a) op(b)`` on scalar locals ``{name}{i}{j}{r,i}``; ``op`` daggers if set."""
    lines = []
    for i in range(NC):
        for j in range(NC):
            re, im = [], []
            for k in range(NC):
                ar, ai = (f"{a}{k}{i}r", f"{a}{k}{i}i") if da else (f"{a}{i}{k}r", f"{a}{i}{k}i")
                br, bi = (f"{b}{j}{k}r", f"{b}{j}{k}i") if db else (f"{b}{k}{j}r", f"{b}{k}{j}i")
                sa, sb = (-1 if da else 1), (-1 if db else 1)
                re.append(f"{ar} * {br} {'-' if sa * sb > 0 else '+'} {ai} * {bi}")
                # Im = sb ar bi + sa ai br
                im.append(
                    f"{'' if sb > 0 else '-'}{ar} * {bi} {'+' if sa > 0 else '-'} {ai} * {br}"
                )
            lines.append(f"{out}{i}{j}r = " + " + ".join(f"({t})" for t in re))
            lines.append(f"{out}{i}{j}i = " + " + ".join(f"({t})" for t in im))
    return lines


def _indent(lines: list[str], n: int) -> str:
    return "".join(" " * n + ln + "\n" for ln in lines)


def _staple_body() -> tuple[list[str], list[str]]:
    """(setup, body): the body adds the plane (mu, nu) staples at row site ``x`` to
    ``acc[:, x]``; up ``U_nu(x+mu) (U_nu(x) U_mu(x+nu))^+``, down
    ``(U_mu(x-nu) U_nu(x-nu+mu))^+ U_nu(x-nu)``."""
    v = _Views()
    lines = v.load("a", "nu", "0") + v.load("b", "mu", "snu") + _mm("t", "a", "b")
    lines += v.load("a", "nu", "smu") + _mm("s", "a", "t", db=True)  # up
    lines += v.load("a", "mu", "-snu") + v.load("b", "nu", "smu - snu") + _mm("t", "a", "b")
    lines += v.load("b", "nu", "-snu") + _mm("d", "t", "b", da=True)  # down
    for i in range(NC):
        for j in range(NC):
            for r in "ri":
                c = _c(i, j, "ri".index(r))
                lines.append(f"acc[{c}, x] += s{i}{j}{r} + d{i}{j}{r}")
    return v.setup(), lines


def ta_lines(dst: Callable[[int], str]) -> list[str]:
    """Statements ``dst(c) = coef TA(m)_c`` for the 18 real components ``c`` of the 3x3
    scalars ``m{i}{j}{r|i}`` (``TA(M) = (M - M^+)/2 - Tr(M - M^+)/6``); ``dst(c)`` is the
    target expression of component ``c`` in the caller's layout."""
    lines = ["tr = (m00i + m11i + m22i) / 3.0"]
    for i in range(NC):
        for j in range(NC):
            cr, ci = dst(_c(i, j, 0)), dst(_c(i, j, 1))
            if i == j:
                lines.append(f"{cr} = 0.0")
                lines.append(f"{ci} = coef * (m{i}{i}i - tr)")
            else:
                lines.append(f"{cr} = coef * 0.5 * (m{i}{j}r - m{j}{i}r)")
                lines.append(f"{ci} = coef * 0.5 * (m{i}{j}i + m{j}{i}i)")
    return lines


def _ta_body() -> tuple[list[str], list[str]]:
    """(setup, body): the body writes ``coef TA(U_mu(x) acc[:, x])`` to ``orow[x, :]``."""
    v = _Views()
    lines = v.load("a", "mu", "0")
    lines += [
        f"b{i}{j}{r} = acc[{_c(i, j, 'ri'.index(r))}, x]"
        for i in range(NC)
        for j in range(NC)
        for r in "ri"
    ]
    lines += _mm("m", "a", "b")
    lines += ta_lines(lambda c: f"orow[x, {c}]")
    return v.setup(), lines


def _plaq_body() -> tuple[list[str], list[str]]:
    """(setup, body): the body adds ``3 - Re Tr U_{mu nu}(x)`` to ``orow[x]``."""
    v = _Views()
    lines = v.load("a", "mu", "0") + v.load("b", "nu", "smu") + _mm("t", "a", "b")
    lines += v.load("a", "nu", "0") + v.load("b", "mu", "snu") + _mm("s", "a", "b")
    terms = " + ".join(
        f"t{i}{j}r * s{i}{j}r + t{i}{j}i * s{i}{j}i" for i in range(NC) for j in range(NC)
    )
    lines.append(f"orow[x] += 3.0 - ({terms})")
    return v.setup(), lines


_HEADER = '''"""Generated by kernels/backends/fused.py (do not edit)."""
import numpy as np
from numba import njit, prange

from kernels.backends.numba_threads import threaded_kernel
'''

_SU3_STAPLES = '''
@threaded_kernel(fastmath={{'contract'}}, cache=True)
def su3_ta_staples(P, rows_p, rows_o, rowlen, strides, coef, ta, out):
    """ta: out[b, mu] = coef TA(U_mu A_mu); else out[b, mu] = coef A_mu."""
    nb, nd = P.shape[0], P.shape[1]
    nrows = rows_p.shape[0]
    for q in prange(nb * nrows):
        b = q // nrows
        row = q % nrows
        p0 = rows_p[row]
        o = rows_o[row]
        acc = np.empty((18, rowlen))
        for mu in range(nd):
            acc[:, :] = 0.0
            smu = strides[mu]
            for nu in range(nd):
                if nu == mu:
                    continue
                snu = strides[nu]
{staple_setup}
                for x in range(rowlen):
{staple}
            if ta:
                orow = out[b, mu, o : o + rowlen, :]
{ta_setup}
                for x in range(rowlen):
{ta}
            else:
                for x in range(rowlen):
                    for c in range(18):
                        out[b, mu, o + x, c] = coef * acc[c, x]


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def su3_plaquette_density(P, rows_p, rows_o, rowlen, strides, out):
    """out[b, site] = sum_{{mu<nu}} (3 - Re Tr U_{{mu nu}}) (out zeroed by the caller)."""
    nb, nd = P.shape[0], P.shape[1]
    nrows = rows_p.shape[0]
    for q in prange(nb * nrows):
        b = q // nrows
        row = q % nrows
        p0 = rows_p[row]
        o = rows_o[row]
        orow = out[b, o : o + rowlen]
        for mu in range(nd):
            smu = strides[mu]
            for nu in range(mu + 1, nd):
                snu = strides[nu]
{plaq_setup}
                for x in range(rowlen):
{plaq}


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def expm_mul(X, W, out, chunk):
    """out[n] = exp(X[n]) W[n] for 3x3 complex matrices (any X): A = X / 2^s with
    |A|_F <= 1, exp(A) = f0 + f1 A + f2 A^2 by Cayley-Hamilton (A^3 = e1 A^2 - e2 A + e3,
    e1 = Tr A, e2 = (Tr(A)^2 - Tr(A^2)) / 2, e3 = det A; the coefficients summed from the
    Taylor series, A^n / n! = a_n + b_n A + c_n A^2, (a, b, c)_{{n+1}} = (c e3, a - c e2,
    b + c e1)_n / (n + 1), to the order K where |A|_F^K / K! < 1e-20), then s squarings."""
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    for c in prange(nchunks):
        e = np.empty((3, 3), np.complex128)
        a = np.empty((3, 3), np.complex128)
        a2 = np.empty((3, 3), np.complex128)
        y = np.empty((3, 3), np.complex128)
        for m in range(c * chunk, min(n, (c + 1) * chunk)):
            nrm = 0.0
            for i in range(3):
                for j in range(3):
                    nrm += X[m, i, j].real ** 2 + X[m, i, j].imag ** 2
            nrm = np.sqrt(nrm)
            s = 0
            if nrm <= 1e300:  # not for an infinite exponent (halving would never end): it stays
                while nrm > 1.0:  # unscaled and its non-finite values reach the result
                    nrm *= 0.5
                    s += 1
            scale = 0.5**s
            for i in range(3):
                for j in range(3):
                    a[i, j] = X[m, i, j] * scale
            for i in range(3):
                for j in range(3):
                    a2[i, j] = a[i, 0] * a[0, j] + a[i, 1] * a[1, j] + a[i, 2] * a[2, j]
            e1 = a[0, 0] + a[1, 1] + a[2, 2]
            e2 = 0.5 * (e1 * e1 - (a2[0, 0] + a2[1, 1] + a2[2, 2]))
            e3 = (
                a[0, 0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
                - a[0, 1] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
                + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
            )
            ca, cb, cc = 1.0 + 0.0j, 0.0j, 0.0j
            f0, f1, f2 = 1.0 + 0.0j, 0.0j, 0.0j
            bound = 1.0
            k = 0
            while bound >= 1e-20 and k < 30:
                k += 1
                bound *= nrm / k
                inv = 1.0 / k
                ca, cb, cc = cc * e3 * inv, (ca - cc * e2) * inv, (cb + cc * e1) * inv
                f0 += ca
                f1 += cb
                f2 += cc
            for i in range(3):
                for j in range(3):
                    e[i, j] = f1 * a[i, j] + f2 * a2[i, j]
                e[i, i] += f0
            for _ in range(s):
                for i in range(3):
                    for j in range(3):
                        y[i, j] = e[i, 0] * e[0, j] + e[i, 1] * e[1, j] + e[i, 2] * e[2, j]
                for i in range(3):
                    for j in range(3):
                        e[i, j] = y[i, j]
            for i in range(3):
                for j in range(3):
                    out[m, i, j] = (
                        e[i, 0] * W[m, 0, j] + e[i, 1] * W[m, 1, j] + e[i, 2] * W[m, 2, j]
                    )


@threaded_kernel(cache=True)
def su3_reunitarize(U, out, chunk):
    """out[n] = the SU(3) matrix nearest U[n]: rows a, b of U Gram-Schmidt orthonormalised
    (a / |a|, then b - (a^+ b) a normalised), row c = conj(a x b) (det = 1)."""
    n = U.shape[0]
    nchunks = (n + chunk - 1) // chunk
    for c in prange(nchunks):
        for m in range(c * chunk, min(n, (c + 1) * chunk)):
            a0, a1, a2 = U[m, 0, 0], U[m, 0, 1], U[m, 0, 2]
            b0, b1, b2 = U[m, 1, 0], U[m, 1, 1], U[m, 1, 2]
            na = np.sqrt(
                a0.real**2 + a0.imag**2 + a1.real**2 + a1.imag**2 + a2.real**2 + a2.imag**2
            )
            a0, a1, a2 = a0 / na, a1 / na, a2 / na
            d = a0.conjugate() * b0 + a1.conjugate() * b1 + a2.conjugate() * b2
            b0, b1, b2 = b0 - d * a0, b1 - d * a1, b2 - d * a2
            nb = np.sqrt(
                b0.real**2 + b0.imag**2 + b1.real**2 + b1.imag**2 + b2.real**2 + b2.imag**2
            )
            b0, b1, b2 = b0 / nb, b1 / nb, b2 / nb
            out[m, 0, 0], out[m, 0, 1], out[m, 0, 2] = a0, a1, a2
            out[m, 1, 0], out[m, 1, 1], out[m, 1, 2] = b0, b1, b2
            out[m, 2, 0] = (a1 * b2 - a2 * b1).conjugate()
            out[m, 2, 1] = (a2 * b0 - a0 * b2).conjugate()
            out[m, 2, 2] = (a0 * b1 - a1 * b0).conjugate()
'''


_PAD = '''

@threaded_kernel(cache=True)
def periodic_pad(src, srow, lx, dst):
    """dst[a, pr, xp, :] = src[a, srow[pr], (xp - 1) mod lx, :]: width-1 periodic halo of
    every lattice axis (rows: all axes but the last, wrapped by the caller's srow table)."""
    na, nc = src.shape[0], src.shape[2]
    npr = srow.shape[0]
    for q in prange(na * npr):
        a = q // npr
        pr = q % npr
        sr = srow[pr] * lx
        for c in range(nc):
            dst[a, pr * (lx + 2), c] = src[a, sr + lx - 1, c]
            dst[a, pr * (lx + 2) + lx + 1, c] = src[a, sr, c]
        for x in range(lx):
            for c in range(nc):
                dst[a, pr * (lx + 2) + 1 + x, c] = src[a, sr + x, c]
'''


def _source() -> str:
    (ss, sb), (ts, tb), (ps, pb) = _staple_body(), _ta_body(), _plaq_body()
    return (
        _HEADER
        + _PAD
        + _SU3_STAPLES.format(
            staple_setup=_indent(ss, 16),
            staple=_indent(sb, 20),
            ta_setup=_indent(ts, 16),
            ta=_indent(tb, 20),
            plaq_setup=_indent(ps, 16),
            plaq=_indent(pb, 20),
        )
    )


#: modules whose jitted helpers the generated kernels import and inline (``vsincos``,
#: ``prefetch_row``): numba's disk cache is keyed by the generated file alone, so their source
#: is part of the module's hash (:func:`_load_module`); a change there compiles anew
INLINED_DEPENDENCIES = ("vtrig.py", "prefetch.py")


@functools.cache
def dependency_hash(files: tuple[str, ...] = INLINED_DEPENDENCIES) -> str:
    """SHA-256 (16 hex digits) of the source of ``files`` in this package directory (read
    once per process: every generated module's load asks for it)."""
    h = hashlib.sha256()
    for f in files:
        h.update((Path(__file__).parent / f).read_bytes())
    return h.hexdigest()[:16]


def _load_module(src: str, name: str):
    """Write generated kernel source ``src`` to a cache directory (so numba can cache the
    machine code across processes) and import it as module ``trivhmc_{name}_{hash}`` from
    ``{name}_kernels_{hash}.py`` (numba's cache on disk records that module name). The hash
    covers ``src``, numba's version and the inlined helper modules
    (:data:`INLINED_DEPENDENCIES`)."""
    tag = hashlib.sha256((src + numba.__version__ + dependency_hash()).encode()).hexdigest()[:16]
    root = Path(os.environ.get("TRIVHMC_CACHE", Path(tempfile.gettempdir()) / "trivhmc-cache"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError:  # not writable: a private directory (compiled again by each process)
        root = Path(tempfile.mkdtemp(prefix="trivhmc-cache-"))
    path = root / f"{name}_kernels_{tag}.py"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(src)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(f"trivhmc_{name}_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # numba's cache resolves the module by name
    spec.loader.exec_module(mod)
    return mod


def _load_kernels():
    """The generated fused kernel module (:func:`_load_module`)."""
    return _load_module(_source(), "fused")


_K = None


def kernels():
    """The compiled kernel module (generated and imported on first use)."""
    global _K
    if _K is None:
        _K = _load_kernels()
    return _K


# --------------------------------------------------------------------------- layout
@functools.lru_cache(maxsize=32)
def _rows(local: tuple[int, ...], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded flat start of each interior row of the last axis, unpadded start, strides
    (cached per shape: callers must not write to them)."""
    padded = tuple(n + 2 * width for n in local)
    strides = np.array([int(np.prod(padded[m + 1 :])) for m in range(len(local))], np.int64)
    idx = np.indices(local[:-1]).reshape(len(local) - 1, -1) if len(local) > 1 else None
    ostr = np.array([int(np.prod(local[m + 1 :])) for m in range(len(local))], np.int64)
    if idx is None:
        return np.array([width], np.int64), np.array([0], np.int64), strides
    rows_p = ((idx + width) * strides[:-1, None]).sum(0) + width
    rows_o = (idx * ostr[:-1, None]).sum(0)
    return rows_p.astype(np.int64), rows_o.astype(np.int64), strides


@functools.lru_cache(maxsize=32)
def _identity_rows(local: tuple[int, ...]) -> np.ndarray:
    """``0 .. n - 1`` over the padded rows (all axes but the last, width-1 halo): the row
    map of an array that is already halo-padded (cached: read only)."""
    return np.arange(int(np.prod([n + 2 for n in local[:-1]])), dtype=np.int64)


@functools.lru_cache(maxsize=32)
def _source_rows(local: tuple[int, ...]) -> np.ndarray:
    """For each padded row (all axes but the last, width-1 halo), the flat index of the
    periodic image row in the unpadded block (cached per shape: read only)."""
    idx = np.indices(tuple(n + 2 for n in local[:-1])).reshape(len(local) - 1, -1)
    src = (idx - 1) % np.array(local[:-1])[:, None]
    ostr = np.array([int(np.prod(local[m + 1 : -1])) for m in range(len(local) - 1)], np.int64)
    return (src * ostr[:, None]).sum(0).astype(np.int64)


_WORK: dict[tuple[int, ...], np.ndarray] = {}


def _workspace(shape: tuple[int, ...]) -> np.ndarray:
    """A float64 scratch array of ``shape`` kept between calls (the padded links live only
    during one kernel call). A fresh array of tens of MB costs a page fault per 4 kB page
    on every call (glibc returns large blocks to the system): 30 ms at 16^4, as much as
    the copy itself. One buffer per shape; the last few shapes are kept."""
    buf = _WORK.get(shape)
    if buf is None:
        if len(_WORK) >= 4:
            _WORK.pop(next(iter(_WORK)))
        buf = _WORK[shape] = np.empty(shape)
    return buf


def _su3_planes(u: torch.Tensor, grid: ProcessGrid) -> np.ndarray:
    """Links with a width-1 halo on every axis, as the real ``(B, Nd, V_padded, 18)``. On a
    grid with no split axis the periodic halo is filled by one copy (:func:`periodic_pad`)
    into a reused workspace: the same array as :func:`parallel.halo_pad`, which a split grid
    uses for its exchange."""
    x = u.detach().resolve_conj()
    b, nd = x.shape[:2]
    local = grid.local_shape
    if any(g > 1 for g in grid.grid) or len(local) < 2:
        p = halo_pad(x, grid, 1, first=2).contiguous()
        return torch.view_as_real(p).reshape(b, nd, -1, 18).numpy()
    src = torch.view_as_real(x.contiguous()).reshape(b * nd, -1, 18).numpy()
    vp = int(np.prod([n + 2 for n in local]))
    dst = _workspace((b * nd, vp, 18))
    kernels().periodic_pad(src, _source_rows(local), local[-1], dst)
    return dst.reshape(b, nd, vp, 18)


def _from_planes(out: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``(B, Nd, V, 18)`` real -> complex ``(B, Nd, *local, 3, 3)`` (no copy)."""
    t = torch.from_numpy(out).reshape(*like.shape, 2)
    return torch.view_as_complex(t)


_threads = match_torch_threads


def su3_ta_staples(u: torch.Tensor, grid: ProcessGrid, coef: float, ta: bool) -> torch.Tensor:
    """Fused ``coef TA(U A)`` (``ta``) or ``coef A`` for the Wilson staples, complex out."""
    _threads()
    planes = _su3_planes(u, grid)
    rows_p, rows_o, strides = _rows(grid.local_shape, 1)
    b, nd = u.shape[:2]
    out = np.empty((b, nd, int(np.prod(grid.local_shape)), 18))
    kernels().su3_ta_staples(
        planes, rows_p, rows_o, grid.local_shape[-1], strides, float(coef), ta, out
    )
    return _from_planes(out, u)


def su3_plaquette_density(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``sum_{mu<nu} (3 - Re Tr U_{mu nu}(x))`` per site on this rank, ``(B, *local)``."""
    _threads()
    planes = _su3_planes(u, grid)
    rows_p, rows_o, strides = _rows(grid.local_shape, 1)
    out = np.zeros((u.shape[0], int(np.prod(grid.local_shape))))
    kernels().su3_plaquette_density(planes, rows_p, rows_o, grid.local_shape[-1], strides, out)
    return torch.from_numpy(out).reshape(u.shape[0], *grid.local_shape)


def su3_plaquette_sum(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``sum_x sum_{mu<nu} (3 - Re Tr U_{mu nu}(x))`` on this rank, per chain ``(B,)``."""
    return su3_plaquette_density(u, grid).flatten(1).sum(1)


@functools.lru_cache(maxsize=32)
def _u1_plan(local: tuple[int, ...], planes: tuple[tuple[int, int], ...], force: bool):
    """Geometry of :mod:`kernels.backends.u1_kernels` for one shape and plane set (cached:
    read only): rows, strides, the plane tables and the chunking."""
    rows_p, rows_o, strides = _rows(local, 1)
    nd = len(local)
    mus = np.array([mu for mu, _ in planes], np.int64)
    nus = np.array([nu for _, nu in planes], np.int64)
    # per link direction: its planes, the sign of theta_p in F_mu, the other direction
    pl = np.full((nd, max(1, nd - 1)), -1, np.int64)
    sg = np.zeros((nd, max(1, nd - 1)))
    ot = np.zeros((nd, max(1, nd - 1)), np.int64)
    fill = [0] * nd
    for p, (mu, nu) in enumerate(planes):
        for m, sign, other in ((mu, 1.0, nu), (nu, -1.0, mu)):
            pl[m, fill[m]], sg[m, fill[m]], ot[m, fill[m]] = p, sign, other
            fill[m] += 1
    back = int(strides[0]) if force else 0
    geo = np.array(u1_kernels.chunks(rows_p, local[-1], strides, back), np.int64)
    return rows_p, rows_o, strides, mus, nus, pl, sg, ot, geo


def _u1_source(theta: torch.Tensor, grid: ProcessGrid, rows_p: np.ndarray, geo: np.ndarray):
    """``(angles (B, Nd, n) as numpy, srow, wrap, workers)`` for :mod:`u1_kernels`: a split
    grid's halo-padded angles (:func:`parallel.halo_pad`), else the angles themselves."""
    b, nd = theta.shape[:2]
    local = tuple(grid.local_shape)
    if any(g > 1 for g in grid.grid):
        src = halo_pad(theta.detach(), grid, 1, first=2).contiguous()
        srow, wrap = _identity_rows(local), False
    else:
        src = theta.detach().contiguous()
        srow, wrap = _source_rows(local), True
    src = src.reshape(b, nd, math.prod(src.shape[2:]))  # explicit: no chains is valid too
    nchr = -(-rows_p.shape[0] // int(geo[0]))
    nw = max(1, min(b * nchr, 4 * numba.get_num_threads()))
    return src.numpy(), srow, wrap, nw


@functools.lru_cache(maxsize=8)
def _u1_slots(npl: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(lowest slot, M_j, bits of M_j)`` of the exact sum's slots (``c_j`` descending,
    :func:`parallel.reduce.slot_exponent`) that hold every U(1) action density of ``npl``
    planes: multiples of ``2^-53`` below ``2 npl + 1`` (:func:`u1_kernels.action_slots`)."""
    k_top = reduce.slot_of(math.frexp(2 * npl + 1)[1] - 1)
    k_bot = reduce.slot_of(-53)
    cs = [reduce.slot_exponent(k) for k in range(k_top, k_bot - 1, -1)]
    mags = np.array([1.5 * 2.0 ** (c + 52) for c in cs])
    return k_bot, mags, mags.view(np.int64).copy()


def u1_action_sum(theta: torch.Tensor, grid: ProcessGrid, planes) -> torch.Tensor | None:
    """``sum_x sum_{mu<nu} (1 - cos theta_{mu nu}(x))`` over the global lattice per chain
    ``(B,)``, correctly rounded: the exact sum (:func:`parallel.lattice_sum`) of the fused
    action density, bit for bit, in one pass that never stores the density (each value goes
    straight into the exact sum's fixed-point slots, :func:`u1_kernels.action_slots`). None on
    every rank when some rank has an angle above ``vtrig.LIMIT`` or a non-finite value (the
    caller then sums the density the general way)."""
    _threads()
    b = theta.shape[0]
    local = grid.local_shape
    rows_p, rows_o, strides, mus, nus, _, _, _, geo = _u1_plan(
        tuple(local), tuple((int(m), int(n)) for m, n in planes), False
    )
    src, srow, wrap, nw = _u1_source(theta, grid, rows_p, geo)
    k_bot, mags, mbits = _u1_slots(len(planes))
    nlev = mags.shape[0]
    slots = np.zeros((nw, b, nlev), np.int64)
    bad = u1_kernels.action_slots(
        src, srow, wrap, mus, nus, rows_p, rows_o, local[-1], strides, geo, nw, mags, mbits, slots
    )
    tot = np.empty(b * nlev + 1, np.int64)
    tot[:-1] = slots.sum(axis=0).reshape(-1)
    tot[-1] = bad
    if grid.size > 1:
        grid.cart.Allreduce(MPI.IN_PLACE, tot, op=MPI.SUM)
    if tot[-1]:
        return None
    return reduce.round_slot_totals(tot[:-1].reshape(b, nlev)[:, ::-1], k_bot, grid.volume)


def u1_kernel(
    theta: torch.Tensor, grid: ProcessGrid, planes, beta: float, force: bool
) -> torch.Tensor | None:
    """Fused U(1) force ``(B, Nd, *local)`` or action density ``(B, *local)``
    (:mod:`kernels.backends.u1_kernels`, one pass in row chunks); None when a plaquette
    angle exceeds ``vtrig.LIMIT`` (the caller then uses the eager kernels). A split grid
    reads the halo-padded angles of :func:`parallel.halo_pad`, a periodic one the angles."""
    _threads()
    b, nd = theta.shape[:2]
    local = grid.local_shape
    rows_p, rows_o, strides, mus, nus, pl, sg, ot, geo = _u1_plan(
        tuple(local), tuple((int(m), int(n)) for m, n in planes), force
    )
    src, srow, wrap, nw = _u1_source(theta, grid, rows_p, geo)
    nloc = int(np.prod(local))
    if not force:
        out = np.empty((b, nloc))
        if u1_kernels.density(
            src, srow, wrap, mus, nus, rows_p, rows_o, local[-1], strides, geo, nw, out
        ):
            return None
        return torch.from_numpy(out).reshape(b, *local)
    out = np.empty((b, nd, nloc))
    if u1_kernels.force(
        src,
        srow,
        wrap,
        mus,
        nus,
        pl,
        sg,
        ot,
        rows_p,
        rows_o,
        local[-1],
        strides,
        float(beta),
        geo,
        nw,
        out,
    ):
        return None
    return torch.from_numpy(out).reshape(theta.shape)


def expm_mul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``exp(X) W`` for ``(..., 3, 3)`` complex128 ``X`` (traceless anti-Hermitian), ``W``."""
    _threads()
    xs = np.ascontiguousarray(x.detach().reshape(-1, 3, 3).numpy())
    ws = np.ascontiguousarray(w.detach().reshape(-1, 3, 3).numpy())
    out = np.empty_like(ws)
    kernels().expm_mul(xs, ws, out, 256)
    return torch.from_numpy(out).reshape(w.shape)


def su3_reunitarize(u: torch.Tensor) -> torch.Tensor:
    """Nearest SU(3) matrix per link (:func:`kernels.groups.su_n.reunitarize`, SU(3) rule)."""
    _threads()
    us = np.ascontiguousarray(u.detach().reshape(-1, 3, 3).numpy())
    out = np.empty_like(us)
    kernels().su3_reunitarize(us, out, 256)
    return torch.from_numpy(out).reshape(u.shape)


def su3_flow_step_rk3(
    u: torch.Tensor, grid: ProcessGrid, eps: float, generator=None
) -> torch.Tensor:
    """Luscher's RK3 Wilson-flow step (:func:`kernels.backends.eager.flow_step_rk3`) with the
    fused exponential and generator ``Z = -TA(U A)`` (``generator(u)``; default the fused
    one of this module)."""
    gen = generator or (lambda v: su3_ta_staples(v, grid, -1.0, ta=True))
    z0 = eps * gen(u)
    w1 = expm_mul(0.25 * z0, u)
    z1 = eps * gen(w1)
    w2 = expm_mul((8.0 / 9.0) * z1 - (17.0 / 36.0) * z0, w1)
    z2 = eps * gen(w2)
    return expm_mul(0.75 * z2 - (8.0 / 9.0) * z1 + (17.0 / 36.0) * z0, w2)


# --------------------------------------------------------------------------- autograd
def _numba_plaquette_sum(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    return su3_plaquette_sum(u, grid)


def _numba_staples(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    return su3_ta_staples(u, grid, 1.0, ta=False)


class _SU3WilsonAction(torch.autograd.Function):
    """Local ``c0 sum_P (3 - Re Tr U_P)`` per chain; backward ``-c0 g A^+`` (module doc).
    ``plaq_sum(u, grid)`` and ``staples(u, grid)`` are the fused kernels (this module's by
    default; the vnode backend passes its own)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, u, grid, c0, plaq_sum=_numba_plaquette_sum, staples=_numba_staples
    ):
        ctx.save_for_backward(u)
        ctx.grid, ctx.c0, ctx.staples = grid, c0, staples
        return c0 * plaq_sum(u, grid)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable eager staples
            a = eager.staple_sum(u, ctx.grid, 1.0, 0.0)
        else:
            a = ctx.staples(u, ctx.grid)
        w = (-ctx.c0 * g).to(u.dtype).reshape(-1, *([1] * (u.ndim - 1)))
        return w * a.conj().transpose(-1, -2), None, None, None, None


class _U1ActionDensity(torch.autograd.Function):
    """``sum_{mu<nu} (1 - cos theta_{mu nu}(x))``; backward: the force with weights ``g(x)``."""

    @staticmethod
    def forward(ctx, theta, grid, planes):  # type: ignore[override]
        ctx.save_for_backward(theta)
        ctx.grid, ctx.planes = grid, planes
        out = u1_kernel(theta, grid, planes, 1.0, force=False)
        return eager.u1_action_density(theta.detach(), grid, planes) if out is None else out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (theta,) = ctx.saved_tensors
        grid, nd = ctx.grid, theta.shape[1]
        sin_p = torch.sin(eager.u1_plaquette_angles(theta, grid, ctx.planes))
        f = [torch.zeros_like(theta[:, 0]) for _ in range(nd)]
        for i, (mu, nu) in enumerate(ctx.planes):
            s = g * sin_p[:, i]
            f[mu] = f[mu] + s - shift(s, grid, nu, -1, first=1)
            f[nu] = f[nu] - s + shift(s, grid, mu, -1, first=1)
        return torch.stack(f, dim=1), None, None


# --------------------------------------------------------------------------- backend
def _fusable(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.complex128, torch.float64)


def _graph(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class NumbaBackend(EagerBackend):
    """Site-fused numba kernels on CPU float64/complex128; eager for everything else."""

    name = "numba"

    def su3_staple_sum(self, u, grid, c0, c1):
        """Staple sum ``A_mu(x)``; fused for Wilson (``c1 == 0``) without a graph."""
        if c1 or not _fusable(u) or _graph(u):
            return super().su3_staple_sum(u, grid, c0, c1)
        return su3_ta_staples(u, grid, c0, ta=False)

    def su3_force(self, u, grid, beta, c0, c1):
        """``(beta/6) TA(U A)``; fused for Wilson without a graph."""
        if c1 or not _fusable(u) or _graph(u):
            return super().su3_force(u, grid, beta, c0, c1)
        return su3_ta_staples(u, grid, beta * c0 / 6.0, ta=True)

    def su3_flow_generator(self, u, grid, c1=0.0):
        """``-TA(V A)``; fused for Wilson without a graph."""
        if c1 or not _fusable(u) or _graph(u):
            return super().su3_flow_generator(u, grid, c1)
        return su3_ta_staples(u, grid, -1.0, ta=True)

    def su3_flow_step_rk3(self, u, grid, eps, c1=0.0):
        """RK3 Wilson-flow step; fused for Wilson without a graph."""
        if c1 or not _fusable(u) or _graph(u):
            return super().su3_flow_step_rk3(u, grid, eps, c1)
        return su3_flow_step_rk3(u, grid, eps)

    def su3_expm_mul(self, x, w):
        """``exp(X) W``; fused (Cayley-Hamilton + squaring, :func:`expm_mul`) without a graph."""
        if not (_fusable(x) and _fusable(w)) or _graph(x) or _graph(w):
            return super().su3_expm_mul(x, w)
        return expm_mul(x, w)

    def su3_reunitarize(self, u):
        """Nearest SU(3) link (:func:`su3_reunitarize`) for complex128 links without a graph."""
        if u.dtype != torch.complex128 or not _fusable(u) or _graph(u):
            return super().su3_reunitarize(u)
        return su3_reunitarize(u)

    def su3_action_density(self, u, grid, c0, c1):
        """Per-site ``c0 sum_{mu<nu} (3 - Re Tr U_{mu nu})`` (what ``SU3Gauge.action`` sums
        exactly); fused for Wilson without a graph (a graph, e.g. a flow differentiating the
        action, takes the eager density)."""
        if c1 or not _fusable(u) or _graph(u):
            return super().su3_action_density(u, grid, c0, c1)
        return c0 * su3_plaquette_density(u, grid)

    def su3_action_local(self, u, grid, c0, c1):
        """Wilson loop sum; fused forward, analytic backward (:class:`_SU3WilsonAction`)."""
        if c1 or not _fusable(u):
            return super().su3_action_local(u, grid, c0, c1)
        if _graph(u):
            return _SU3WilsonAction.apply(u, grid, c0)
        return c0 * su3_plaquette_sum(u, grid)

    def u1_action_density(self, theta, grid, planes):
        """U(1) action density; fused forward, analytic backward (:class:`_U1ActionDensity`)."""
        if not _fusable(theta):
            return super().u1_action_density(theta, grid, planes)
        if _graph(theta):
            return _U1ActionDensity.apply(theta, grid, planes)
        out = u1_kernel(theta, grid, planes, 1.0, force=False)
        return super().u1_action_density(theta, grid, planes) if out is None else out

    def u1_action_sum(self, theta, grid, planes):
        """U(1) action's exact lattice sum per chain; without a graph in one fused pass
        (:func:`u1_action_sum`), the same bits as the density's exact sum."""
        if not _fusable(theta) or _graph(theta) or theta.dtype != torch.float64:
            return super().u1_action_sum(theta, grid, planes)
        out = u1_action_sum(theta, grid, planes)
        return super().u1_action_sum(theta, grid, planes) if out is None else out

    def u1_force(self, theta, grid, planes, beta):
        """U(1) force; fused without a graph."""
        if not _fusable(theta) or _graph(theta):
            return super().u1_force(theta, grid, planes, beta)
        out = u1_kernel(theta, grid, planes, beta, force=True)
        return super().u1_force(theta, grid, planes, beta) if out is None else out
