"""Virtual-node (Grid-style) SU(3) kernels: every SIMD lane is a real lattice site.

Layout
------
A 4D local lattice ``L0 x L1 x L2 x L3`` (all even, one rank, periodic) is cut in two along
every axis: ``W = 2^4 = 16`` sub-blocks of ``h_d = L_d/2`` sites per axis. Site ``x`` with
``x_d = o_d + h_d b_d`` (``0 <= o_d < h_d``, ``b_d in {0, 1}``) is stored at outer site
``o = ((o0 h1 + o1) h2 + o2) h3 + o3`` and lane ``l = b0 + 2 b1 + 4 b2 + 8 b3``. A packed
field is a 2-D float64 array of link blocks ``Q[(b Nd + mu) Vo + o, c W + l]`` with
``Vo = prod h_d`` and ``c = 2 (3 i + j) + {0: re, 1: im}``: the 16 lanes of one matrix
component are contiguous; after the ``B Nd Vo`` link blocks come the kernels' scratch blocks
(6 per work chunk, :func:`nchunks`).

A neighbour ``x +- e_d`` is the same lane at the neighbouring outer site, except across a
sub-block face (``o_d = h_d - 1`` going up, ``o_d = 0`` going down): the outer site wraps and
the lane bit ``d`` flips (``l -> l ^ 2^d``, periodic on one rank). Such a neighbour block is
first copied with its lanes permuted into a scratch block (:func:`perm_copy`; a quarter of
the hops at 8^4, an eighth at 16^4); every other operand is read straight from ``Q``.

Split grids (several ranks along an axis): the resident MD layout (:class:`PackedMD`) keeps
the owned sites where the unsplit layout has them and adds ghost planes of outer sites per
split axis (:class:`GhostLayout`, Grid's approach): the kernels sweep the owned sites only,
a hop across the rank face reads a ghost plane, refilled before every force from one
received lattice slice per face (``ghost_fill``), and with axis 0 split alone the interior
planes are computed while the faces travel. The per-call kernels on a split grid
(:func:`_staples_on_grid`, :func:`_density_on_grid`) pack the links into the same ghost
layout and run the same sweep.

Each kernel is a ``numba.prange`` loop over chunks of (chain, outer site) and, per 3x3
product, a loop over the 16 lanes with literal component offsets and block indices (generated
straight-line code; no negative-index handling or reference counting left in the loop): LLVM
vectorises it (ymm FMAs; one multiply and five FMAs per output component). Two sites
(blocks) ahead, each kernel prefetches into L2 the link blocks its sweep reads for the first
time (:func:`prefetch_site`; ``exp(X) V`` its next ``X`` and ``V``;
:mod:`kernels.backends.prefetch`): beyond the last-level cache the hardware prefetcher left
those DRAM reads serialised with the arithmetic. Floating point: ``fastmath={'contract'}``
only. Measured speed and limits: docs/performance.md, "Kernels
toward the roofline (item 1)".

Kernels (same mathematics as :mod:`kernels.backends.eager`):

* staple sum ``A_mu(x) = sum_{nu != mu} [U_nu(x+mu) (U_nu(x) U_mu(x+nu))^+ +
  (U_mu(x-nu) U_nu(x-nu+mu))^+ U_nu(x-nu)]``, then ``coef TA(U_mu A_mu)`` (force: ``coef =
  beta c0 / 6``; flow generator: ``coef = -1``) or ``coef A_mu``, with
  ``TA(M) = (M - M^+)/2 - Tr(M - M^+)/6``; built plane by plane, where
  ``P = U_nu(x+mu) U_mu(x+nu)^+`` gives the upper staples of both links of the plane
  (``P U_nu(x)^+`` and ``P^+ U_mu(x)^+``): 46 products per site instead of 52;
* the clover field strength's energy and charge densities (the Wilson flow's ``E`` and
  ``Q``, four leaves per plane);
* plaquette action density ``sum_{mu<nu} (3 - Re Tr[U_mu(x) U_nu(x+mu) (U_nu(x)
  U_mu(x+nu))^+])`` per site;
* ``exp(X) V`` per link and lane for ``X`` in su(3) (Cayley-Hamilton: ``exp(A) = f0 + f1 A +
  f2 A^2`` for ``A = X / 2^s`` with ``|A|_F <= 1`` in every lane, the ``f`` from the Taylor
  series reduced by ``A^3 = -e2 A + e3``, in real arithmetic, then ``s`` squarings), and
  with it Luscher's
  RK3 Wilson-flow step with all three stages in the layout (:func:`flow_step_rk3_packed`).

:func:`pack` / :func:`unpack` convert from/to the ``(B, Nd, *local, 3, 3)`` complex128 layout
(strided input read in place). :class:`VnodeBackend` uses these kernels where :func:`fits`
and the ``numba`` backend elsewhere; its action is ``fused._SU3WilsonAction`` (analytic
backward from the vnode staples; eager staples when a graph of the backward is requested).
"""

from __future__ import annotations

import numba  # noqa: F401  (optional dependency: ImportError -> backend unavailable)
import numpy as np
import torch

from parallel import comm
from parallel.settings import flag

from . import fused, prefetch

ND = 4
W = 1 << ND  # lanes
LB = 18 * W  # floats per link block (one 3x3 complex matrix in every lane)
PF_AHEAD = 2  # sites (blocks) ahead that the kernels prefetch (kernels.backends.prefetch)
NC = 3


def _c(i: int, j: int, r: int) -> int:
    return 2 * (NC * i + j) + r


# --------------------------------------------------------------------------- code generation
def _mm(da: bool, db: bool, acc: bool) -> list[str]:
    """Lane-loop body: ``C[co + c W + l] (+)= op(A) op(B)`` with ``A``, ``B`` the link blocks
    at offsets ``ao``, ``bo`` (``op`` daggers if ``da``/``db``). Each output is one
    left-to-right chain ``(+-) x0 y0 +- x1 y1 ...``: one multiply and five FMAs
    (``fastmath={'contract'}``)."""
    lines = []
    for name, arr in (("a", "A[ao, "), ("b", "B[bo, ")):
        for i in range(NC):
            for j in range(NC):
                for r in range(2):
                    lines.append(f"{name}{i}{j}{'ri'[r]} = {arr}{_c(i, j, r) * W} + l]")
    sa, sb = (-1 if da else 1), (-1 if db else 1)
    for i in range(NC):
        for j in range(NC):
            re: list[tuple[int, str]] = []
            im: list[tuple[int, str]] = []
            for k in range(NC):
                ar, ai = (f"a{k}{i}r", f"a{k}{i}i") if da else (f"a{i}{k}r", f"a{i}{k}i")
                br, bi = (f"b{j}{k}r", f"b{j}{k}i") if db else (f"b{k}{j}r", f"b{k}{j}i")
                # (ar + i sa ai)(br + i sb bi): re = ar br - sa sb ai bi, im = sb ar bi + sa ai br
                re += [(1, f"{ar} * {br}"), (-sa * sb, f"{ai} * {bi}")]
                im += [(sb, f"{ar} * {bi}"), (sa, f"{ai} * {br}")]
            for r, terms in (("r", re), ("i", im)):
                c = f"C[co, {_c(i, j, 'ri'.index(r)) * W} + l]"
                if not acc:  # start the chain with a positive product
                    terms.sort(key=lambda t: -t[0])
                expr = c if acc else ""
                for sign, t in terms:
                    expr += (" + " if sign > 0 else " - ") if expr else ("" if sign > 0 else "-")
                    expr += t
                lines.append(f"{c} = {expr}")
    return lines


def _ind(lines: list[str], n: int) -> str:
    return "".join(" " * n + ln + "\n" for ln in lines)


_NJIT = "\n@njit(fastmath={'contract'}, cache=True)\n"


def _mm_func(name: str, da: bool, db: bool, acc: bool) -> str:
    return (
        _NJIT + f"def {name}(A, ao, B, bo, C, co):\n"
        f"    for l in range({W}):\n" + _ind(_mm(da, db, acc), 8)
    )


def _ta_func() -> str:
    """``O[oo + .] = coef TA(M)`` per lane (``TA(M) = (M - M^+)/2 - Tr(M - M^+)/6``), and
    ``ta_out_keep``: ``O = coef TA(M) + keep O`` (the low-storage RK3 combinations)."""
    lines = [
        f"m{i}{j}{'ri'[r]} = M[mo, {_c(i, j, r) * W} + l]"
        for i in range(NC)
        for j in range(NC)
        for r in range(2)
    ]
    lines += fused.ta_lines(lambda c: f"O[oo, {c * W} + l]")
    keep = lines[:18] + fused.ta_lines(lambda c: f"t{c}")
    keep += [f"O[oo, {c * W} + l] = t{c} + keep * O[oo, {c * W} + l]" for c in range(18)]
    return (
        _NJIT
        + "def ta_out(M, mo, coef, O, oo):\n"
        + f"    for l in range({W}):\n"
        + _ind(lines, 8)
        + _NJIT
        + "def ta_out_keep(M, mo, coef, keep, O, oo):\n"
        + f"    for l in range({W}):\n"
        + _ind(keep, 8)
    )


def _retr_func() -> str:
    """``D[do + l] += 3 - Re Tr(A B^+)`` per lane."""
    terms = " + ".join(
        f"A[ao, {_c(i, j, r) * W} + l] * B[bo, {_c(i, j, r) * W} + l]"
        for i in range(NC)
        for j in range(NC)
        for r in range(2)
    )
    return (
        _NJIT + "def retr_acc(A, ao, B, bo, D, do):\n"
        f"    for l in range({W}):\n"
        f"        D[do, l] = D[do, l] + 3.0 - ({terms})\n"
    )


def _sq_func() -> str:
    """``D[do + l] += sum_c A[ao + c W + l]^2`` per lane (``|A|_F^2``)."""
    terms = " + ".join(f"A[ao, {c * W} + l] * A[ao, {c * W} + l]" for c in range(18))
    return (
        _NJIT + "def sq_acc(A, ao, D, do):\n"
        f"    for l in range({W}):\n"
        f"        D[do, l] = D[do, l] + ({terms})\n"
    )


def _retr_ab_func() -> str:
    """``D[do + l] += sign Re Tr(A B)`` per lane."""
    terms = " + ".join(
        f"A[ao, {_c(i, j, 0) * W} + l] * B[bo, {_c(j, i, 0) * W} + l]"
        f" - A[ao, {_c(i, j, 1) * W} + l] * B[bo, {_c(j, i, 1) * W} + l]"
        for i in range(NC)
        for j in range(NC)
    )
    return (
        _NJIT + "def retr_ab_acc(A, ao, B, bo, sign, D, do):\n"
        f"    for l in range({W}):\n"
        f"        D[do, l] = D[do, l] + sign * ({terms})\n"
    )


