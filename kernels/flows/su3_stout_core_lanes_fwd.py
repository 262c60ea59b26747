"""Lane-vectorised forward of the SU(3) stout layer's core (the fused path's
:func:`kernels.flows.su3_fused.stout_core`), generated like :mod:`kernels.backends.vnode`.

Same mathematics and saved quantities as the scalar
:func:`kernels.flows.su3_fused_kernels.core_forward` (formulas there), but ``W = 16`` active
sites of one chain at a time, one per SIMD lane, in real arithmetic (re, im apart): every
stage is a generated lane loop of straight-line code that reads its inputs from one scratch
array and writes another (so that LLVM vectorises the lane loop without alias checks between
loads and stores of the same array). Per block::

    C = sum_nu rho_nu P_nu,  Omega = C x^+,  h = i TA(Omega) = V diag(w) V^+,
    exp(Q) = 1 + V diag(e^{-i w} - 1) V^+,  new = exp(Q) x,  O = V^+ Omega V,
    N_r[r, c] = delta_rc - Re <T_r, Phi o P L9(T_c)>,   K_r = N_r^{-1},  ld = log |det N_r|

(``T_c`` the real orthonormal basis of ``u(3)`` in the eigenbasis, :mod:`su3_fused_kernels`;
``L9(M) = (O M + M O^+) / 2``, ``P`` the trace projection, ``Phi_(jk) = phi(i (w_j - w_k))``).

* Eigensystem: Cardano (``acos`` in a scalar loop, ``sin``, ``cos`` by vtrig)
  and, per eigenvalue, the largest of the three cross products of rows of ``h - w_k`` (a
  select per lane), then the columns made unitary. Lanes whose spectrum is (nearly)
  degenerate (gap below ``2e-2 * 2 sqrt(p)``, the scalar kernel's criterion) are redone by
  LAPACK ``eigh`` after the lane loops.
* ``N_r^{-1}``: Gauss-Jordan without row exchanges (``N = 1 + E``, ``||E|| <= rho_max < 1``
  for the flow's coefficients: the pivots stay near 1), ping-pong between two scratch
  arrays. A lane where a pivot is below half the largest entry under it (threshold partial
  pivoting would exchange rows), or whose pivot product leaves ``[1e-280, 1e280]``, is redone
  by the scalar kernel's pivoting Gauss-Jordan. ``ld = log |prod pivots|``.

The results agree with the scalar kernel to rounding (tests/test_stout_core_lanes_fwd.py).
Floating point: ``fastmath={'contract'}`` only.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from kernels.backends import fused, vnode

W = vnode.W
LB = vnode.LB
nchunks = vnode.nchunks

_S = 1.0 / math.sqrt(2.0)
_PAIRS = ((0, 1), (0, 2), (1, 2))

# scalar scratch rows (flat arrays ``arr[row W + lane]``): ``hs``: h (Hermitian: 9 reals), p,
# sqrt(p), the Cardano ratio r, the flag p ~ 0; ``an``: cos, sin of the Cardano angle; ``ws``:
# the eigenvalues, the flag (LAPACK), the phases e^{i w_j / 2}
_ROWS = {
    **{
        n: ("hs", k)
        for k, n in enumerate(
            (
                "h00",
                "h11",
                "h22",
                "h01r",
                "h01i",
                "h02r",
                "h02i",
                "h12r",
                "h12i",
                "p",
                "sp",
                "r",
                "f0",
            )
        )
    },
    "t": ("an", 0),
    **{f"w{j}": ("ws", j) for j in range(3)},
    "flag": ("ws", 3),
    **{f"ph{j}{r}": ("pa", 2 * j + "ri".index(r)) for j in range(3) for r in "ri"},
}
NH, NAN, NWS, NPA = 13, 1, 4, 6
NPHI = 18  # phi_(jk) re, im: rows 2 (3 j + k) + {0, 1} of ``ps``
# link blocks of ``blk`` (each passed to a lane loop as its own flat row): C, x, Omega, V
# (raw columns, then unitary), exp(Q), O, scratch, new
BC, BX, BOM, BVR, BV, BE, BO, BT, BN = range(9)
NBLK = 9


def _c(i: int, j: int, r: int) -> int:
    return 2 * (3 * i + j) + r


def _blk(m: str, i: int, j: int, r: int) -> str:
    """Component ``(i, j, re|im)`` of link block ``m`` (a flat row of ``blk``) in lane ``l``."""
    return f"{m}[{_c(i, j, r) * W} + l]"


def _h(name: str) -> str:
    arr, row = _ROWS[name]
    return f"{arr}[{row * W} + l]"


def _flat(line: str) -> str:
    """``name[row, l]`` -> ``name[row W + l]`` (flat scratch rows)."""
    return re.sub(r"(\w+)\[(\d+), l\]", lambda m: f"{m[1]}[{int(m[2]) * W} + l]", line)


# ------------------------------------------------------------------ complex expression helper
class _Cx:
    """A complex value as two real expressions (``None``: exactly zero)."""

    def __init__(self, re: str | None, im: str | None) -> None:
        self.re, self.im = re, im


def _join(terms: list[tuple[int, str]]) -> str | None:
    """``sum sign * term`` as an expression (``None`` if empty)."""
    out = ""
    for sign, t in terms:
        out += (" + " if sign > 0 else " - ") if out else ("" if sign > 0 else "-")
        out += t
    return f"({out})" if out else None


def _mul(a: _Cx, b: _Cx) -> _Cx:
    re: list[tuple[int, str]] = []
    im: list[tuple[int, str]] = []
    if a.re and b.re:
        re.append((1, f"{a.re} * {b.re}"))
    if a.im and b.im:
        re.append((-1, f"{a.im} * {b.im}"))
    if a.re and b.im:
        im.append((1, f"{a.re} * {b.im}"))
    if a.im and b.re:
        im.append((1, f"{a.im} * {b.re}"))
    return _Cx(_join(re), _join(im))


def _sub(a: _Cx, b: _Cx) -> _Cx:
    def one(x: str | None, y: str | None) -> str | None:
        if y is None:
            return x
        return f"({x} - {y})" if x else f"(-{y})"

    return _Cx(one(a.re, b.re), one(a.im, b.im))


def _conj(a: _Cx) -> _Cx:
    return _Cx(a.re, f"(-{a.im})" if a.im else None)


def _assign(name: str, v: _Cx) -> tuple[list[str], _Cx]:
    """Statements ``{name}r = ...``, ``{name}i = ...`` and the value by those names."""
    return [f"{name}r = {v.re or '0.0'}", f"{name}i = {v.im or '0.0'}"], _Cx(f"{name}r", f"{name}i")


_NJIT = "\n@njit(fastmath={'contract'}, cache=True, error_model='numpy')\n"


def _min(a: str, b: str) -> str:
    """``min`` as a select (numba's ``min`` keeps the lane loop scalar)."""
    return f"({a} if {a} < {b} else {b})"


def _max(a: str, b: str) -> str:
    return f"({a} if {a} > {b} else {b})"


def _lane_func(name: str, args: str, body: list[str]) -> str:
    """A lane loop around ``body`` (flat scratch rows; numpy error model: a discarded select
    side may divide by zero)."""
    body = [_flat(ln) for ln in body]
    return _NJIT + f"def {name}({args}):\n    for l in range({W}):\n" + vnode._ind(body, 8)


# ------------------------------------------------------------------ stages
def _eig_prep() -> str:
    """``h = i TA(Omega)`` (Hermitian traceless), ``p = tr h^2 / 6``, ``sqrt p``, the Cardano
    ratio ``r = det h / (2 p^{3/2})`` clamped to ``[-1, 1]`` and the flag ``p <= 1e-200``."""
    b = [
        f"m{i}{j}{r} = {_blk('OM', i, j, 'ri'.index(r))}"
        for i in range(3)
        for j in range(3)
        for r in "ri"
    ]
    b.append("tri = (m00i + m11i + m22i) / 3.0")
    b += [f"h{i}{i} = tri - m{i}{i}i" for i in range(3)]
    for i, j in _PAIRS:
        b.append(f"h{i}{j}r = -0.5 * (m{i}{j}i + m{j}{i}i)")
        b.append(f"h{i}{j}i = 0.5 * (m{i}{j}r - m{j}{i}r)")
    b.append(
        "p = (h00 * h00 + h11 * h11 + h22 * h22 + 2.0 * (h01r * h01r + h01i * h01i"
        " + h02r * h02r + h02i * h02i + h12r * h12r + h12i * h12i)) / 6.0"
    )
    # det h = h00 h11 h22 + 2 Re(h01 h12 conj(h02)) - h00 |h12|^2 - h11 |h02|^2 - h22 |h01|^2
    b.append("ar = h01r * h12r - h01i * h12i")
    b.append("ai = h01r * h12i + h01i * h12r")
    b.append(
        "det = h00 * h11 * h22 + 2.0 * (ar * h02r + ai * h02i)"
        " - h00 * (h12r * h12r + h12i * h12i) - h11 * (h02r * h02r + h02i * h02i)"
        " - h22 * (h01r * h01r + h01i * h01i)"
    )
    b.append("ok = p > 1e-200")
    b.append("pp = p if ok else 1.0")
    b.append("sp = vsqrt(pp)")
    b.append("r = 0.5 * det / (pp * sp)")
    b.append(f"r = {_min('1.0', _max('-1.0', 'r'))}")
    for n in ("h00", "h11", "h22", "h01r", "h01i", "h02r", "h02i", "h12r", "h12i", "p", "sp", "r"):
        b.append(f"{_h(n)} = {n}")
    b.append(f"{_h('f0')} = 0.0 if ok else 1.0")
    return _lane_func("eig_prep", "OM, hs", b)


def _rows(k: int) -> list[list[_Cx]]:
    """Rows of ``h - w_k`` (names of the eig_vec lane loop)."""
    h = {(i, i): _Cx(f"a{i}", None) for i in range(3)}
    for i, j in _PAIRS:
        h[i, j] = _Cx(f"h{i}{j}r", f"h{i}{j}i")
        h[j, i] = _Cx(f"h{i}{j}r", f"(-h{i}{j}i)")
    return [[h[i, j] for j in range(3)] for i in range(3)]


def _eig_vec() -> str:
    """Eigenvalues ``w_k = 2 sqrt(p) cos(theta + 2 pi k / 3)`` from ``cos theta``, ``sin theta``;
    the gap flag; eigenvector ``k`` = the largest (first on ties) of the cross products of rows
    ``(0, 1), (0, 2), (1, 2)`` of ``h - w_k``, normalised (columns of ``V`` in ``blk[BV]``)."""
    b = [
        f"{n} = {_h(n)}"
        for n in ("h00", "h11", "h22", "h01r", "h01i", "h02r", "h02i", "h12r", "h12i", "sp", "t")
    ]
    b.append(f"flag = {_h('f0')}")
    b.append("sn, cs = vsincos(t)")
    c3, s3 = -0.5, math.sqrt(3.0) / 2.0
    b.append("w0 = 2.0 * sp * cs")
    b.append(f"w1 = 2.0 * sp * ({c3!r} * cs - {s3!r} * sn)")
    b.append(f"w2 = 2.0 * sp * ({c3!r} * cs + {s3!r} * sn)")
    b.append(f"gap = {_min('abs(w0 - w1)', _min('abs(w0 - w2)', 'abs(w1 - w2)'))}")
    b.append("flag = 1.0 if gap < 2e-2 * sp else flag")
    for k in range(3):
        b += [f"a{i} = h{i}{i} - w{k}" for i in range(3)]
        rows = _rows(k)
        for n, (i0, i1) in enumerate(_PAIRS):
            a, c = rows[i0], rows[i1]
            for q in range(3):
                q1, q2 = (q + 1) % 3, (q + 2) % 3
                v = _sub(_mul(a[q1], c[q2]), _mul(a[q2], c[q1]))
                lines, _ = _assign(f"x{n}{q}", v)
                b += lines
            b.append(
                f"n{n} = "
                + " + ".join(f"x{n}{q}r * x{n}{q}r + x{n}{q}i * x{n}{q}i" for q in range(3))
            )
        # the first largest: (0, 1) unless (0, 2) is larger, then (1, 2) if larger still
        for q in range(3):
            for r in "ri":
                b.append(f"y{q}{r} = x1{q}{r} if n1 > n0 else x0{q}{r}")
        b.append("nb = n1 if n1 > n0 else n0")
        for q in range(3):
            for r in "ri":
                b.append(f"y{q}{r} = x2{q}{r} if n2 > nb else y{q}{r}")
        b.append("nb = n2 if n2 > nb else nb")
        b.append("sc = 1.0 / vsqrt(nb)")
        for q in range(3):
            for ri, r in enumerate("ri"):
                b.append(f"{_blk('VR', q, k, ri)} = y{q}{r} * sc")
    b += [f"{_h(f'w{k}')} = w{k}" for k in range(3)]
    b.append(f"{_h('flag')} = flag")
    return _lane_func("eig_vec", "hs, an, VR, ws", b)


def _unitarise() -> str:
    """``v1`` orthogonalised against ``v0`` and normalised, ``v2 = conj(v0 x v1)`` (in place:
    every load first)."""
    b = [
        f"v{i}{j}{r} = {_blk('VR', i, j, 'ri'.index(r))}"
        for i in range(3)
        for j in range(2)
        for r in "ri"
    ]
    # d = v0^+ v1
    b.append("dr = " + " + ".join(f"v{i}0r * v{i}1r + v{i}0i * v{i}1i" for i in range(3)))
    b.append("di = " + " + ".join(f"v{i}0r * v{i}1i - v{i}0i * v{i}1r" for i in range(3)))
    for i in range(3):
        b.append(f"u{i}r = v{i}1r - (dr * v{i}0r - di * v{i}0i)")
        b.append(f"u{i}i = v{i}1i - (dr * v{i}0i + di * v{i}0r)")
    b.append(
        "sc = 1.0 / vsqrt(" + " + ".join(f"u{i}r * u{i}r + u{i}i * u{i}i" for i in range(3)) + ")"
    )
    for i in range(3):
        b.append(f"u{i}r = u{i}r * sc")
        b.append(f"u{i}i = u{i}i * sc")
    for i in range(3):
        i1, i2 = (i + 1) % 3, (i + 2) % 3
        v0a, v0b = _Cx(f"v{i1}0r", f"v{i1}0i"), _Cx(f"v{i2}0r", f"v{i2}0i")
        u1a, u1b = _Cx(f"u{i1}r", f"u{i1}i"), _Cx(f"u{i2}r", f"u{i2}i")
        z = _conj(_sub(_mul(v0a, u1b), _mul(v0b, u1a)))
        b.append(f"{_blk('V', i, 0, 0)} = v{i}0r")
        b.append(f"{_blk('V', i, 0, 1)} = v{i}0i")
        b.append(f"{_blk('V', i, 1, 0)} = u{i}r")
        b.append(f"{_blk('V', i, 1, 1)} = u{i}i")
        b.append(f"{_blk('V', i, 2, 0)} = {z.re}")
        b.append(f"{_blk('V', i, 2, 1)} = {z.im}")
    return _lane_func("unitarise", "VR, V", b)


def _phis() -> str:
    """``Phi_(jk) = e^{i (w_j - w_k) / 2} sinc((w_j - w_k) / 2)`` (``e^{i w_j / 2}`` from
    ``hs``; Taylor series of sinc below 0.05) into ``ps[2 (3 j + k) + {0, 1}, l]``."""
    b = [f"{n} = {_h(n)}" for n in ("w0", "w1", "w2")]
    for j in range(3):
        b.append(f"ph{j}i, ph{j}r = vsincos(0.5 * w{j})")
    b += [f"{_h(f'ph{j}{r}')} = ph{j}{r}" for j in range(3) for r in "ri"]
    for j in range(3):
        for k in range(3):
            # e = ph_j conj(ph_k)
            b.append(f"er = ph{j}r * ph{k}r + ph{j}i * ph{k}i")
            b.append(f"ei = ph{j}i * ph{k}r - ph{j}r * ph{k}i")
            b.append(f"d = 0.5 * (w{j} - w{k})")
            b.append("d2 = d * d")
            b.append("t = 1.0 - d2 / 6.0 * (1.0 - d2 / 20.0 * (1.0 - d2 / 42.0))")
            b.append("dd = d if abs(d) >= 0.05 else 1.0")
            b.append("sinc = t if abs(d) < 0.05 else ei / dd")
            b.append(f"ps[{2 * (3 * j + k)}, l] = er * sinc")
            b.append(f"ps[{2 * (3 * j + k) + 1}, l] = ei * sinc")
    return _lane_func("phis", "ws, pa, ps", b)


def _expq() -> str:
    """``exp(Q) = 1 + V diag(e^{-i w} - 1) V^+`` into ``E`` (``e^{-i w_j} = conj(ph_j^2)``)."""
    b = [
        f"v{i}{j}{r} = {_blk('V', i, j, 'ri'.index(r))}"
        for i in range(3)
        for j in range(3)
        for r in "ri"
    ]
    b += [f"ph{j}{r} = {_h(f'ph{j}{r}')}" for j in range(3) for r in "ri"]
    for j in range(3):
        b.append(f"d{j}r = (ph{j}r * ph{j}r - ph{j}i * ph{j}i) - 1.0")
        b.append(f"d{j}i = -(2.0 * ph{j}r * ph{j}i)")
    out = []
    for i in range(3):
        for k in range(3):
            terms = []
            for j in range(3):
                vd = _mul(_Cx(f"v{i}{j}r", f"v{i}{j}i"), _Cx(f"d{j}r", f"d{j}i"))
                terms.append(_mul(vd, _Cx(f"v{k}{j}r", f"(-v{k}{j}i)")))
            re = " + ".join(t.re for t in terms)
            im = " + ".join(t.im for t in terms)
            if i == k:
                re = f"1.0 + ({re})"
            out.append(f"{_blk('E', i, k, 0)} = {re}")
            out.append(f"{_blk('E', i, k, 1)} = {im}")
    return _lane_func("expq", "pa, V, E", b + out)


def _basis() -> list[list[list[complex]]]:
    """``T_c`` (3x3 complex): ``i E_jj``; per pair ``(E_jk - E_kj) / sqrt 2``, ``i (E_jk +
    E_kj) / sqrt 2``."""
    out = []
    for j in range(3):
        t = np.zeros((3, 3), complex)
        t[j, j] = 1j
        out.append(t)
    for j, k in _PAIRS:
        t = np.zeros((3, 3), complex)
        t[j, k], t[k, j] = _S, -_S
        out.append(t)
        t = np.zeros((3, 3), complex)
        t[j, k], t[k, j] = 1j * _S, 1j * _S
        out.append(t)
    return [[[complex(v) for v in row] for row in t] for t in out]


def _lin(terms: dict[tuple[str, bool], complex]) -> _Cx:
    """``sum coef * o`` (``o`` the named O entry, conjugated if flagged) as real expressions."""
    re: list[tuple[int, str]] = []
    im: list[tuple[int, str]] = []

    def add(lst: list[tuple[int, str]], c: float, name: str) -> None:
        if c == 0.0:
            return
        if c == 1.0 or c == -1.0:
            lst.append((1 if c > 0 else -1, name))
        else:
            lst.append((1 if c > 0 else -1, f"{abs(c)!r} * {name}"))

    for (o, conj), c in terms.items():
        cr, ci = c.real, c.imag
        s = -1.0 if conj else 1.0  # o = or + i s oi
        add(re, cr, f"{o}r")
        add(re, -ci * s, f"{o}i")
        add(im, ci, f"{o}r")
        add(im, cr * s, f"{o}i")
    return _Cx(_join(re), _join(im))


def _pl9_forms(m: list[list[complex]]) -> dict[tuple[int, int], dict[tuple[str, bool], complex]]:
    """``P L9(M)`` for a constant ``M`` as linear forms in the entries of ``O`` and their
    conjugates: ``{(j, k): {(name, conj): coef}}``."""
    z: dict[tuple[int, int], dict[tuple[str, bool], complex]] = {}
    for j in range(3):
        for k in range(3):
            t: dict[tuple[str, bool], complex] = {}
            for q in range(3):
                if m[q][k] != 0:
                    key = (f"o{j}{q}", False)
                    t[key] = t.get(key, 0) + 0.5 * m[q][k]
                if m[j][q] != 0:
                    key = (f"o{k}{q}", True)
                    t[key] = t.get(key, 0) + 0.5 * m[j][q]
            z[j, k] = t
    trace: dict[tuple[str, bool], complex] = {}
    for n in range(3):
        for key, v in z[n, n].items():
            trace[key] = trace.get(key, 0) + v
    for n in range(3):
        for key, v in trace.items():
            z[n, n][key] = z[n, n].get(key, 0) - v / 3.0
    return z


def _nr_column(c: int) -> str:
    """Column ``c`` of ``N_r = Re(T^+ N T) = 1 - Re(T^+ X T)``, ``X(M) = Phi o P L9(M)``,
    ``L9(M)_jk = sum_l O_jl M_lk / 2 + sum_m M_jm conj(O_km) / 2``, ``P``: minus a third of the
    trace on the diagonal (the scalar kernel's ``_build_n`` and ``_to_real``; the identity
    kept exact)."""
    basis = _basis()
    z = _pl9_forms(basis[c])
    b = [
        f"o{i}{j}{r} = {_blk('O', i, j, 'ri'.index(r))}"
        for i in range(3)
        for j in range(3)
        for r in "ri"
    ]
    b += [
        f"f{j}{k}{r} = ps[{2 * (3 * j + k) + 'ri'.index(r)}, l]"
        for j in range(3)
        for k in range(3)
        for r in "ri"
    ]
    for j in range(3):
        for k in range(3):
            terms = {key: v for key, v in z[j, k].items() if abs(v) > 1e-15}
            zv = _lin(terms)
            lines, zn = _assign(f"z{j}{k}", zv)
            b += lines
            lines, _ = _assign(f"n{j}{k}", _mul(_Cx(f"f{j}{k}r", f"f{j}{k}i"), zn))
            b += lines  # X = Phi o P L9(T_c); N(T_c) = T_c - X, coordinates of T_c: e_c
    for r in range(9):
        tr_ = basis[r]
        sums: list[tuple[int, str]] = []
        for j in range(3):
            for k in range(3):
                kap = tr_[j][k].conjugate()
                if kap == 0:
                    continue
                # Re(kap n) = Re kap n_r - Im kap n_i
                for coef, name in ((kap.real, f"n{j}{k}r"), (-kap.imag, f"n{j}{k}i")):
                    if coef != 0.0:
                        s = 1 if coef > 0 else -1
                        sums.append((s, name if abs(coef) == 1.0 else f"{abs(coef)!r} * {name}"))
        one = "1.0" if r == c else "0.0"
        b.append(f"ka[{9 * r + c}, l] = {one} - {_join(sums) or '0.0'}")
    return _lane_func(f"nr_col{c}", "O, ps, ka", b)


# ``kk`` (flat): N_r, two work matrices, then the pivot product, the flag, log |det|
KK_NR, KK_A, KK_B, KK_GS = 0, 81, 162, 243
NKK = 246


def _gj_column(col: int) -> str:
    """Gauss-Jordan step ``col`` without row exchange: the pivot row divided by the pivot
    (``[col, col] -> 1 / p``), every other row minus its multiple. Reads ``N_r`` (step 0) or
    the work matrix written by the previous step, writes the other (all in one array ``kk``
    at constant offsets: LLVM sees that loads and stores never overlap, no run-time alias
    checks); the pivot product and the flag (pivot below half the largest entry under it, or
    zero) in the rows after them. The pivot row and column are loaded first, then row by row."""
    src = KK_NR if col == 0 else (KK_A if col % 2 else KK_B)
    dst = KK_B if col % 2 else KK_A
    g = KK_GS

    def at(base: int, r: int, k: int) -> str:
        return f"kk[{(base + 9 * r + k) * W} + l]"

    b = [f"q{k} = {at(src, col, k)}" for k in range(9)]
    b += [f"f{r} = {at(src, r, col)}" for r in range(9) if r != col]
    b += [f"prod = kk[{g * W} + l]", f"flag = kk[{(g + 1) * W} + l]", f"p = q{col}"]
    below = [f"abs(f{r})" for r in range(col + 1, 9)]
    if below:
        mx = below[0]
        for t in below[1:]:
            mx = _max(mx, t)
        b.append(f"mx = {mx}")
        b.append("flag = 1.0 if abs(p) < 0.5 * mx else flag")
    b.append("flag = 1.0 if p == 0.0 else flag")
    b.append("inv = 1.0 / (p if p != 0.0 else 1.0)")
    b.append(f"kk[{g * W} + l] = prod * p")
    b.append(f"kk[{(g + 1) * W} + l] = flag")
    for k in range(9):
        b.append(f"q{k} = inv" if k == col else f"q{k} = q{k} * inv")
        b.append(f"{at(dst, col, k)} = q{k}")
    for r in range(9):
        if r == col:
            continue
        for k in range(9):
            if k == col:
                b.append(f"{at(dst, r, k)} = -f{r} * q{k}")
            else:
                b.append(f"{at(dst, r, k)} = {at(src, r, k)} - f{r} * q{k}")
    return _lane_func(f"gj{col}", "kk", b)


_KERNELS = """

@njit(fastmath={{'contract'}}, cache=True)
def load_block(p_, rho, x, b, s0, C, X):
    \"\"\"C = sum_nu rho_nu P_nu and X = x at the block's sites.\"\"\"
    ns, nnu = x.shape[1], rho.shape[1]
    for l in range({W}):
        s = min(s0 + l, ns - 1)
        for c in range(18):
            acc = 0.0
            for nu in range(nnu):
                acc += rho[b, nu, s] * p_[b, nu, s, c]
            C[c * {W} + l] = acc
            X[c * {W} + l] = x[b, s, c]


@njit(cache=True)
def angles(hs, an):
    \"\"\"The Cardano angle acos(r) / 3 (a scalar call: no vector acos).\"\"\"
    for l in range({W}):
        an[l] = math.acos(hs[{R} + l]) / 3.0


@njit(cache=True)
def eig_fallback(hs, ws, V):
    \"\"\"LAPACK eigh for the flagged lanes (nearly degenerate spectrum); a lane with a
    non-finite entry (a broken chain: LAPACK would refuse it and stop every chain) gets NaN
    eigenvalues and vectors.\"\"\"
    h = np.empty((3, 3), np.complex128)
    for l in range({W}):
        if ws[3 * {W} + l] == 0.0:
            continue
        size = 0.0
        for k in range(9):
            size += abs(hs[k * {W} + l])
        if not size < 1e300:  # inf or nan
            for i in range(3):
                ws[i * {W} + l] = np.nan
            for k in range(18):
                V[k * {W} + l] = np.nan
            continue
        for i in range(3):
            h[i, i] = hs[i * {W} + l]
        for q in range(3):
            i = 0 if q < 2 else 1
            j = 2 if q > 0 else 1
            z = complex(hs[(3 + 2 * q) * {W} + l], hs[(4 + 2 * q) * {W} + l])
            h[i, j] = z
            h[j, i] = z.conjugate()
        w0, v0 = np.linalg.eigh(h)
        for i in range(3):
            ws[i * {W} + l] = w0[i]
            for j in range(3):
                V[(2 * (3 * i + j)) * {W} + l] = v0[i, j].real
                V[(2 * (3 * i + j) + 1) * {W} + l] = v0[i, j].imag


@njit(cache=True)
def gj_fallback(kk, a, perm):
    \"\"\"Flagged lanes: N_r^{{-1}} and log |det| by the scalar pivoting Gauss-Jordan; the
    others' log |det| from the pivot product.\"\"\"
    for l in range({W}):
        prod = abs(kk[{GS} * {W} + l])
        if kk[({GS} + 1) * {W} + l] == 0.0 and prod > 1e-280 and prod < 1e280:
            kk[({GS} + 2) * {W} + l] = math.log(prod)
            continue
        for i in range(9):
            for j in range(9):
                a[i, j] = kk[({NR} + 9 * i + j) * {W} + l]
        kk[({GS} + 2) * {W} + l] = _inverse_real(a, perm)
        for i in range(9):
            for j in range(9):
                kk[({KA} + 9 * i + j) * {W} + l] = a[i, j]


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def core_forward(p_, rho, x, new, ld, wsave, vsave, kinv, want_k, nch):
    \"\"\"new (B, n, 18) = exp(Q) x and ld (B, n) = log det J per active site from the plane
    sums p_ (B, nnu, n, 18), rho (B, nnu, n), x (B, n, 18); saves, per block of W sites in
    the lane layout (component-major, lane-minor; the last block's unused lanes repeat its
    last site), w (B, nblk, 3 W), V (B, nblk, 18 W) and, if want_k, K_r = N_r^{{-1}} (B, nblk,
    81 W).\"\"\"
    nbat, ns = x.shape[0], x.shape[1]
    nblk = (ns + {W} - 1) // {W}
    tot = nbat * nblk
    for ch in prange(nch):
        blk = np.empty(({NBLK}, {LB}))
        hs = np.empty({NH} * {W})
        an = np.empty({NAN} * {W})
        ws = np.empty({NWS} * {W})
        pa = np.empty({NPA} * {W})
        ps = np.empty({NPHI} * {W})
        kk = np.empty({NKK} * {W})  # N_r, work matrices (the inverse ends in the first), pivots
        a = np.empty((9, 9))
        perm = np.empty(9, np.int64)
        C, X, OM, VR, V = blk[{BC}], blk[{BX}], blk[{BOM}], blk[{BVR}], blk[{BV}]
        E, O, NEW = blk[{BE}], blk[{BO}], blk[{BN}]
        for q in range(ch * tot // nch, (ch + 1) * tot // nch):
            b = q // nblk
            s0 = (q % nblk) * {W}
            load_block(p_, rho, x, b, s0, C, X)
            mm_nd(blk, {BC}, blk, {BX}, blk, {BOM})  # Omega = C x^+
            eig_prep(OM, hs)
            angles(hs, an)
            eig_vec(hs, an, VR, ws)
            unitarise(VR, V)
            eig_fallback(hs, ws, V)
            phis(ws, pa, ps)
            expq(pa, V, E)
            mm_nn(blk, {BE}, blk, {BX}, blk, {BN})  # new = exp(Q) x
            mm_dn(blk, {BV}, blk, {BOM}, blk, {BT})  # V^+ Omega
            mm_nn(blk, {BT}, blk, {BV}, blk, {BO})  # O = V^+ Omega V
{nr_calls}
            kk[{GS} * {W}:({GS} + 1) * {W}] = 1.0
            kk[({GS} + 1) * {W}:({GS} + 2) * {W}] = 0.0
{gj_calls}
            gj_fallback(kk, a, perm)
            for l in range(min({W}, ns - s0)):
                s = s0 + l
                ld[b, s] = kk[({GS} + 2) * {W} + l]
                for c in range(18):
                    new[b, s, c] = NEW[c * {W} + l]
            blk_ = q % nblk  # saved for the backward as whole lane blocks (no transposition)
            for k in range(18 * {W}):
                vsave[b, blk_, k] = V[k]
            for k in range(3 * {W}):
                wsave[b, blk_, k] = ws[k]
            if want_k:
                for k in range(81 * {W}):
                    kinv[b, blk_, k] = kk[{KA} * {W} + k]
"""


def _source() -> str:
    nr_calls = [f"nr_col{c}(O, ps, kk)" for c in range(9)]
    gj_calls = [f"gj{col}(kk)" for col in range(9)]  # ends in KK_A (step 8 even)
    return (
        fused._HEADER
        + "import math\n\nfrom kernels.backends.vtrig import vsincos, vsqrt\n"
        + "from kernels.flows.su3_fused_kernels import _inverse_real\n"
        + vnode._mm_func("mm_nn", False, False, False)
        + vnode._mm_func("mm_nd", False, True, False)
        + vnode._mm_func("mm_dn", True, False, False)
        + _eig_prep()
        + _eig_vec()
        + _unitarise()
        + _phis()
        + _expq()
        + "".join(_nr_column(c) for c in range(9))
        + "".join(_gj_column(col) for col in range(9))
        + _KERNELS.format(
            W=W,
            LB=LB,
            NBLK=NBLK,
            NH=NH,
            NAN=NAN,
            NWS=NWS,
            NPA=NPA,
            NPHI=NPHI,
            NKK=NKK,
            NR=KK_NR,
            KA=KK_A,
            GS=KK_GS,
            BC=BC,
            BX=BX,
            BOM=BOM,
            BVR=BVR,
            BV=BV,
            BE=BE,
            BO=BO,
            BT=BT,
            BN=BN,
            R=_ROWS["r"][1] * W,
            nr_calls=vnode._ind(nr_calls, 12).rstrip("\n"),
            gj_calls=vnode._ind(gj_calls, 12).rstrip("\n"),
        )
    )


def blocks_from_sites(a: np.ndarray) -> np.ndarray:
    """``(B, n, k)`` per site -> ``(B, nblk, k W)`` lane blocks (the saved layout), the last
    block's unused lanes repeating its last site."""
    b, n, k = a.shape
    nblk = -(-n // W)
    idx = np.minimum(np.arange(nblk * W), n - 1)
    return np.ascontiguousarray(
        a[:, idx].reshape(b, nblk, W, k).transpose(0, 1, 3, 2).reshape(b, nblk, k * W)
    )


def sites_from_blocks(a: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`blocks_from_sites`: ``(B, nblk, k W)`` -> ``(B, n, k)``."""
    b, nblk, kw = a.shape
    k = kw // W
    return a.reshape(b, nblk, k, W).transpose(0, 1, 3, 2).reshape(b, nblk * W, k)[:, :n]


@functools.cache
def kernels():
    """The compiled module (generated, cached on disk, imported on first use)."""
    return fused._load_module(_source(), "stout_core_fwd")