def _cmul(out: str, x: str, y: str, op: str = "=") -> list[str]:
    """``out = x y`` (``op`` "=") or ``out += x y`` / ``out -= x y`` for complex scalars held
    as real pairs ``{name}r``, ``{name}i``."""
    if op == "=":
        return [f"{out}r = {x}r * {y}r - {x}i * {y}i", f"{out}i = {x}r * {y}i + {x}i * {y}r"]
    s = "+" if op == "+=" else "-"
    t = "-" if op == "+=" else "+"
    return [
        f"{out}r = {out}r {s} {x}r * {y}r {t} {x}i * {y}i",
        f"{out}i = {out}i {s} {x}r * {y}i {s} {x}i * {y}r",
    ]


# Cayley-Hamilton scratch rows (``S[row, lane]``): the invariants e2 (real) and eta = Im e3 of
# A in su(3), then the sums (f0, f1, f2) of the terms A^n / n! = a_n + b_n A + c_n A^2; re, im;
# then |X|_F^2 of the exponent before its scaling (ch_norm2). They live in row 4 of the
# kernel's scratch ``Wk`` (one flat array ``F``, every access at a constant offset: LLVM
# vectorises the lane loops without run-time alias checks).
_CH_S = 4 * LB  # offset of the scalars' rows in F
_CH_ROWS = {
    n: k
    for k, n in enumerate(
        ["e2", "eta", *(f"{v}{r}" for v in ("f0", "f1", "f2") for r in "ri"), "n2"]
    )
}
# Taylor orders of the coefficient series (unrolled: the scalars stay in registers and the
# lane loop is the vectorised one), chosen per block by the largest |A|_F of its lanes: the
# first omitted term, <= |A|^(N+1) / (N+1)!, stays below 2.1e-20 (1/16: N = 10, 1.4e-21;
# 1/4: N = 14, 7e-22; 1/2: N = 16, 2.1e-20; 1: N = 22, 3.9e-23)
_CH_ORDERS = ((0.0625, 10), (0.25, 14), (0.5, 16), (1.0, 22))
_CH_ORDER = _CH_ORDERS[-1][1]


def _s(name: str) -> str:
    return f"F[{_CH_S + _CH_ROWS[name] * W} + l]"


def _f(row: int, c: int) -> str:
    """Component ``c`` of the lane's matrix in scratch row ``row`` of the flat ``F``."""
    return f"F[{row * LB + c * W} + l]"


def _ch_funcs() -> str:
    """Lane loops of the Cayley-Hamilton exponential (:func:`expm_mul` kernel).

    For a 3x3 ``A`` with invariants ``e1 = Tr A``, ``e2 = (Tr(A)^2 - Tr(A^2)) / 2``,
    ``e3 = det A``: ``A^3 = e1 A^2 - e2 A + e3``, so ``A^n / n! = a_n + b_n A + c_n A^2`` with
    ``(a, b, c)_{n+1} = (c e3, a - c e2, b + c e1)_n / (n + 1)`` from ``(1, 0, 0)_0``; the
    exponential is ``exp(A) = f0 + f1 A + f2 A^2`` with ``f = sum_n (a, b, c)_n``.

    For ``A`` in su(3) (traceless anti-Hermitian, the MD drift and the flow's generators;
    the backend interface's contract) ``e1 = 0``, ``e2 = -Tr(A^2) / 2`` is real and ``e3 =
    i eta`` imaginary, and ``A^n`` is Hermitian for even ``n`` (``a``, ``c`` real, ``b``
    imaginary) and anti-Hermitian for odd ``n`` (``a``, ``c`` imaginary, ``b`` real): with
    one real per coefficient, ``(alpha, beta, gamma)_{n+1} = (+- gamma eta, alpha - gamma e2,
    beta)_n / (n + 1)`` (``+`` into odd ``n + 1``, ``-`` into even), about 8 real operations
    per term instead of 34 complex ones. (The trace and the non-anti-Hermitian part of an
    input, rounding-sized there, are not seen by the series; ``ch_build`` uses ``A`` itself.)

    All three read and write one flat scratch array ``F`` (the kernel's ``Wk`` rows, at
    constant offsets): ``ch_init`` reads ``A`` (row 0) and ``A^2`` (row 1) and stores ``e2``,
    ``eta`` (row 4, ``_CH_ROWS``); ``ch_series<N>`` sums the terms to order ``N`` (unrolled, in
    registers; ``_CH_ORDERS``); ``ch_build`` writes ``exp(A)`` to row 2. (With a 2D scratch
    numba computes each row's offset from the run-time shape and LLVM left ``ch_init`` and
    ``ch_build`` scalar: 55 ns per link for the whole ``exp(X) V``.)"""
    ld = [
        f"{m}{i}{j}{'ri'[r]} = {_f(row, _c(i, j, r))}"
        for m, row in (("a", 0),)
        for i in range(NC)
        for j in range(NC)
        for r in range(2)
    ]
    init = list(ld)
    init += [f"tr = {_f(1, _c(0, 0, 0))} + {_f(1, _c(1, 1, 0))} + {_f(1, _c(2, 2, 0))}"]
    init += ["e2 = -0.5 * tr"]  # e1 = Tr A = 0, Tr A^2 real
    init += _cmul("m0", "a11", "a22") + _cmul("m0", "a12", "a21", "-=")
    init += _cmul("m1", "a10", "a22") + _cmul("m1", "a12", "a20", "-=")
    init += _cmul("m2", "a10", "a21") + _cmul("m2", "a11", "a20", "-=")
    init += ["eta = a00r * m0i + a00i * m0r - a01r * m1i - a01i * m1r + a02r * m2i + a02i * m2r"]
    init += [f"{_s('e2')} = e2", f"{_s('eta')} = eta"]
    series = [f"e2 = {_s('e2')}", f"eta = {_s('eta')}"]
    series += ["al = 1.0", "be = 0.0", "ga = 0.0"]
    series += ["f0r = 1.0", "f0i = 0.0", "f1r = 0.0", "f1i = 0.0", "f2r = 0.0", "f2i = 0.0"]

    def terms(order: int) -> list[str]:
        out = list(series)
        for n in range(1, order + 1):
            sign = "" if n % 2 else "-"  # c e3 = +- gamma eta going to odd / even n
            out += [
                f"nal = {sign}ga * eta * {1.0 / n!r}",
                f"be, ga = (al - ga * e2) * {1.0 / n!r}, be * {1.0 / n!r}",
                "al = nal",
            ]
            if n % 2:  # a = i alpha, b = beta, c = i gamma
                out += ["f0i = f0i + al", "f1r = f1r + be", "f2i = f2i + ga"]
            else:  # a = alpha, b = i beta, c = gamma
                out += ["f0r = f0r + al", "f1i = f1i + be", "f2r = f2r + ga"]
        return out + [f"{_s(f + r)} = {f}{r}" for f in ("f0", "f1", "f2") for r in "ri"]

    norm = [_f(3, c) for c in range(18)]
    build = list(ld)
    build += [f"{f}{r} = {_s(f + r)}" for f in ("f0", "f1", "f2") for r in "ri"]
    for i in range(NC):
        for j in range(NC):
            build += [f"q{r} = {_f(1, _c(i, j, k))}" for k, r in enumerate("ri")]
            build += _cmul("w", "f1", f"a{i}{j}") + _cmul("w", "f2", "q", "+=")
            if i == j:
                build += ["wr = wr + f0r", "wi = wi + f0i"]
            build += [f"{_f(2, _c(i, j, k))} = w{r}" for k, r in enumerate("ri")]
    return "".join(
        _NJIT + f"def {name}({args}):\n" + f"    for l in range({W}):\n" + _ind(body, 8)
        for name, args, body in (
            ("ch_init", "F", init),
            *((f"ch_series{n}", "F", terms(n)) for _, n in _CH_ORDERS),
            ("ch_build", "F", build),
            ("ch_norm2", "F", [f"{_s('n2')} = " + " + ".join(f"{x} * {x}" for x in norm)]),
        )
    )


def _ch_dispatch() -> str:
    """The branch of ``expm_mul`` that picks the series order for the block's scaled norm
    ``nrm`` (``_CH_ORDERS``)."""
    lines = []
    for k, (bound, order) in enumerate(_CH_ORDERS):
        if k == len(_CH_ORDERS) - 1:
            lines.append("else:")
        else:
            lines.append(f"{'if' if k == 0 else 'elif'} nrm <= {bound!r}:")
        lines.append(f"    ch_series{order}(F)")
    return _ind(lines, 12).rstrip("\n")


def _perm_func() -> str:
    """``Q[dst, c W + l] = Q[src, c W + (l ^ m)]``, one pass for even ``m`` (the 3 of 4
    single-face masks ``2^d``, d > 0), two for odd ``m``. Bit 0 (swap neighbouring lanes) is
    a stride-2 interleaved loop (vectorised with shuffles) into ``dst``; the even part of
    ``m`` permutes blocks of >= 2 lanes, from ``src`` (or in place in ``dst`` after the
    swap), dispatched to literal masks with each component's 16 loads first and its 16
    stores after (LLVM's SLP vectoriser makes them vector moves)."""
    lines = [
        "\n@njit(cache=True)",
        "def perm_copy(Q, src, dst, m):",
        "    s = src",
        "    if m & 1:",
        f"        for q in range({LB // 2}):",
        "            a = Q[src, 2 * q]",
        "            b = Q[src, 2 * q + 1]",
        "            Q[dst, 2 * q] = b",
        "            Q[dst, 2 * q + 1] = a",
        "        s = dst",
        "    e = m & ~1",
    ]
    for m in range(2, W, 2):
        lines.append(f"    {'if' if m == 2 else 'elif'} e == {m}:")
        lines.append("        for c in range(18):")
        lines.append(f"            k = c * {W}")
        lines += [f"            x{l} = Q[s, k + {l ^ m}]" for l in range(W)]
        lines += [f"            Q[dst, k + {l}] = x{l}" for l in range(W)]
    return "\n".join(lines) + "\n"


def _ghost_fill_func() -> str:
    """``ghost_fill(g, own, remote, m, own_if_set)``: the ghost plane of a split axis
    (:class:`GhostLayout`), ``g[a, o, c W + l] = own[a, o, c W + (l ^ m)]`` for the lanes
    whose bit ``m`` is set if ``own_if_set``, clear otherwise (``own``: the owned outer plane
    next to the ghost one), and ``g[a, o, c W + l] = remote[a, o, c W/2 + half_m(l ^ m)]`` for
    the others: ``remote`` holds only the half of the neighbour rank's lanes that are used
    (:func:`half_lanes`, those whose bit ``m`` differs from ``own_if_set``; ``half_m`` drops
    bit ``m`` from a lane index). ``g``, ``own``: ``(B Nd, sites, 18 W)``, ``remote``
    ``(B Nd, sites, 9 W)``, strided in their first dimension. One literal body per
    ``(m, own_if_set)``: each component's 16 loads (the lane permutation and the choice of
    source fixed) before its 16 stores, which LLVM turns into vector moves and shuffles (a
    per-lane branch on the source left the loop scalar)."""
    lines = ["", "@njit(cache=True)", "def ghost_fill(g, own, remote, m, own_if_set):"]
    first = True
    for d in range(ND):
        m = 1 << d
        for own_if_set in (False, True):
            flag = "own_if_set" if own_if_set else "not own_if_set"
            lines.append(f"    {'if' if first else 'elif'} m == {m} and {flag}:")
            first = False
            lines += [
                "        for a in range(g.shape[0]):",
                "            for o in range(g.shape[1]):",
                "                for c in range(18):",
                f"                    k = c * {W}",
                f"                    kh = c * {W // 2}",
            ]
            for l in range(W):
                j = l ^ m
                if ((l & m) != 0) == own_if_set:
                    lines.append(f"                    x{l} = own[a, o, k + {j}]")
                else:
                    jh = (j & (m - 1)) | ((j >> (d + 1)) << d)
                    lines.append(f"                    x{l} = remote[a, o, kh + {jh}]")
            lines += [f"                    g[a, o, k + {l}] = x{l}" for l in range(W)]
    lines += ["    else:", "        raise ValueError('ghost_fill: m must be a single lane bit')"]
    return "\n".join(lines) + "\n"


def half_lanes(a: np.ndarray, d: int, bit: int) -> np.ndarray:
    """The lanes of link blocks ``a`` (``(..., 18 W)``) whose bit ``d`` is ``bit``, as a
    ``(..., 18, W / 2^(d+1), 2^d)`` view (lane ``l`` at ``half_d(l) = (l >> (d + 1)) 2^d +
    (l mod 2^d)``): what a face exchange of split axis ``d`` sends (:meth:`PackedMD._post`),
    half an outer plane, and what ``ghost_fill`` reads as ``remote``."""
    v = a.reshape(*a.shape[:-1], 18, W >> (d + 1), 2, 1 << d)
    return v[..., bit, :]


_KERNELS = """

@njit(inline='always')
def prefetch_site(Q, nbr, tot, nr, o0, vs, q, back):
    \"\"\"Prefetch into L2 (:mod:`kernels.backends.prefetch`) the link blocks that the sweep
    over (chain, outer site) touches first at site ``q + {PF_AHEAD}``: U_d(x + e_0) for d > 0
    and U_0(x + e_1) (every block is first read as one of these), with ``back`` also the four
    links at x - e_0 (the stencils that reach back; their last use was a sweep plane ago).\"\"\"
    qn = q + {PF_AHEAD}
    if qn < tot:
        base = (qn // nr) * {ND} * vs
        on = o0 + qn % nr
        op = nbr[on, 0, 0]
        for d in range(1, {ND}):
            prefetch_row(Q, base + d * vs + op)
        prefetch_row(Q, base + nbr[on, 1, 0])
        if back:
            om = nbr[on, 0, 1]
            for d in range({ND}):
                prefetch_row(Q, base + d * vs + om)


@njit(inline='always')
def link(Q, g, slot, blk, m):
    \"\"\"Block index in Q of link block ``blk`` with lanes permuted by ``m``: ``blk`` itself
    if ``m == 0``, else a copy with permuted lanes in slot ``slot`` of this chunk's scratch
    area (blocks ``g ..``, the tail of Q).\"\"\"
    if m == 0:
        return blk
    perm_copy(Q, blk, g + slot, m)
    return g + slot


@njit(inline='always')
def lower_staple_acc(Q, nbr, msk, g, y, my, a, ba, bb, Wk, row):
    \"\"\"Wk[row] += (U_a(y) U_b(y + e_a))^+ U_b(y), the lower staple of the link ``a`` at
    ``x = y + e_b`` in the (a, b) plane (``y``, ``my``: outer site and lane mask of x - e_b;
    ``ba``, ``bb``: the first block of directions a and b). Scratch slots 2-4, Wk[0].\"\"\"
    x3 = link(Q, g, 2, ba + y, my)
    x4 = link(Q, g, 3, bb + nbr[y, a, 0], my ^ msk[y, a, 0])
    mm_nn(Q, x3, Q, x4, Wk, 0)
    x5 = link(Q, g, 4, bb + y, my)
    mm_dn_acc(Wk, 0, Q, x5, Wk, row)


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def su3_ta_staples(Q, nbr, msk, nb, vo, vs, o0, o1, coef, ta, keep, out, nch):
    \"\"\"ta: out = coef TA(U_mu A_mu) (+ keep out, if keep != 0); else out = coef A_mu.
    Q: (blocks, LB), the links ((b Nd + mu) vs + o) and then ``nch`` scratch areas of 6
    blocks; out: (B Nd vo, LB). The sweep covers the outer sites o0 <= o < o1 (of vo; a
    part while the faces travel, :class:`PackedMD`); a layout with ghost sites
    (:class:`GhostLayout`) stores them at vo <= o < vs (``nbr`` reaches them).
    Per site, plane by plane (mu < nu): P = U_nu(x+mu) U_mu(x+nu)^+ gives both upper
    staples, A_mu += P U_nu(x)^+ and A_nu += P^+ U_mu(x)^+; the lower ones are
    A_mu += (U_mu(x-nu) U_nu(x-nu+mu))^+ U_nu(x-nu) and
    A_nu += (U_nu(x-mu) U_mu(x-mu+nu))^+ U_mu(x-mu): 7 products per plane, 46 per site
    with the 4 final U_mu A_mu (52 when each link's staples are built on their own).\"\"\"
    nr = o1 - o0
    tot = nb * nr
    for ch in prange(nch):
        g = nb * {ND} * vs + ch * 6
        Wk = np.empty((2 + {ND}, {LB}))  # T, M, A_0 .. A_3
        for q in range(ch * tot // nch, (ch + 1) * tot // nch):
            b = q // nr
            o = o0 + q % nr
            prefetch_site(Q, nbr, tot, nr, o0, vs, q, True)
            for k in range({ND} * {LB}):
                Wk[2 + k // {LB}, k % {LB}] = 0.0
            for mu in range({ND}):
                bmu = (b * {ND} + mu) * vs
                o_pmu = nbr[o, mu, 0]
                m_pmu = msk[o, mu, 0]
                o_mmu = nbr[o, mu, 1]
                m_mmu = msk[o, mu, 1]
                for nu in range(mu + 1, {ND}):
                    bnu = (b * {ND} + nu) * vs
                    # upper: P = U_nu(x+mu) U_mu(x+nu)^+
                    x1 = link(Q, g, 0, bnu + o_pmu, m_pmu)
                    x2 = link(Q, g, 1, bmu + nbr[o, nu, 0], msk[o, nu, 0])
                    mm_nd(Q, x1, Q, x2, Wk, 0)
                    mm_nd_acc(Wk, 0, Q, bnu + o, Wk, 2 + mu)
                    mm_dd_acc(Wk, 0, Q, bmu + o, Wk, 2 + nu)
                    # lower, link mu: (U_mu(x-nu) U_nu(x-nu+mu))^+ U_nu(x-nu)
                    y, my = nbr[o, nu, 1], msk[o, nu, 1]
                    lower_staple_acc(Q, nbr, msk, g, y, my, mu, bmu, bnu, Wk, 2 + mu)
                    # lower, link nu: (U_nu(x-mu) U_mu(x-mu+nu))^+ U_mu(x-mu)
                    lower_staple_acc(Q, nbr, msk, g, o_mmu, m_mmu, nu, bnu, bmu, Wk, 2 + nu)
            for mu in range({ND}):
                bmu = (b * {ND} + mu) * vs
                r = (b * {ND} + mu) * vo + o  # out: owned sites only
                if ta:
                    mm_nn(Q, bmu + o, Wk, 2 + mu, Wk, 1)
                    if keep == 0.0:
                        ta_out(Wk, 1, coef, out, r)
                    else:
                        ta_out_keep(Wk, 1, coef, keep, out, r)
                else:
                    for k in range({LB}):
                        out[r, k] = coef * Wk[2 + mu, k]


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def su3_plaquette_density(Q, nbr, msk, nb, vo, vs, out, nch):
    \"\"\"out[b vo + o, l] = sum_{{mu<nu}} (3 - Re Tr U_{{mu nu}}(x)).\"\"\"
    tot = nb * vo
    for ch in prange(nch):
        g = nb * {ND} * vs + ch * 6
        Wk = np.empty((2, {LB}))
        for q in range(ch * tot // nch, (ch + 1) * tot // nch):
            b = q // vo
            o = q % vo
            prefetch_site(Q, nbr, tot, vo, 0, vs, q, False)
            for l in range({W}):
                out[q, l] = 0.0
            for mu in range({ND}):
                bmu = (b * {ND} + mu) * vs
                for nu in range(mu + 1, {ND}):
                    bnu = (b * {ND} + nu) * vs
                    x1 = link(Q, g, 0, bnu + nbr[o, mu, 0], msk[o, mu, 0])
                    mm_nn(Q, bmu + o, Q, x1, Wk, 0)
                    x2 = link(Q, g, 1, bmu + nbr[o, nu, 0], msk[o, nu, 0])
                    mm_nn(Q, bnu + o, Q, x2, Wk, 1)
                    retr_acc(Wk, 0, Wk, 1, out, q)


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def su3_clover_density(Q, nbr, msk, nb, vo, vs, charge, out, nch):
    \"\"\"Clover field strength G_{{mu nu}}(x) = TA(L1 + L2 + L3 + L4) / 4 from the four
    plaquettes (leaves) of the (mu, nu) plane that start and end at x, all with the
    orientation of L1 = U_mu(x) U_nu(x+mu) U_mu(x+nu)^+ U_nu(x)^+; then out[b vo + o, l] =
    sum_{{mu<nu}} |G_{{mu nu}}(x)|_F^2 or, with ``charge``,
    Re tr(G01 G23 - G02 G13 + G03 G12).\"\"\"
    tot = nb * vo
    for ch in prange(nch):
        g = nb * {ND} * vs + ch * 6
        Wk = np.empty((9, {LB}))  # T, T', clover sum, G of the 6 planes
        for q in range(ch * tot // nch, (ch + 1) * tot // nch):
            b = q // vo
            o = q % vo
            prefetch_site(Q, nbr, tot, vo, 0, vs, q, True)
            for l in range({W}):
                out[q, l] = 0.0
            for mu in range({ND}):
                bmu = (b * {ND} + mu) * vs
                o_pmu, m_pmu = nbr[o, mu, 0], msk[o, mu, 0]
                o_mmu, m_mmu = nbr[o, mu, 1], msk[o, mu, 1]
                for nu in range(mu + 1, {ND}):
                    bnu = (b * {ND} + nu) * vs
                    o_pnu, m_pnu = nbr[o, nu, 0], msk[o, nu, 0]
                    o_mnu, m_mnu = nbr[o, nu, 1], msk[o, nu, 1]
                    # L1 = U_mu(x) U_nu(x+mu) (U_nu(x) U_mu(x+nu))^+
                    x1 = link(Q, g, 0, bnu + o_pmu, m_pmu)
                    mm_nn(Q, bmu + o, Q, x1, Wk, 0)
                    x2 = link(Q, g, 1, bmu + o_pnu, m_pnu)
                    mm_nn(Q, bnu + o, Q, x2, Wk, 1)
                    mm_nd(Wk, 0, Wk, 1, Wk, 2)
                    # L2 = U_nu(x) (U_nu(x-mu) U_mu(x-mu+nu))^+ U_mu(x-mu)
                    o_a = nbr[o_mmu, nu, 0]
                    m_a = m_mmu ^ msk[o_mmu, nu, 0]
                    x1 = link(Q, g, 0, bnu + o_mmu, m_mmu)
                    x2 = link(Q, g, 1, bmu + o_a, m_a)
                    mm_nn(Q, x1, Q, x2, Wk, 0)
                    mm_nd(Q, bnu + o, Wk, 0, Wk, 1)
                    x3 = link(Q, g, 2, bmu + o_mmu, m_mmu)
                    mm_nn_acc(Wk, 1, Q, x3, Wk, 2)
                    # L3 = (U_nu(x-mu-nu) U_mu(x-mu))^+ U_mu(x-mu-nu) U_nu(x-nu)
                    o_b = nbr[o_mmu, nu, 1]
                    m_b = m_mmu ^ msk[o_mmu, nu, 1]
                    x1 = link(Q, g, 0, bnu + o_b, m_b)
                    mm_nn(Q, x1, Q, x3, Wk, 0)
                    x4 = link(Q, g, 1, bmu + o_b, m_b)
                    x5 = link(Q, g, 3, bnu + o_mnu, m_mnu)
                    mm_nn(Q, x4, Q, x5, Wk, 1)
                    mm_dn_acc(Wk, 0, Wk, 1, Wk, 2)
                    # L4 = U_nu(x-nu)^+ U_mu(x-nu) U_nu(x-nu+mu) U_mu(x)^+
                    o_c = nbr[o_mnu, mu, 0]
                    m_c = m_mnu ^ msk[o_mnu, mu, 0]
                    x1 = link(Q, g, 0, bmu + o_mnu, m_mnu)
                    x2 = link(Q, g, 1, bnu + o_c, m_c)
                    mm_nn(Q, x1, Q, x2, Wk, 0)
                    mm_dn(Q, x5, Wk, 0, Wk, 1)
                    mm_nd_acc(Wk, 1, Q, bmu + o, Wk, 2)
                    gp = 3 + (mu * (2 * {ND} - mu - 1)) // 2 + nu - mu - 1  # plane index
                    ta_out(Wk, 2, 0.25, Wk, gp)
                    if not charge:
                        sq_acc(Wk, gp, out, q)
            if charge:  # planes 01 02 03 12 13 23 at rows 3 .. 8
                retr_ab_acc(Wk, 3, Wk, 8, 1.0, out, q)
                retr_ab_acc(Wk, 4, Wk, 7, -1.0, out, q)
                retr_ab_acc(Wk, 5, Wk, 6, 1.0, out, q)


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def expm_mul(Z, cz, V, out, nblk, vo, vs, nch):
    \"\"\"out[q] = exp(X[q]) V[q] for the first ``nblk`` blocks, every lane (X in su(3)), with
    X = sum_i cz[i] Z[i] (left to right; the RK3 stages' combinations of generators, or eps P
    for the MD drift): A = X / 2^s with max over lanes |A|_F = n <= 1, exp(A) = f0 + f1 A +
    f2 A^2 by Cayley-Hamilton (ch_init, ch_series<N>, ch_build) with the Taylor terms to an
    order N chosen by n (_CH_ORDERS: |A^n / n!|_F <= n^n / n!, the first omitted term is
    below 2.1e-20 in every lane; N = {CH_ORDER} for n > 1/2), then s squarings and one
    product with V. Block q of the sweep is row q of Z and row (q // vo) vs + q % vo of V
    and out (vo = vs: row q; links in a ghost layout, exponents without ghost rows).\"\"\"
    nz = cz.shape[0]
    for ch in prange(nch):
        Wk = np.empty((5, {LB}))  # A, A^2, exp(A), X before the scaling, scalars per lane
        F = Wk.reshape(5 * {LB})  # flat view (the Cayley-Hamilton lane loops)
        for qq in range(ch * nblk // nch, (ch + 1) * nblk // nch):
            q = (qq // vo) * vs + qq % vo
            if qq + {PF_AHEAD} < nblk:
                for i in range(nz):
                    prefetch_row(Z[i], qq + {PF_AHEAD})
                prefetch_row(V, ((qq + {PF_AHEAD}) // vo) * vs + (qq + {PF_AHEAD}) % vo)
            for k in range({LB}):
                Wk[3, k] = cz[0] * Z[0, qq, k]
            for i in range(1, nz):
                for k in range({LB}):
                    Wk[3, k] = Wk[3, k] + cz[i] * Z[i, qq, k]
            ch_norm2(F)
            nrm = 0.0
            for l in range({W}):
                nrm = max(nrm, F[{CH_N2} + l])
            nrm = np.sqrt(nrm)
            s = 0
            if nrm <= 1e300:  # not for an infinite exponent (halving would never end): it stays
                while nrm > 1.0:  # unscaled and its non-finite values reach the result
                    nrm *= 0.5
                    s += 1
            sc = 0.5**s
            for k in range({LB}):
                Wk[0, k] = sc * Wk[3, k]
            mm_nn(Wk, 0, Wk, 0, Wk, 1)
            ch_init(F)
{CH_DISPATCH}
            ch_build(F)
            for _ in range(s):
                mm_nn(Wk, 2, Wk, 2, Wk, 3)
                for k in range({LB}):
                    Wk[2, k] = Wk[3, k]
            mm_nn(Wk, 2, V, q, out, q)


@threaded_kernel(cache=True)
def pack_links(src, site, dst):
    \"\"\"dst[a vo + o, c W + l] = src[a, site[o, l], i, j, r] (a = b Nd + mu, c = 6 i + 2 j
    + r; src may be strided, e.g. links with transposed 3x3 storage); 0.0 where
    ``site[o, l] < 0`` (a ghost site, :class:`GhostLayout`).\"\"\"
    na = src.shape[0]
    vo = site.shape[0]
    for q in prange(na * vo):
        a = q // vo
        o = q % vo
        for l in range({W}):
            x = site[o, l]
            for i in range(3):
                for j in range(3):
                    for r in range(2):
                        v = src[a, x, i, j, r] if x >= 0 else 0.0
                        dst[q, (6 * i + 2 * j + r) * {W} + l] = v


@threaded_kernel(cache=True)
def unpack_links(src, site, dst):
    \"\"\"dst[a, site[o, l], c] = src[a vo + o, c W + l] (the inverse of pack_links; ghost sites,
    ``site[o, l] < 0``, are skipped).\"\"\"
    na = dst.shape[0]
    vo = site.shape[0]
    for q in prange(na * vo):
        a = q // vo
        o = q % vo
        for l in range({W}):
            x = site[o, l]
            if x >= 0:
                for c in range(18):
                    dst[a, x, c] = src[q, c * {W} + l]
"""


def _source() -> str:
    return (
        fused._HEADER
        + _mm_func("mm_nn", False, False, False)
        + _mm_func("mm_nd_acc", False, True, True)
        + _mm_func("mm_dn_acc", True, False, True)
        + _mm_func("mm_nd", False, True, False)
        + _mm_func("mm_dn", True, False, False)
        + _mm_func("mm_nn_acc", False, False, True)
        + _mm_func("mm_dd_acc", True, True, True)
        + _sq_func()
        + _retr_ab_func()
        + _ta_func()
        + _retr_func()
        + _perm_func()
        + _ghost_fill_func()
        + _ch_funcs()
        + prefetch.source()
        + _KERNELS.format(
            LB=LB,
            W=W,
            ND=ND,
            CH_ORDER=_CH_ORDER,
            CH_DISPATCH=_ch_dispatch(),
            CH_N2=_CH_S + _CH_ROWS["n2"] * W,
            PF_AHEAD=PF_AHEAD,
        )
    )


_K = None


def kernels():
    """The compiled vnode kernel module (generated, cached on disk, imported on first use)."""
    global _K
    if _K is None:
        _K = fused._load_module(_source(), "vnode")
    return _K


# --------------------------------------------------------------------------- layout
def fits(local: tuple[int, ...], grid_dims: tuple[int, ...]) -> bool:
    """True when the vnode layout applies: 4 axes, all local extents even, no split axis."""
    return len(local) == ND and all(n % 2 == 0 for n in local) and all(g == 1 for g in grid_dims)


_TABLES: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}


def tables(local: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour tables ``nbr[o, d, s]`` (outer site of ``x + e_d`` for ``s = 0``, ``x - e_d``
    for ``s = 1``) and lane masks ``msk[o, d, s]`` (``2^d`` across a sub-block face, else 0)."""
    t = _TABLES.get(local)
    if t is None:
        h = np.array(local) // 2
        vo = int(np.prod(h))
        oc = np.stack(np.unravel_index(np.arange(vo), tuple(h)), 1)  # (vo, 4)
        nbr = np.empty((vo, ND, 2), np.int64)
        msk = np.empty((vo, ND, 2), np.int64)
        for d in range(ND):
            for s, step in enumerate((1, -1)):
                c = oc.copy()
                c[:, d] += step
                cross = (c[:, d] < 0) | (c[:, d] >= h[d])
                c[:, d] %= h[d]
                nbr[:, d, s] = np.ravel_multi_index(tuple(c.T), tuple(h))
                msk[:, d, s] = np.where(cross, 1 << d, 0)
        t = _TABLES[local] = (nbr, msk)
    return t


def site_table(local: tuple[int, ...]) -> np.ndarray:
    """``site[o, l]``: the flat (row-major) index in ``local`` of outer site ``o``, lane ``l``."""
    t = _SITES.get(local)
    if t is None:
        h = np.array(local) // 2
        oc = np.stack(np.unravel_index(np.arange(int(np.prod(h))), tuple(h)), 1)  # (vo, 4)
        bits = (np.arange(W)[:, None] >> np.arange(ND)[None, :]) & 1  # (W, 4)
        x = oc[:, None, :] + bits[None, :, :] * h  # (vo, W, 4)
        t = _SITES[local] = np.ravel_multi_index(tuple(np.moveaxis(x, -1, 0)), local)
    return t


_SITES: dict[tuple[int, ...], np.ndarray] = {}


def nchunks(tot: int) -> int:
    """Number of work chunks (and scratch areas) for ``tot`` (chain, outer site) pairs."""
    return max(1, min(tot, max(16, 4 * numba.config.NUMBA_NUM_THREADS)))


def pack(
    u: torch.Tensor,
    work: bool = False,
    sites: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``(B, Nd, *local, 3, 3)`` complex128 -> vnode blocks ``(B Nd Vo + scratch, 18 W)``
    float64 (module doc), with the kernels' scratch areas (:func:`nchunks` x 6 blocks) as
    its tail; ``work``: into a reused workspace (valid until the next packing); ``sites``:
    the site table of another layout (``GhostLayout.site``: ``-1`` rows, ghost sites, are
    zero); ``out``: into that array (at least ``B Nd Vo`` rows)."""
    b, nd = u.shape[:2]
    local = tuple(u.shape[2:-2])
    site = site_table(local) if sites is None else sites
    vo = site.shape[0]
    r = torch.view_as_real(u.detach().resolve_conj())
    try:  # strided links are read in place (a copy of 38 MB costs 19 ms at 16^4)
        src = r.view(b * nd, -1, 3, 3, 2)
    except RuntimeError:
        src = r.reshape(b * nd, -1, 3, 3, 2)
    if out is None:
        shape = (b * nd * vo + 6 * nchunks(b * vo), LB)
        out = fused._workspace(shape) if work else np.empty(shape)
    fused._threads()
    kernels().pack_links(src.numpy(), site, out)
    return out


def unpack(
    q: np.ndarray, b: int, nd: int, local: tuple[int, ...], sites: np.ndarray | None = None
) -> torch.Tensor:
    """Flat vnode float64 array -> ``(B, Nd, *local, 3, 3)`` complex128 (a new tensor); with
    ``sites`` (:func:`pack`) the owned sites of that layout."""
    out = np.empty((b * nd, int(np.prod(local)), 18))
    fused._threads()
    kernels().unpack_links(q, site_table(local) if sites is None else sites, out)
    return torch.view_as_complex(torch.from_numpy(out).reshape(b, nd, *local, 3, 3, 2))


def unpack_density(d: np.ndarray, b: int, local: tuple[int, ...]) -> torch.Tensor:
    """Per-site vnode ``(B, Vo, W)`` -> ``(B, *local)``."""
    out = np.empty((b, int(np.prod(local))))
    out[:, site_table(local).reshape(-1)] = d.reshape(b, -1)
    return torch.from_numpy(out).reshape(b, *local)


def _check(a: np.ndarray, rows: int, what: str) -> None:
    """The kernels index without bounds checks: refuse an array of the wrong layout."""
    if a.shape != (rows, LB) or a.dtype != np.float64 or not a.flags.c_contiguous:
        raise ValueError(
            f"vnode {what}: need a C-contiguous float64 array of shape {(rows, LB)}, got "
            f"{a.dtype} {a.shape}"
        )


def ta_staples_packed(
    q: np.ndarray,
    b: int,
    local: tuple[int, ...],
    coef: float,
    ta: bool,
    out: np.ndarray,
    keep: float = 0.0,
) -> None:
    """Layout-resident kernel on packed links ``q`` (:func:`pack`, scratch tail included):
    ``out`` ``(B Nd Vo, 18 W)`` = ``coef TA(U A)`` (``ta``; ``+ keep out`` if ``keep`` is not
    0: the previous contents are read only then) or ``coef A``."""
    if keep and not ta:
        raise ValueError("vnode staples: keep needs ta=True")
    nbr, msk = tables(local)
    vo = nbr.shape[0]
    _check(q, b * ND * vo + 6 * nchunks(b * vo), "links")
    _check(out, b * ND * vo, "output")
    fused._threads()
    kernels().su3_ta_staples(
        q, nbr, msk, b, vo, vo, 0, vo, float(coef), ta, float(keep), out, nchunks(b * vo)
    )


def plaquette_density_packed(q: np.ndarray, b: int, local: tuple[int, ...]) -> np.ndarray:
    """Layout-resident plaquette action density, vnode ``(B Vo, W)``."""
    nbr, msk = tables(local)
    vo = nbr.shape[0]
    _check(q, b * ND * vo + 6 * nchunks(b * vo), "links")
    out = np.empty((b * vo, W))
    fused._threads()
    kernels().su3_plaquette_density(q, nbr, msk, b, vo, vo, out, nchunks(b * vo))
    return out


def clover_density_packed(
    q: np.ndarray, b: int, local: tuple[int, ...], charge: bool = False
) -> np.ndarray:
    """Layout-resident clover energy density ``sum_{mu<nu} |G_{mu nu}(x)|_F^2`` or (``charge``)
    ``Re tr(G01 G23 - G02 G13 + G03 G12)``, vnode ``(B Vo, W)`` (kernel
    ``su3_clover_density``)."""
    nbr, msk = tables(local)
    vo = nbr.shape[0]
    _check(q, b * ND * vo + 6 * nchunks(b * vo), "links")
    out = np.empty((b * vo, W))
    fused._threads()
    kernels().su3_clover_density(q, nbr, msk, b, vo, vo, charge, out, nchunks(b * vo))
    return out


def packed_shape(b: int, local: tuple[int, ...]) -> tuple[int, int]:
    """Shape of a packed field with the scratch tail (the layout of :func:`pack`)."""
    vo = int(np.prod(local)) // W
    return (b * ND * vo + 6 * nchunks(b * vo), LB)


def empty_packed(b: int, local: tuple[int, ...]) -> np.ndarray:
    """An uninitialised packed field with the scratch tail (the layout of :func:`pack`)."""
    return np.empty(packed_shape(b, local))


def expm_mul_packed(
    x: np.ndarray,
    v: np.ndarray,
    b: int,
    local: tuple[int, ...],
    coefs: tuple[float, ...] = (1.0,),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``exp(X) V`` per link and lane (:func:`expm_mul`) for packed links ``V`` and ``X =
    sum_i coefs[i] x[i]`` (``x``: ``(k, B Nd Vo, 18 W)`` packed, traceless anti-Hermitian, or
    one ``(B Nd Vo, 18 W)`` array with ``k = 1``); the combination is formed per block inside
    the kernel (no temporaries). Returns ``out`` (a packed field with its scratch tail, not
    ``V`` or an ``x``), or a new packed field."""
    n = b * ND * int(np.prod(local)) // W
    z = x[None] if x.ndim == 2 else x
    if z.shape[0] != len(coefs) or not coefs:
        raise ValueError(f"vnode exp(X) V: {z.shape[0]} exponents for {len(coefs)} coefficients")
    for a in z:
        _check(a, n, "exponent")
    if v.shape[0] < n:
        _check(v, n, "links")
    if out is None:
        w = empty_packed(b, local)
    else:
        w = out
        _check(w, packed_shape(b, local)[0], "output")
        if np.may_share_memory(w, v) or any(np.may_share_memory(w, a) for a in z):
            raise ValueError("vnode exp(X) V: the output must not overlap V or X")
    fused._threads()
    kernels().expm_mul(z, np.array(coefs, np.float64), v, w, n, n, n, nchunks(n))
    return w


def expm_mul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``exp(X) W`` per link in the complex layout ``(B, Nd, *local, 3, 3)`` (pack both, the
    per-lane kernel :func:`expm_mul`, unpack)."""
    b, nd = w.shape[:2]
    local = tuple(w.shape[2:-2])
    n = b * nd * int(np.prod(local)) // W
    return unpack(expm_mul_packed(pack(x)[:n], pack(w, work=True), b, local), b, nd, local)


def _expm_fits(x: torch.Tensor, w: torch.Tensor) -> bool:
    """``exp(X) W`` is site-local: any 4D local lattice with even extents, split or not."""
    return (
        x.shape == w.shape
        and w.ndim == ND + 4
        and all(t.device.type == "cpu" and t.dtype == torch.complex128 for t in (x, w))
        and not (fused._graph(x) or fused._graph(w))
        and fits(tuple(w.shape[2:-2]), (1,) * ND)
    )


_STAGES: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _stage_buffers(b: int, local: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two packed fields (RK3 stages) and the generator combination ``X`` ``(B Nd Vo, 18 W)``,
    kept between steps: fresh arrays cost a page fault per 4 kB page on every step (glibc
    hands such blocks back to the system on free): 10 against 6.4 ms per step at 8^4."""
    key = (b, local)
    buf = _STAGES.get(key)
    if buf is None:
        _STAGES.clear()
        shape = packed_shape(b, local)
        n = b * ND * int(np.prod(local)) // W
        buf = _STAGES[key] = (np.empty(shape), np.empty(shape), np.empty((n, LB)))
    return buf


#: Luscher's RK3 in low-storage form, per stage ``(a, keep, c)``: ``X = a eps Z(W) + keep X``
#: (``Z = -TA(W A)``), then ``W <- exp(c X) W`` (:func:`flow_step_rk3_packed`, and
#: :class:`PackedFlow` on a split grid)
RK3_STAGES = ((1.0, 0.0, 0.25), (8.0 / 9.0, -17.0 / 36.0, 1.0), (0.75, -1.0, 1.0))


def flow_step_rk3_packed(
    q: np.ndarray, b: int, local: tuple[int, ...], eps: float, spare: np.ndarray | None = None
) -> np.ndarray:
    """Luscher's RK3 Wilson-flow step (:func:`kernels.backends.eager.flow_step_rk3`) on packed
    links ``q``, every stage in the vnode layout, in low-storage form: one array ``X``
    carries the generator combinations, each formed by the staple kernel as it writes the new
    generator (``Z_i = eps Z(W_i) = -eps TA(W_i A)``)::

        X = Z0                 W1 = exp(X / 4) W0
        X = 8/9 Z1 - 17/36 X   W2 = exp(X) W1
        X = 3/4 Z2 - X         W3 = exp(X) W2

    (the same exponents as eager's, up to rounding). With ``spare`` (a packed field not
    overlapping ``q``), ``q`` and ``spare`` hold the stages (``W1``, ``W3`` in ``spare``,
    ``W2`` in ``q``, which is overwritten) and ``spare`` is returned: three lattice arrays
    in all (a third of the eager form's memory traffic). Without it the stages use reused
    buffers, ``q`` is left alone and the result is a new array."""
    stage0, stage1, x = _stage_buffers(b, local)
    if spare is None:
        w1, w2, w3 = stage0, stage1, empty_packed(b, local)
    else:
        _check(spare, packed_shape(b, local)[0], "spare links")
        if np.may_share_memory(spare, q):
            raise ValueError("vnode RK3 step: spare must not overlap the links")
        w1, w2, w3 = spare, q, spare
    v = q
    for (a, keep, c), w in zip(RK3_STAGES, (w1, w2, w3), strict=True):
        ta_staples_packed(v, b, local, -eps * a, True, x, keep=keep)
        v = expm_mul_packed(x, v, b, local, (c,), out=w)
    return v


def su3_flow_step_rk3(u: torch.Tensor, eps: float) -> torch.Tensor:
    """RK3 Wilson-flow step in the complex layout: one pack, three vnode stages, one unpack."""
    b, nd = u.shape[:2]
    local = tuple(u.shape[2:-2])
    fused._threads()
    q = pack(u, work=True)
    spare = _stage_buffers(b, local)[0]
    return unpack(flow_step_rk3_packed(q, b, local, eps, spare=spare), b, nd, local)


def su3_ta_staples(u: torch.Tensor, coef: float, ta: bool) -> torch.Tensor:
    """``coef TA(U A)`` or ``coef A`` in the complex layout (pack, kernel, unpack; the packed
    links and the packed result live in reused workspaces)."""
    b, nd = u.shape[:2]
    local = tuple(u.shape[2:-2])
    q = pack(u, work=True)
    out = fused._workspace((b * nd * int(np.prod(local)) // W, LB))
    ta_staples_packed(q, b, local, coef, ta, out)
    return unpack(out, b, nd, local)


def su3_plaquette_density(u: torch.Tensor) -> torch.Tensor:
    """``sum_{mu<nu} (3 - Re Tr U_{mu nu}(x))`` per site, ``(B, *local)``."""
    b = u.shape[0]
    local = tuple(u.shape[2:-2])
    return unpack_density(plaquette_density_packed(pack(u, work=True), b, local), b, local)


def su3_clover_density(u: torch.Tensor, charge: bool = False) -> torch.Tensor:
    """Clover ``sum_{mu<nu} |G_{mu nu}(x)|_F^2`` or (``charge``) ``Re tr(G01 G23 - G02 G13 +
    G03 G12)`` per site, ``(B, *local)``."""
    b = u.shape[0]
    local = tuple(u.shape[2:-2])
    d = clover_density_packed(pack(u, work=True), b, local, charge)
    return unpack_density(d, b, local)


#: PackedMD computes the interior while the faces travel (``TRIVHMC_VNODE_OVERLAP=0``: not;
#: read at import)
OVERLAP = flag("TRIVHMC_VNODE_OVERLAP", True)
_HALO_TAG = 9100  # MPI tags of the packed halo exchange: _HALO_TAG + 2 d + (towards > 0)


class GhostLayout:
    """The vnode layout of a local block on a grid with split axes, with ghost outer sites
    instead of padding (Grid's approach: the sweep covers the owned sites only).

    Every owned site keeps its place of the unsplit layout (outer sites ``o < vo``, lanes cut
    each axis in two halves of ``h_d``). A split axis ``d`` gets two ghost planes of outer
    sites at ``o_d = -1`` and ``o_d = h_d``, stored after the owned ones (``vo <= o < vs``;
    corner planes of two split axes included), and the neighbour tables send a hop across
    ``o_d = 0`` / ``h_d - 1`` there with no lane permutation. A ghost plane holds in each lane
    the link at the site that lane's hop reaches: for the upper plane, lane ``l`` with lane
    bit ``d`` clear is the owned site ``x_d = h_d`` (outer plane 0, lane ``l ^ 2^d``), and with
    the bit set the upper rank's ``x_d = 0`` (its plane 0, lane ``l ^ 2^d``); the lower plane
    likewise with the owned ``x_d = h_d - 1`` and the lower rank's ``x_d = L_d - 1``. So a
    face exchange sends half the lanes of one outer plane (one lattice slice of links, the
    minimum) and the other half of each ghost plane is a lane-permuted local copy. Axes are
    filled one after the other, each plane spanning the ghost planes of the axes before it,
    so edges and corners arrive too."""

    def __init__(self, local: tuple[int, ...], split: tuple[int, ...]) -> None:
        self.local, self.split = tuple(local), tuple(split)
        h = np.array(local) // 2
        lo = np.array([-1 if d in split else 0 for d in range(ND)])
        ext = tuple(int(h[d] + 2 * (d in split)) for d in range(ND))
        coords = np.stack(np.unravel_index(np.arange(int(np.prod(ext))), ext), 1) + lo
        owned = np.all((coords >= 0) & (coords < h), 1)
        self.vo = int(owned.sum())
        self.vs = len(coords)
        order = np.concatenate([np.flatnonzero(owned), np.flatnonzero(~owned)])
        coords = coords[order]  # owned sites first, in the unsplit layout's order
        index = np.empty(ext, np.int64)
        index[tuple((coords - lo).T)] = np.arange(self.vs)
        self.nbr = np.empty((self.vs, ND, 2), np.int64)
        self.msk = np.zeros((self.vs, ND, 2), np.int64)
        for d in range(ND):
            for s, step in enumerate((1, -1)):
                c = coords.copy()
                c[:, d] += step
                if d in split:  # into the ghost planes; a hop beyond them is never taken
                    c[:, d] = np.clip(c[:, d], -1, h[d])
                else:
                    cross = (c[:, d] < 0) | (c[:, d] >= h[d])
                    c[:, d] %= h[d]
                    self.msk[:, d, s] = np.where(cross, 1 << d, 0)
                self.nbr[:, d, s] = index[tuple((c - lo).T)]
        site = site_table(tuple(local))
        self.site = np.full((self.vs, W), -1, np.int64)
        self.site[: self.vo] = site
        # per split axis, in order: outer sites of the planes o_d = 0, h_d - 1, -1, h_d, each
        # spanning the ghost range of the axes filled before it and the owned range after
        self.planes = {}
        for k, d in enumerate(split):
            rng = [
                np.arange(-1, h[a] + 1) if a in split[:k] else np.arange(h[a]) for a in range(ND)
            ]
            got = []
            for x in (0, h[d] - 1, -1, h[d]):
                r = list(rng)
                r[d] = np.array([x])
                mesh = np.meshgrid(*r, indexing="ij")
                got.append(
                    _as_slice(index[tuple(m.reshape(-1) - lo[a] for a, m in enumerate(mesh))])
                )
            self.planes[d] = tuple(got)

    def nrows(self, b: int) -> int:
        """Rows of a packed field with the kernels' scratch tail."""
        return b * ND * self.vs + 6 * nchunks(b * self.vo)


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice where it is a contiguous increasing range (numpy then indexes
    with a view instead of a gather), else itself."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + idx.size)
    return idx


_LAYOUTS: dict[tuple, GhostLayout] = {}


def ghost_layout(local: tuple[int, ...], split: tuple[int, ...]) -> GhostLayout:
    """The (cached) :class:`GhostLayout` of ``local`` with ``split`` axes."""
    key = (tuple(local), tuple(split))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = GhostLayout(*key)
    return _LAYOUTS[key]


class PackedMD:
    """Molecular dynamics with the links and momenta in the vnode layout for a whole
    trajectory (:class:`kernels.theory.ResidentMD`): one pack of ``(U, P)`` at the start and
    one unpack at the end, instead of a pack and an unpack per force and per drift. The
    force is ``coef TA(U A)`` (``coef = beta c0 / 6``), the drift ``U -> exp(eps P) U`` per
    lane (:func:`expm_mul`); momenta and forces are ``(B, Nd Vo, 18 W)`` tensors over numpy
    memory, so the integrator's kick ``P -= h F`` acts on them in place.

    On a grid with split axes the links live in the :class:`GhostLayout` of the local block:
    the kernels sweep the owned sites only, and before every force the ghost planes are
    refilled (:meth:`_exchange`). Forces and momenta have no ghost rows (the unsplit layout
    of the owned sites) and the drift skips the links' ghost rows, so nothing but owned
    sites enters the kicks, the per-chain NaN check or the result.

    The links array whose ghost planes were filled last and whose owned sites have not been
    written since is remembered (``_fresh``; a drift writes a new array, an :meth:`expm` into
    it forgets it): a force or an action on it does not exchange again. So the exchange made
    for the action at the start of a trajectory serves its first force, and the last force's
    serves the action at the end (:meth:`action`).

    ``action_of_density`` (set by the theory, :meth:`kernels.theories.su3.SU3Gauge.
    resident_md`) maps the plaquette density ``(B, *local)`` to the theory's action ``(B,)``;
    with it :meth:`action` gives the Hamiltonian's action from the resident links, bit for bit
    the theory's ``action`` of the unpacked links (the same kernel on the same numbers)."""

    def __init__(self, b: int, local: tuple[int, ...], coef: float, grid=None) -> None:
        self.b, self.coef, self.grid = b, float(coef), grid
        self.split = _split_axes(grid) if grid is not None else ()
        self.local = tuple(local)
        self.lay = ghost_layout(self.local, self.split)
        self.n = b * ND * self.lay.vo
        self._bufs: dict[int, tuple[np.ndarray, ...]] = {}
        self._fresh: np.ndarray | None = None  # the links whose ghost planes are current
        self.action_of_density = None  # density (B, *local) -> action (B,), or None

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).view(self.b, -1, LB)

    def _q3(self, q: np.ndarray) -> np.ndarray:
        """The link blocks of packed ``q`` as ``(B Nd, Vs, 18 W)`` (a view)."""
        return q[: self.b * ND * self.lay.vs].reshape(self.b * ND, self.lay.vs, LB)

    def _post(self, q3: np.ndarray, d: int) -> list:
        """Start the face exchange of split axis ``d``: the halves of the owned outer planes
        0 and ``h_d - 1`` that hold the slices ``x_d = 0`` and ``L_d - 1`` (:func:`half_lanes`;
        the other half of each plane is interior) copied to kept buffers and sent to the
        lower and upper rank, both receives posted (``parallel.comm``'s ``irecv``/``isend``).
        Returns the requests."""
        src_lo, src_hi, _, _ = self.lay.planes[d]
        down, up = self.grid.neighbours[d]
        send_dn, send_up, from_up, from_dn = self._buffers(d)
        # x_d = 0, the lanes with bit d clear: the lower rank's upper ghosts; x_d = L_d - 1,
        # those with the bit set: the upper rank's lower ghosts (the other lanes are owned
        # by the neighbour already: half a plane per face, ghost_fill)
        lo, hi = half_lanes(q3[:, src_lo], d, 0), half_lanes(q3[:, src_hi], d, 1)
        send_dn.reshape(lo.shape)[...] = lo
        send_up.reshape(hi.shape)[...] = hi
        tag = _HALO_TAG + 2 * d
        cart = self.grid.cart
        return [
            comm.irecv(cart, from_up, up, tag),
            comm.irecv(cart, from_dn, down, tag + 1),
            comm.isend(cart, send_dn, down, tag),
            comm.isend(cart, send_up, up, tag + 1),
        ]

    def _fill(self, q3: np.ndarray, d: int) -> None:
        """Fill the ghost planes of axis ``d`` (after the exchange arrived): each lane from
        the owned plane next to it or from the received one (``ghost_fill``)."""
        src_lo, src_hi, gh_lo, gh_hi = self.lay.planes[d]
        _, _, from_up, from_dn = self._buffers(d)
        lo, hi = q3[:, src_lo], q3[:, src_hi]
        direct = isinstance(gh_hi, slice)  # contiguous ghost planes: filled in place
        g_hi = q3[:, gh_hi] if direct else np.empty_like(lo)
        g_lo = q3[:, gh_lo] if direct else np.empty_like(hi)
        k, m = kernels(), 1 << d
        k.ghost_fill(g_hi, lo, from_up, m, False)  # x_d = h_d owned, x_d = L_d remote
        k.ghost_fill(g_lo, hi, from_dn, m, True)  # x_d = h_d - 1 owned, x_d = -1 remote
        if not direct:
            q3[:, gh_hi] = g_hi
            q3[:, gh_lo] = g_lo

    def _exchange(self, q: np.ndarray) -> None:
        """Fill the ghost planes of packed ``q`` in place (:class:`GhostLayout`): per split
        axis, both faces in flight at once (:meth:`_post`), one ``waitall``, then
        :meth:`_fill`; axis after axis, so that edges and corners arrive too."""
        q3 = self._q3(q)
        for d in self.split:
            comm.waitall(self._post(q3, d))
            self._fill(q3, d)
        self._fresh = q

    def _refresh(self, q: np.ndarray) -> None:
        """Fill the ghost planes of ``q`` unless they are current already."""
        if self.split and q is not self._fresh:
            self._exchange(q)

    def _buffers(self, d: int) -> tuple[np.ndarray, ...]:
        """Send and receive buffers of axis ``d`` (half the lanes of the link blocks of one
        outer plane, ``(B Nd, sites, 9 W)``), kept between forces."""
        if d not in self._bufs:
            plane = self.lay.planes[d][0]
            sites = plane.stop - plane.start if isinstance(plane, slice) else plane.size
            shape = (self.b * ND, sites, LB // 2)
            self._bufs[d] = tuple(np.empty(shape) for _ in range(4))
        return self._bufs[d]

    def _pack(self, field: torch.Tensor) -> np.ndarray:
        """Packed links with the kernels' scratch tail, ghost planes not filled."""
        return pack(field, sites=self.lay.site, out=np.empty((self.lay.nrows(self.b), LB)))

    def pack_links(self, field: torch.Tensor) -> np.ndarray:
        """Packed links with the kernels' scratch tail, ghost planes filled."""
        q = self._pack(field)
        self._refresh(q)
        return q

    def enter(self, field: torch.Tensor, momentum: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Packed links (with the kernels' scratch tail) and packed momenta. The links' ghost
        planes are *not* filled: nothing of the trajectory reads them before a force, and
        :meth:`force` refills them first (the drift and :meth:`leave` touch owned sites
        only), so an exchange here would be sent again unchanged by the first force. They
        hold NaN until then: a read of a stale ghost would show as a non-finite force."""
        p = pack(momentum, out=np.empty((self.n, LB)))
        q = self._pack(field)
        q3 = self._q3(q)
        for d in self.split:
            _, _, gh_lo, gh_hi = self.lay.planes[d]
            q3[:, gh_lo] = np.nan
            q3[:, gh_hi] = np.nan
        return q, self._tensor(p)

    def force(
        self,
        phi: np.ndarray,
        ta: bool = True,
        coef: float | None = None,
        keep: float = 0.0,
        out: np.ndarray | None = None,
    ) -> torch.Tensor:
        """``coef TA(U A)`` (or with ``ta=False`` the staple sum ``coef A``; ``coef`` default: the
        constructor's; ``+ keep out`` when ``keep`` is not 0, the RK3 stages' combinations)
        on the owned sites, into ``out`` or a new array; the ghost planes of ``phi`` are
        refilled first unless they are current. With the first lattice axis the only split
        one, the interior outer planes ``1 .. h_0 - 2`` (a contiguous range of outer sites;
        their stencils stay inside the owned block) are computed while the faces travel
        (``parallel.comm.progress`` between planes: MPI without a progress thread moves a
        large message only inside MPI calls), the two boundary planes after."""
        lay = self.lay
        out = np.empty((self.n, LB)) if out is None else out
        coef = self.coef if coef is None else float(coef)
        fused._threads()

        def sweep(o0: int, o1: int) -> None:
            if o1 > o0:
                kernels().su3_ta_staples(
                    phi,
                    lay.nbr,
                    lay.msk,
                    self.b,
                    lay.vo,
                    lay.vs,
                    o0,
                    o1,
                    coef,
                    ta,
                    float(keep),
                    out,
                    nchunks(self.b * (o1 - o0)),
                )

        if self.split == (0,) and OVERLAP and phi is not self._fresh:
            plane = lay.vo // (self.local[0] // 2)  # outer sites per plane of axis 0
            q3 = self._q3(phi)
            reqs = self._post(q3, 0)
            for o0 in range(plane, lay.vo - plane, plane):  # plane by plane, and meanwhile
                comm.progress(reqs)  # let MPI move the (rendezvous) faces along
                sweep(o0, o0 + plane)
            comm.waitall(reqs)
            self._fill(q3, 0)
            self._fresh = phi
            sweep(0, plane)
            sweep(max(plane, lay.vo - plane), lay.vo)
            return self._tensor(out)
        self._refresh(phi)
        sweep(0, lay.vo)
        return self._tensor(out)

    def kick(self, phi: np.ndarray, pi: torch.Tensor, h: float) -> torch.Tensor:
        """``pi - h F(phi)`` in place, the force never stored: the force kernel writes ``(-h
        coef) TA(U A) + pi`` into ``pi`` (one pass over the momenta instead of a force
        array and a separate update; the rounding differs from ``pi.sub_(F, alpha=h)`` in
        the last bits)."""
        self.force(phi, coef=-h * self.coef, keep=1.0, out=pi.numpy().reshape(self.n, LB))
        return pi

    def action(self, phi: np.ndarray) -> torch.Tensor | None:
        """The theory's action ``(B,)`` of the links ``phi`` (ghost planes refilled unless
        current), or None without ``action_of_density``."""
        if self.action_of_density is None:
            return None
        self._refresh(phi)
        return self.action_of_density(self.density(phi, "plaquette"))

    def density(self, phi: np.ndarray, kind: str) -> torch.Tensor:
        """Per-site ``(B, *local)`` density of packed links ``phi`` (ghost planes filled):
        ``"plaquette"`` (``sum_{mu<nu} (3 - Re Tr U_{mu nu})``), ``"clover"`` (clover
        energy) or ``"charge"`` (clover charge density)."""
        lay = self.lay
        out = np.empty((self.b * lay.vo, W))
        nch = nchunks(self.b * lay.vo)
        fused._threads()
        if kind == "plaquette":
            kernels().su3_plaquette_density(phi, lay.nbr, lay.msk, self.b, lay.vo, lay.vs, out, nch)
        elif kind in ("clover", "charge"):
            kernels().su3_clover_density(
                phi, lay.nbr, lay.msk, self.b, lay.vo, lay.vs, kind == "charge", out, nch
            )
        else:
            raise ValueError(f"vnode density {kind!r}: plaquette, clover or charge")
        return unpack_density(out, self.b, self.local)

    def expm(
        self, x: np.ndarray, phi: np.ndarray, coef: float, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``exp(coef X) U`` per lane on the owned sites (``X`` ``(B Nd Vo, 18 W)`` in su(3),
        no ghost rows; ``out`` a packed field of this layout, not ``phi``, or a new one;
        its ghost rows are refilled before the next force)."""
        lay = self.lay
        w = np.empty((lay.nrows(self.b), LB)) if out is None else out
        if w is self._fresh:  # its owned sites change: its ghost planes are stale
            self._fresh = None
        nblk = self.b * ND * lay.vo
        fused._threads()
        coefs = np.array([coef], np.float64)
        kernels().expm_mul(x[None], coefs, phi, w, nblk, lay.vo, lay.vs, nchunks(nblk))
        return w

    def evolve(self, phi: np.ndarray, pi: torch.Tensor, eps: float) -> np.ndarray:
        """``exp(eps P) U`` per lane on the owned sites (:meth:`expm`; ``eps P`` formed in the
        kernel: the rounding of the per-call drift)."""
        return self.expm(pi.numpy().reshape(self.n, LB), phi, eps)

    def leave(self, phi: np.ndarray, pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Links and momenta in the ``(B, Nd, *local, 3, 3)`` complex layout (owned sites)."""
        p = pi.numpy().reshape(self.n, LB)
        return unpack(phi, self.b, ND, self.local, self.lay.site), unpack(p, self.b, ND, self.local)


class PackedFlow:
    """Luscher's RK3 Wilson flow with the links in the vnode layout from the first step to
    the last: one pack, and the observables straight from the packed links (clover energy
    and charge densities, plaquette density: the kernels of the per-call backend methods on
    the same numbers, so the measurements are bit for bit those of the per-call path). Per
    RK3 step at 8^4 this saves a pack and an unpack of the links and the packs of every
    measurement.

    On a grid with split axes (``grid``) the links live in the :class:`GhostLayout` of the
    local block (:class:`PackedMD`'s kernels): each stage's generator refills the ghost
    planes of its links first (with axis 0 split alone, the interior is swept while the
    faces travel), the exponentials update the owned sites, and a measurement refills the
    ghost planes of the current links once. The per-call RK3 step of a split grid is this
    class's step (:meth:`VnodeBackend.su3_flow_step_rk3`), so there too the resident flow
    is the per-call flow bit for bit."""

    def __init__(self, u: torch.Tensor, grid=None) -> None:
        self.b, self.local = u.shape[0], tuple(u.shape[2:-2])
        fused._threads()
        self.md: PackedMD | None = None
        if grid is not None and _split_axes(grid):
            self.md = PackedMD(self.b, self.local, 0.0, grid)
            self.q = self.md.pack_links(u)
            self._x = np.empty((self.md.n, LB))  # the generator combination X
        else:
            self.q = pack(u)
        self.spare: np.ndarray | None = None  # the second stage buffer (swapped every step)

    def step(self, eps: float) -> None:
        """One RK3 step (:func:`flow_step_rk3_packed`, or its ghost-layout form)."""
        fused._threads()
        if self.spare is None:
            self.spare = np.empty_like(self.q)
        if self.md is None:
            new = flow_step_rk3_packed(self.q, self.b, self.local, eps, self.spare)
        else:
            new = self._step_ghosts(eps)
        self.q, self.spare = new, self.q

    def _step_ghosts(self, eps: float) -> np.ndarray:
        """:func:`flow_step_rk3_packed`'s low-storage stages in the ghost layout: ``W1`` in
        the spare buffer, ``W2`` over the links, ``W3`` in the spare buffer (returned)."""
        v = self.q
        for (a, keep, c), w in zip(RK3_STAGES, (self.spare, self.q, self.spare), strict=True):
            self.md.force(v, coef=-eps * a, keep=keep, out=self._x)
            v = self.md.expm(self._x, v, c, out=w)
        return v

    def _density(self, kind: str) -> torch.Tensor:
        """A per-site density of the current links (ghost planes refilled once per step)."""
        self.md._refresh(self.q)  # PackedMD knows whose ghost planes are current
        return self.md.density(self.q, kind)

    def clover_density(self, charge: bool = False) -> torch.Tensor:
        """Per-site clover ``sum_{mu<nu} |G_{mu nu}|_F^2`` (or the charge density)."""
        if self.md is not None:
            return self._density("charge" if charge else "clover")
        return unpack_density(
            clover_density_packed(self.q, self.b, self.local, charge), self.b, self.local
        )

    def plaquette_density(self) -> torch.Tensor:
        """Per-site ``sum_{mu<nu} (3 - Re Tr U_{mu nu})``."""
        if self.md is not None:
            return self._density("plaquette")
        return unpack_density(
            plaquette_density_packed(self.q, self.b, self.local), self.b, self.local
        )

    def links(self) -> torch.Tensor:
        """The flowed links, ``(B, Nd, *local, 3, 3)`` complex128 (owned sites)."""
        sites = None if self.md is None else self.md.lay.site
        return unpack(self.q, self.b, ND, self.local, sites)


# --------------------------------------------------------------------------- backend
def _split_axes(grid) -> tuple[int, ...]:
    return tuple(d for d, g in enumerate(grid.grid) if g > 1)


def _use(u: torch.Tensor, grid, c1: float = 0.0) -> bool:
    """The vnode kernels apply on an unsplit grid: :func:`_use_split` and no split axis."""
    return _use_split(u, grid, c1) and not _split_axes(grid)


def _use_split(u: torch.Tensor, grid, c1: float = 0.0) -> bool:
    """The vnode stencil kernels apply on this grid, split or not (split axes through the
    :class:`GhostLayout`): Wilson action, complex128 CPU links without a graph, a 4D local
    lattice with even extents."""
    local = tuple(grid.local_shape)
    return (
        not c1
        and u.device.type == "cpu"
        and u.dtype == torch.complex128
        and not fused._graph(u)
        and fits(local, (1,) * len(local))
    )


def _ghosts(u: torch.Tensor, grid, coef: float = 0.0) -> tuple[PackedMD, np.ndarray]:
    """The local links in the :class:`GhostLayout` of a split grid, ghost planes filled
    (:meth:`PackedMD.pack_links`), and the :class:`PackedMD` that runs kernels on them."""
    md = PackedMD(u.shape[0], tuple(grid.local_shape), coef, grid)
    return md, md.pack_links(u)


def _staples_on_grid(u: torch.Tensor, grid, coef: float, ta: bool) -> torch.Tensor:
    """``coef TA(U A)`` (``ta``) or ``coef A`` on the local links: the whole block when no
    axis is split, else the owned sites of the ghost layout (faces exchanged first; with
    only axis 0 split the interior is computed while they travel, :meth:`PackedMD.force`)."""
    if not _split_axes(grid):
        return su3_ta_staples(u, coef, ta)
    md, q = _ghosts(u, grid, coef)
    out = md.force(q, ta).numpy().reshape(md.n, LB)
    return unpack(out, md.b, ND, md.local)


def _density_on_grid(u: torch.Tensor, grid, kind: str) -> torch.Tensor:
    """Per-site density ``(B, *local)`` (:meth:`PackedMD.density`: ``"plaquette"``,
    ``"clover"``, ``"charge"``) on the local links, through the ghost layout on a split
    grid."""
    if not _split_axes(grid):
        if kind == "plaquette":
            return su3_plaquette_density(u)
        return su3_clover_density(u, charge=kind == "charge")
    md, q = _ghosts(u, grid)
    return md.density(q, kind)


def _plaq_sum(u: torch.Tensor, grid) -> torch.Tensor:
    return _density_on_grid(u, grid, "plaquette").flatten(1).sum(1)


def _staples(u: torch.Tensor, grid) -> torch.Tensor:
    return _staples_on_grid(u, grid, 1.0, ta=False)


class VnodeBackend(fused.NumbaBackend):
    """The virtual-node SU(3) Wilson kernels (module doc) where the local lattice fits
    (:func:`fits`, split axes through the ghost layout, :func:`_use_split`; ``exp(X) W`` is
    site-local); the other SU(3) cases (odd extents, rectangles, graphs) are the ``numba``
    backend's, which falls back to ``eager`` in turn. The RK3 flow step stays in the layout
    (on split grids the ghost layout, its planes refilled before each stage's generator).
    U(1) runs the ``numba`` backend's kernels (:mod:`kernels.backends.u1_kernels`). This is
    the backend to pick for speed."""

    name = "vnode"

    def su3_staple_sum(self, u, grid, c0, c1):
        """Staple sum ``c0 A_mu(x)`` (split axes: :func:`_staples_on_grid`)."""
        if not _use_split(u, grid, c1):
            return super().su3_staple_sum(u, grid, c0, c1)
        return _staples_on_grid(u, grid, c0, ta=False)

    def su3_force(self, u, grid, beta, c0, c1):
        """``(beta c0 / 6) TA(U A)`` (split axes: ghost layout)."""
        if not _use_split(u, grid, c1):
            return super().su3_force(u, grid, beta, c0, c1)
        return _staples_on_grid(u, grid, beta * c0 / 6.0, ta=True)

    def su3_flow_generator(self, u, grid, c1=0.0):
        """``-TA(V A)`` (split axes: ghost layout)."""
        if not _use_split(u, grid, c1):
            return super().su3_flow_generator(u, grid, c1)
        return _staples_on_grid(u, grid, -1.0, ta=True)

    def su3_resident_md(self, u, grid, beta, c0, c1):
        """:class:`PackedMD` for HMC with the Wilson force where the vnode kernels apply
        (:func:`_use_split`: split axes with ghost planes exchanged per force), else None."""
        if not _use_split(u, grid, c1):
            return None
        return PackedMD(u.shape[0], tuple(grid.local_shape), beta * c0 / 6.0, grid)

    def su3_resident_flow(self, u, grid, c1=0.0):
        """:class:`PackedFlow` for the RK3 Wilson flow where the vnode kernels apply
        (:func:`_use_split`; split axes through the ghost layout), else None."""
        return PackedFlow(u, grid) if _use_split(u, grid, c1) else None

    def su3_expm_mul(self, x, w):
        """``exp(X) W`` (the MD drift): per lane in the vnode layout where the lattice fits."""
        if not _expm_fits(x, w):
            return super().su3_expm_mul(x, w)
        return expm_mul(x, w)

    def su3_flow_step_rk3(self, u, grid, eps, c1=0.0):
        """RK3 Wilson-flow step: every stage in the vnode layout (:func:`su3_flow_step_rk3`;
        on a split grid in the ghost layout, :class:`PackedFlow`)."""
        if _use(u, grid, c1):
            return su3_flow_step_rk3(u, eps)
        if _use_split(u, grid, c1):  # the resident flow's step: the same numbers
            flow = PackedFlow(u, grid)
            flow.step(eps)
            return flow.links()
        return super().su3_flow_step_rk3(u, grid, eps, c1)

    def su3_action_density(self, u, grid, c0, c1):
        """Per-site ``c0 sum_{mu<nu} (3 - Re Tr U_{mu nu})`` (split axes: ghost layout)."""
        if not _use_split(u, grid, c1):
            return super().su3_action_density(u, grid, c0, c1)
        return c0 * _density_on_grid(u, grid, "plaquette")

    def su3_clover_density(self, u, grid):
        """Per-site clover ``sum_{mu<nu} |G_{mu nu}(x)|_F^2`` (split axes: ghost layout; the
        leaves reach ``x - mu - nu``, a ghost edge site when both axes are split)."""
        if not _use_split(u, grid):
            return super().su3_clover_density(u, grid)
        return _density_on_grid(u, grid, "clover")

    def su3_clover_charge_density(self, u, grid):
        """Per-site ``Re tr(G01 G23 - G02 G13 + G03 G12)`` (clover ``G``; split axes
        ghost layout)."""
        if not _use_split(u, grid):
            return super().su3_clover_charge_density(u, grid)
        return _density_on_grid(u, grid, "charge")

    def su3_action_local(self, u, grid, c0, c1):
        """Wilson loop sum; vnode forward, analytic backward (``fused._SU3WilsonAction``;
        split axes: ghost layout in both)."""
        if not _use_split(u.detach(), grid, c1):
            return super().su3_action_local(u, grid, c0, c1)
        if fused._graph(u):
            return fused._SU3WilsonAction.apply(u, grid, c0, _plaq_sum, _staples)
        return c0 * _plaq_sum(u, grid)
