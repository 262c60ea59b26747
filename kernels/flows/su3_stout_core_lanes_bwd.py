"""Lane-vectorised analytic backward of the SU(3) stout layer's core (the fused path's
:func:`kernels.flows.su3_fused.stout_core`), generated like :mod:`kernels.backends.vnode`.

Same mathematics, arguments (float64 views) and outputs as the scalar
:func:`kernels.flows.su3_fused_kernels.core_backward` (its module docstring has the formulas
and conventions followed here), but ``W = 16`` active sites of one chain at a time, one per
SIMD lane, in real arithmetic (re, im apart): every stage is a generated lane loop ``for l in
range(W)`` of straight-line code with constant indices that reads its inputs from scratch
arrays and writes a different one, every load before every store. Link blocks ``blk[m, c W +
l]`` (``c = 2 (3 i + j) + {0: re, 1: im}``); per-lane scalars in flat arrays ``arr[row W +
l]``: with constant offsets from one base LLVM needs one runtime alias check per array pair
(rows of a 2-D array, whose row stride it does not know, each need their own, and past eight
checks it leaves the loop scalar). The last block of a chain repeats its last site in the
unused lanes and writes nothing for them. Per block, from the forward's saved ``w``,
``V``, ``K_r = N_r^{-1}`` (``g`` the log-det cotangent, ``G`` that of ``new``)::

    e^{i w_j / 2} (cos, sin: kernels.backends.vtrig, vectorised),
    ea_(jk) = e^{i (w_j - w_k) / 2},  Phi_(jk) = ea_(jk) sinc((w_j - w_k) / 2),  1 / Phi,
    D_jk = e^{i w_k} Phi_jk,  e^{-i w_j} - 1;
    phi[i theta_a, i theta_b]: the 15 distinct non-constant values (su3_fused_kernels'
        _DD_SOURCE / _DD_CONJ; 1/2 for two diagonal indices), both branches per lane and a
        select: |t1| >= 0.2 (after ordering |t1| >= |t2|) (exp[x, y] - phi(y)) / x, else the
        Taylor series sum_{m <= 13} i^m h_m(t1, t2) / (m + 2)! (truncation < 1e-20);
    K[a, b] = (T K_r T^+)[a, b] (T the sparse unitary of su3_fused_kernels._to_real: each
        entry at most four entries of K_r), only the 57 entries that R and S read;
    R_pq = sum_j (delta - K_(jp),(jq)) dd_(jq),(jp) - sum_k (delta - K_(qk),(pk)) dd_(pk),(qk),
        dd_ab = phi[i theta_a, i theta_b] / Phi_b (the two j = k = p terms of R_pp cancel and
        are left out);
    S_pq = -(X_pq + conj(Y_pq)) / 2,  X_pq = sum_k K_(qk),(pk) Phi_(pk) - mean_(qp),
        Y_pq = sum_k K_(kq),(kp) Phi_(kp) - mean_(pq),  mean_b = sum_n K_b,(nn) Phi_(nn) / 3;
    dL/dOmega = V [TA(g conj(R) + (V^+ G x^+ V) o D) + g conj(S)] V^+
        (= TA(V t V^+) + V g conj(S) V^+ of the scalar kernel, V unitary);
    C = sum_nu rho_nu P_nu (P_nu = C^up_nu + C^dn_nu, the plane sums),  dL/dC = (dL/dOmega) x,
    dL/dx = G + (V diag(e^{-i w} - 1) V^+)^+ G + (dL/dOmega)^+ C,
    dL/dP_nu = rho_nu dL/dC,  dL/drho_nu = Re tr((dL/dC)^+ P_nu).

The results agree with the scalar kernel to rounding (tests/test_stout_core_lanes_bwd.py), not
bit for bit (other operation order, fused multiply-adds). Floating point:
``fastmath={'contract'}`` only, ``error_model='numpy'`` (the discarded side of a select may
divide by zero). Threads: ``prange`` over ``nch`` work chunks of (chain, block) pairs, each
with its own scratch (:func:`kernels.backends.vnode.nchunks`).
"""

from __future__ import annotations

import functools
import math

from kernels.backends import fused, vnode
from kernels.flows.su3_fused_kernels import _DD_CONJ, _DD_SOURCE

W = vnode.W
LB = vnode.LB
nchunks = vnode.nchunks  # work chunks (each with its own scratch) per (chain, block) pairs

_NJIT = "\n@njit(fastmath={'contract'}, error_model='numpy', cache=True)\n"
_PAIRS = ((0, 1), (0, 2), (1, 2))
_NSERIES = 14  # Taylor terms m = 0..13 of the divided differences (|t1| < 0.2: < 1e-20 left)
_DIAG = (0, 4, 8)

# divided differences computed (a <= b, the first of their value, not both diagonal): row
# 2 m + {0, 1} of ``dv``
_DD_PAIRS = [
    (a, b)
    for a in range(9)
    for b in range(a, 9)
    if _DD_SOURCE[a, b] < 0 and not (a % 4 == 0 and b % 4 == 0)
]
_DD_ROW = {9 * a + b: m for m, (a, b) in enumerate(_DD_PAIRS)}

# scalar rows ``sc``: w_j, g, then rho_nu (rows 4 + nu); ``tg``: cos, sin of w_j / 2
_SC_G = 3
_SC_RHO = 4
# ``pa``: ea (2 a + r), Phi (18 + 2 a + r); ``pb``: 1 / Phi (2 a + r), D (18 + ..), e^{-i w} - 1
_PA_EA, _PA_PHI, _NPA = 0, 18, 36
_PB_IPHI, _PB_D, _PB_EX, _NPB = 0, 18, 36, 42
# ``rs``: R (2 (3 p + q) + r), S (18 + ...)
_RS_R, _RS_S = 0, 18
# link blocks: inputs ``bi`` (V, G, x, then C^up_nu + C^dn_nu), scratch ``bt`` and ``bu``
_BV, _BG, _BX, _BSS = 0, 1, 2, 3
_NBT, _NBU = 9, 3
_NNU_MAX = 4  # planes per link with a straight-line staple sum (more: generic loops)


def _c(i: int, j: int, r: int = 0) -> int:
    return 2 * (3 * i + j) + r


def _lane_func(name: str, args: str, body: list[str]) -> str:
    return _NJIT + f"def {name}({args}):\n    for l in range({W}):\n" + vnode._ind(body, 8)


def _blk(arr: str, m: int | str, c: int) -> str:
    """Component ``c`` of link block ``m`` of ``arr``."""
    return f"{arr}[{m}, {c * W} + l]"


def _r(arr: str, row: int) -> str:
    """Row ``row`` of a flat scratch array of lane rows (constant offsets: one alias-check
    group per array, so that LLVM's runtime checks stay few and the loop vectorises)."""
    return f"{arr}[{row * W} + l]"


# ------------------------------------------------------------------ phases
def _phases() -> str:
    """``phases_a``: ``ea_(jk) = ph_j conj(ph_k)``, ``Phi_(jk) = ea_(jk) sinc((w_j - w_k) / 2)``
    (the scalar ``_sinc_of``: series for ``|d| < 0.05``, the sine ``Im ea``); ``phases_b``:
    ``1 / Phi``, ``D_jk = ph_k^2 Phi_jk``, ``ph_j^-2 - 1`` (``ph_j = e^{i w_j / 2}`` from
    ``tg``; products as the scalar kernel's complex ones)."""
    a = [f"w{j} = {_r('sc', j)}" for j in range(3)]
    a += [f"c{j} = {_r('tg', 2 * j)}" for j in range(3)]
    a += [f"s{j} = {_r('tg', 2 * j + 1)}" for j in range(3)]
    out = []
    for j in range(3):
        for k in range(3):
            n = 3 * j + k
            if j == k:  # ph_j conj(ph_j) = |ph_j|^2 (its imaginary part exactly 0)
                a += [f"er{n} = c{j} * c{j} + s{j} * s{j}", f"ei{n} = 0.0"]
                a += [f"pr{n} = er{n}", f"pi{n} = 0.0"]  # sinc(0) = 1
            else:
                a += [f"er{n} = c{j} * c{k} + s{j} * s{k}", f"ei{n} = s{j} * c{k} - c{j} * s{k}"]
                a += [f"d = 0.5 * (w{j} - w{k})", "d2 = d * d"]
                a += ["sa = 1.0 - d2 / 6.0 * (1.0 - d2 / 20.0 * (1.0 - d2 / 42.0))"]
                a += [f"sb = ei{n} / d", "sn = sa if abs(d) < 0.05 else sb"]
                a += [f"pr{n} = er{n} * sn", f"pi{n} = ei{n} * sn"]
            for row, name in ((_PA_EA, "e"), (_PA_PHI, "p")):
                out += [f"{_r('pa', row + 2 * n)} = {name}r{n}"]
                out += [f"{_r('pa', row + 2 * n + 1)} = {name}i{n}"]
    b = [f"c{j} = {_r('tg', 2 * j)}" for j in range(3)]
    b += [f"s{j} = {_r('tg', 2 * j + 1)}" for j in range(3)]
    b += [f"pr{n} = {_r('pa', _PA_PHI + 2 * n)}" for n in range(9)]
    b += [f"pi{n} = {_r('pa', _PA_PHI + 2 * n + 1)}" for n in range(9)]
    vals = []  # (row of pb, expression)
    for j in range(3):  # ph_j^2, then ph_j^-2 - 1
        b += [f"qr{j} = c{j} * c{j} - s{j} * s{j}", f"qi{j} = c{j} * s{j} + s{j} * c{j}"]
        vals += [(_PB_EX + 2 * j, f"qr{j} - 1.0"), (_PB_EX + 2 * j + 1, f"-qi{j}")]
    for n in range(9):
        b += [f"m{n} = 1.0 / (pr{n} * pr{n} + pi{n} * pi{n})"]
        vals += [(_PB_IPHI + 2 * n, f"pr{n} * m{n}"), (_PB_IPHI + 2 * n + 1, f"-pi{n} * m{n}")]
        k = n % 3
        vals += [
            (_PB_D + 2 * n, f"qr{k} * pr{n} - qi{k} * pi{n}"),
            (_PB_D + 2 * n + 1, f"qr{k} * pi{n} + qi{k} * pr{n}"),
        ]
    b += [f"o{k} = {expr}" for k, (_, expr) in enumerate(vals)]  # every load before a store
    b += [f"{_r('pb', row)} = o{k}" for k, (row, _) in enumerate(vals)]
    return _lane_func("phases_a", "sc, tg, pa", a + out) + _lane_func("phases_b", "tg, pa, pb", b)


# ------------------------------------------------------------------ divided differences
_DD_GROUP = 1  # divided differences per lane loop


def _divdiff_lines(m: int, a: int, b: int) -> tuple[list[str], list[str]]:
    """``dv[2 m + {0, 1}] = phi[i theta_a, i theta_b]`` (the scalar ``_dd_phi`` with both
    branches and selects): lines and stores."""
    inv = [1.0 / math.factorial(k + 2) for k in range(_NSERIES)]
    x = f"_{m}"
    ja, ka, jb, kb = a // 3, a % 3, b // 3, b % 3
    t1 = "0.0" if ja == ka else f"{_r('sc', ja)} - {_r('sc', ka)}"
    t2 = "0.0" if jb == kb else f"{_r('sc', jb)} - {_r('sc', kb)}"
    lines = [f"t1{x} = {t1}", f"t2{x} = {t2}"]
    for name, row in (("e1", _PA_EA + 2 * a), ("e2", _PA_EA + 2 * b)):
        lines += [f"{name}r{x} = {_r('pa', row)}", f"{name}i{x} = {_r('pa', row + 1)}"]
    for name, row in (("p1", _PA_PHI + 2 * a), ("p2", _PA_PHI + 2 * b)):
        lines += [f"{name}r{x} = {_r('pa', row)}", f"{name}i{x} = {_r('pa', row + 1)}"]
    lines.append(f"sw{x} = abs(t1{x}) < abs(t2{x})")  # order |u1| >= |u2|
    for out, one, two in (
        ("u1", "t2", "t1"),
        ("u2", "t1", "t2"),
        ("f1r", "e2r", "e1r"),
        ("f1i", "e2i", "e1i"),
        ("f2r", "e1r", "e2r"),
        ("f2i", "e1i", "e2i"),
        ("q2r", "p1r", "p2r"),
        ("q2i", "p1i", "p2i"),
    ):
        lines.append(f"{out}{x} = {one}{x} if sw{x} else {two}{x}")
    u1, u2 = f"u1{x}", f"u2{x}"
    f1r, f1i, f2r, f2i = (f"{n}{x}" for n in ("f1r", "f1i", "f2r", "f2i"))
    lines += [
        # direct: exp[x, y] = e1 e2 sinc((u1 - u2) / 2), the sine from Im(e1 conj(e2))
        f"sd{x} = {f1i} * {f2r} - {f1r} * {f2i}",
        f"d{x} = 0.5 * ({u1} - {u2})",
        f"dd{x} = d{x} * d{x}",
        f"sa{x} = 1.0 - dd{x} / 6.0 * (1.0 - dd{x} / 20.0 * (1.0 - dd{x} / 42.0))",
        f"sb{x} = sd{x} / d{x}",
        f"sn{x} = sa{x} if abs(d{x}) < 0.05 else sb{x}",
        f"xr{x} = ({f1r} * {f2r} - {f1i} * {f2i}) * sn{x} - q2r{x}",
        f"xi{x} = ({f1r} * {f2i} + {f1i} * {f2r}) * sn{x} - q2i{x}",
        f"c{x} = -1.0 / {u1}",  # (x + i y) (i c) = -y c + i x c
        # series: h_k = u1^k + u2 h_{k-1}, sum_k i^k h_k / (k + 2)!
        f"h{x} = 1.0",
        f"p{x} = 1.0",
        f"sr{x} = {inv[0]!r}",
        f"si{x} = 0.0",
    ]
    for k in range(1, _NSERIES):
        lines += [f"p{x} = p{x} * {u1}", f"h{x} = p{x} + {u2} * h{x}"]
        tgt = f"sr{x}" if k % 2 == 0 else f"si{x}"
        sign = "+" if k % 4 in (0, 1) else "-"
        lines.append(f"{tgt} = {tgt} {sign} h{x} * {inv[k]!r}")
    lines += [
        f"dr{x} = -xi{x} * c{x}",
        f"di{x} = xr{x} * c{x}",
        f"big{x} = abs({u1}) >= 0.2",
        f"vr{x} = dr{x} if big{x} else sr{x}",
        f"vi{x} = di{x} if big{x} else si{x}",
    ]
    stores = [f"{_r('dv', 2 * m)} = vr{x}", f"{_r('dv', 2 * m + 1)} = vi{x}"]
    return lines, stores


def _divdiff() -> tuple[str, list[str]]:
    """Lane loops of the 15 computed divided differences, ``_DD_GROUP`` per loop, and their
    calls."""
    src, calls = "", []
    for g in range(0, len(_DD_PAIRS), _DD_GROUP):
        lines, stores = [], []
        for m in range(g, min(g + _DD_GROUP, len(_DD_PAIRS))):
            ln, st = _divdiff_lines(m, *_DD_PAIRS[m])
            lines += ln
            stores += st
        name = f"divdiff{g // _DD_GROUP}"
        src += _lane_func(name, "sc, pa, dv", lines + stores)
        calls.append(f"{name}(sc, pa, dv)")
    return src, calls


# ------------------------------------------------------------------ R and S
def _t_matrix() -> list[list[complex]]:
    """``T`` of :func:`kernels.flows.su3_fused_kernels._to_real` without the ``1/sqrt 2`` of the
    pair columns 3..8 (the factor is applied per entry of ``K``)."""
    t = [[0j] * 9 for _ in range(9)]
    for j in range(3):
        t[4 * j][j] = 1j
    for p, (j, k) in enumerate(_PAIRS):
        t[3 * j + k][3 + 2 * p] = 1.0
        t[3 * k + j][3 + 2 * p] = -1.0
        t[3 * j + k][4 + 2 * p] = 1j
        t[3 * k + j][4 + 2 * p] = 1j
    return t


_T = _t_matrix()


class _Body:
    """Lines of one lane loop of ``R``, ``S``: loads and ``K`` entries named once, on demand;
    the stores kept for the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stores: list[str] = []
        self.have: set[str] = set()

    def load(self, name: str, src: str) -> str:
        if name not in self.have:
            self.have.add(name)
            self.lines.append(f"{name} = {src}")
        return name

    def k(self, a: int, b: int) -> tuple[str, str]:
        """``K[a, b] = sum_ij T[a, i] K_r[i, j] conj(T[b, j])`` as names ``k{a}_{b}r/i``."""
        name = f"k{a}_{b}"
        if name in self.have:
            return name + "r", name + "i"
        self.have.add(name)
        parts: dict[str, list[tuple[int, str]]] = {"r": [], "i": []}
        scale = 1.0
        for i in range(9):
            if _T[a][i] == 0:
                continue
            for j in range(9):
                if _T[b][j] == 0:
                    continue
                coef = _T[a][i] * _T[b][j].conjugate()
                scale = (1.0, 1.0 / math.sqrt(2.0), 0.5)[(i >= 3) + (j >= 3)]
                q = self.load(f"q{i}_{j}", f"{_r('kr', 9 * i + j)}")
                if coef.real:
                    parts["r"].append((int(coef.real), q))
                if coef.imag:
                    parts["i"].append((int(coef.imag), q))
        for r in "ri":
            expr = ""
            for sign, q in parts[r]:
                expr += (" + " if sign > 0 else " - ") if expr else ("" if sign > 0 else "-")
                expr += q
            expr = expr or "0.0"
            if scale != 1.0 and parts[r]:
                expr = f"{scale!r} * ({expr})"
            self.lines.append(f"{name}{r} = {expr}")
        return name + "r", name + "i"

    def phi(self, a: int) -> tuple[str, str]:
        return (
            self.load(f"ph{a}r", f"{_r('pa', _PA_PHI + 2 * a)}"),
            self.load(f"ph{a}i", f"{_r('pa', _PA_PHI + 2 * a + 1)}"),
        )

    def iphi(self, a: int) -> tuple[str, str]:
        return (
            self.load(f"ip{a}r", f"{_r('pb', _PB_IPHI + 2 * a)}"),
            self.load(f"ip{a}i", f"{_r('pb', _PB_IPHI + 2 * a + 1)}"),
        )

    def val(self, a: int, b: int) -> tuple[str, str]:
        """``phi[i theta_a, i theta_b]`` (symmetric): a constant, a row of ``dv`` or its
        conjugate."""
        a, b = min(a, b), max(a, b)
        if a % 4 == 0 and b % 4 == 0:
            return "0.5", "0.0"
        src = int(_DD_SOURCE[a, b])
        m, conj = (_DD_ROW[9 * a + b], False) if src < 0 else (_DD_ROW[src], bool(_DD_CONJ[a, b]))
        re = self.load(f"v{m}r", f"{_r('dv', 2 * m)}")
        im = self.load(f"v{m}i", f"{_r('dv', 2 * m + 1)}")
        return re, (f"(-{im})" if conj else im)

    def mean(self, bb: int) -> tuple[str, str]:
        """``sum_n K[bb, (nn)] Phi_(nn) / 3``."""
        name = f"mn{bb}"
        if name not in self.have:
            self.have.add(name)
            tr, ti = [], []
            for n in _DIAG:
                kr_, ki_ = self.k(bb, n)
                pr, pi = self.phi(n)
                tr.append(f"{kr_} * {pr} - {ki_} * {pi}")
                ti.append(f"{kr_} * {pi} + {ki_} * {pr}")
            self.lines.append(f"{name}r = ({' + '.join(tr)}) / 3.0")
            self.lines.append(f"{name}i = ({' + '.join(ti)}) / 3.0")
        return name + "r", name + "i"

    def r_entry(self, p: int, q: int) -> None:
        """``R_pq`` into ``rs``."""
        terms = []
        for j in range(3):  # + (delta - K[(jp), (jq)]) dd[(jq), (jp)]
            if not (p == q and j == p):
                terms.append((1, (3 * j + p, 3 * j + q), (3 * j + q, 3 * j + p)))
        for k in range(3):  # - (delta - K[(qk), (pk)]) dd[(pk), (qk)]
            if not (p == q and k == p):
                terms.append((-1, (3 * q + k, 3 * p + k), (3 * p + k, 3 * q + k)))
        acc_r, acc_i = [], []
        for n, (sign, (kb, ka), (da, db)) in enumerate(terms):
            vr, vi = self.val(da, db)
            ir, ii = self.iphi(db)
            t = f"t{p}{q}_{n}"
            if vr == "0.5":
                self.lines += [f"{t}xr = 0.5 * {ir}", f"{t}xi = 0.5 * {ii}"]
            else:
                self.lines += [
                    f"{t}xr = {vr} * {ir} - {vi} * {ii}",
                    f"{t}xi = {vr} * {ii} + {vi} * {ir}",
                ]
            kr_, ki_ = self.k(kb, ka)
            mr = f"(1.0 - {kr_})" if kb == ka else f"(-{kr_})"
            # (mr - i ki) (xr + i xi)
            s = "" if sign > 0 else "-"
            acc_r.append(f"{s}({mr} * {t}xr + {ki_} * {t}xi)")
            acc_i.append(f"{s}({mr} * {t}xi - {ki_} * {t}xr)")
        self.lines.append(f"r{p}{q}r = " + " + ".join(acc_r))
        self.lines.append(f"r{p}{q}i = " + " + ".join(acc_i))
        self.stores += [
            f"{_r('rs', _RS_R + _c(p, q, 0))} = r{p}{q}r",
            f"{_r('rs', _RS_R + _c(p, q, 1))} = r{p}{q}i",
        ]

    def _k_phi(self, pairs: list[tuple[int, int]]) -> tuple[list[str], list[str]]:
        """Real and imaginary parts of the terms ``K[a, b] Phi_b`` for the index pairs."""
        re, im = [], []
        for a, b in pairs:
            kr_, ki_ = self.k(a, b)
            pr, pi = self.phi(b)
            re.append(f"{kr_} * {pr} - {ki_} * {pi}")
            im.append(f"{kr_} * {pi} + {ki_} * {pr}")
        return re, im

    def s_entry(self, p: int, q: int) -> None:
        """``S_pq`` into ``rs``."""
        xr, xi = self._k_phi([(3 * q + k, 3 * p + k) for k in range(3)])  # K[(qk),(pk)] Phi_(pk)
        yr, yi = self._k_phi([(3 * k + q, 3 * k + p) for k in range(3)])  # K[(kq),(kp)] Phi_(kp)
        mxr, mxi = self.mean(3 * q + p)
        myr, myi = self.mean(3 * p + q)
        self.lines.append(f"s{p}{q}r = -0.5 * (({' + '.join(xr + yr)}) - {mxr} - {myr})")
        self.lines.append(
            f"s{p}{q}i = -0.5 * (({' + '.join(xi)}) - ({' + '.join(yi)}) - {mxi} + {myi})"
        )
        self.stores += [
            f"{_r('rs', _RS_S + _c(p, q, 0))} = s{p}{q}r",
            f"{_r('rs', _RS_S + _c(p, q, 1))} = s{p}{q}i",
        ]


def _rs_funcs() -> tuple[str, list[str]]:
    """Lane loops of ``R``, ``S`` (one per unordered pair ``p <= q``: ``R_pq, R_qp, S_pq,
    S_qp``), and their calls."""
    src, calls = "", []
    for p in range(3):
        for q in range(p, 3):
            body = _Body()
            for pp, qq in ((p, q),) if p == q else ((p, q), (q, p)):
                body.r_entry(pp, qq)
                body.s_entry(pp, qq)
            src += _lane_func(f"rs{p}{q}", "kr, dv, pa, pb, rs", body.lines + body.stores)
            calls.append(f"rs{p}{q}(kr, dv, pa, pb, rs)")
    return src, calls


# ------------------------------------------------------------------ Omega's cotangent
def _omega_funcs() -> str:
    """``omega_t``: ``t = g conj(R) + O o D`` (``O`` in ``bt[2]``) into ``bu[0]``;
    ``omega_ta``: ``TA(t) + g conj(S)`` into ``bt[3]``; ``vscale``: ``V diag(e^{-i w} - 1)``
    into ``bt[5]``; ``csum<nnu>``: ``C = sum_nu rho_nu (C^up_nu + C^dn_nu)`` into ``bu[2]``;
    ``rho_cot``: ``gr[nu] = Re tr((dL/dC)^+ (C^up_nu + C^dn_nu))`` (``dL/dC`` in ``bt[8]``)."""
    t = [f"g = {_r('sc', _SC_G)}"]
    outs = []
    for i in range(3):
        for j in range(3):
            n = 3 * i + j
            t += [f"or{n} = {_blk('bt', 2, _c(i, j, 0))}", f"oi{n} = {_blk('bt', 2, _c(i, j, 1))}"]
            t += [
                f"dr{n} = {_r('pb', _PB_D + 2 * n)}",
                f"di{n} = {_r('pb', _PB_D + 2 * n + 1)}",
            ]
            t += [
                f"rr{n} = {_r('rs', _RS_R + 2 * n)}",
                f"ri{n} = {_r('rs', _RS_R + 2 * n + 1)}",
            ]
            t += [
                f"xr{n} = g * rr{n} + or{n} * dr{n} - oi{n} * di{n}",
                f"xi{n} = or{n} * di{n} + oi{n} * dr{n} - g * ri{n}",
            ]
            outs += [
                f"{_blk('bu', 0, _c(i, j, 0))} = xr{n}",
                f"{_blk('bu', 0, _c(i, j, 1))} = xi{n}",
            ]
    ta = [f"g = {_r('sc', _SC_G)}"]
    ta += [
        f"m{i}{j}{r} = {_blk('bu', 0, _c(i, j, k))}"
        for i in range(3)
        for j in range(3)
        for k, r in enumerate("ri")
    ]
    ta += [
        f"s{i}{j}{r} = {_r('rs', _RS_S + _c(i, j, k))}"
        for i in range(3)
        for j in range(3)
        for k, r in enumerate("ri")
    ]
    ta.append("tr = (m00i + m11i + m22i) / 3.0")
    ota = []
    for i in range(3):
        for j in range(3):
            if i == j:
                ta += [f"y{i}{j}r = g * s{i}{j}r", f"y{i}{j}i = (m{i}{i}i - tr) - g * s{i}{j}i"]
            else:
                ta += [
                    f"y{i}{j}r = 0.5 * (m{i}{j}r - m{j}{i}r) + g * s{i}{j}r",
                    f"y{i}{j}i = 0.5 * (m{i}{j}i + m{j}{i}i) - g * s{i}{j}i",
                ]
            ota += [f"{_blk('bt', 3, _c(i, j, k))} = y{i}{j}{r}" for k, r in enumerate("ri")]
    vs = [
        f"v{i}{j}{r} = {_blk('bi', _BV, _c(i, j, k))}"
        for i in range(3)
        for j in range(3)
        for k, r in enumerate("ri")
    ]
    vs += [
        f"x{j}{r} = {_r('pb', _PB_EX + 2 * j + k)}" for j in range(3) for k, r in enumerate("ri")
    ]
    ovs = []
    for i in range(3):
        for j in range(3):
            vs += [
                f"z{i}{j}r = v{i}{j}r * x{j}r - v{i}{j}i * x{j}i",
                f"z{i}{j}i = v{i}{j}r * x{j}i + v{i}{j}i * x{j}r",
            ]
            ovs += [f"{_blk('bt', 5, _c(i, j, k))} = z{i}{j}{r}" for k, r in enumerate("ri")]
    dot = " + ".join(f"bt[8, {c * W} + l] * bi[3 + nu, {c * W} + l]" for c in range(18))
    rho = _NJIT + "def rho_cot(bt, bi, nnu, gr):\n    for nu in range(nnu):\n"
    rho += f"        for l in range({W}):\n            gr[nu, l] = {dot}\n"
    csum = ""
    for nnu in range(1, _NNU_MAX + 1):  # C = sum_nu rho_nu (C^up_nu + C^dn_nu) into bu[2]
        body = [f"r{nu} = {_r('sc', _SC_RHO + nu)}" for nu in range(nnu)]
        for c in range(18):
            terms = " + ".join(f"r{nu} * {_blk('bi', _BSS + nu, c)}" for nu in range(nnu))
            body.append(f"{_blk('bu', 2, c)} = {terms}")
        csum += _lane_func(f"csum{nnu}", "sc, bi, bu", body)
    return (
        rho
        + csum
        + _lane_func("omega_t", "sc, pb, rs, bt, bu", t + outs)
        + _lane_func("omega_ta", "sc, rs, bu, bt", ta + ota)
        + _lane_func("vscale", "bi, pb, bt", vs + ovs)
    )


def _csum_dispatch() -> list[str]:
    """The staple sum's call: the lane loop for ``nnu``, else the generic loops."""
    lines = []
    for nnu in range(_NNU_MAX, 0, -1):
        lines += [
            f"{'if' if nnu == _NNU_MAX else 'elif'} nnu == {nnu}:",
            f"    csum{nnu}(sc, bi, bu)",
        ]
    return lines + ["else:", "    staple_sum(sc, bi, nnu, bu)"]


_KERNELS = """

@njit(cache=True)
def gather(p_, rho, x, wsave, vsave, kinv, gnew, gld, b, s0, sc, kr, bi):
    \"\"\"Lane-major copies of one block's inputs (lane l: site min(s0 + l, ns - 1)), one
    source array per loop.\"\"\"
    ns = x.shape[1]
    nnu = rho.shape[1]
    q = s0 // {W}
    for k in range(81 * {W}):  # the forward's saved blocks: lane layout already
        kr[k] = kinv[b, q, k]
    for k in range(18 * {W}):
        bi[0, k] = vsave[b, q, k]
    for l in range({W}):
        s = min(s0 + l, ns - 1)
        for c in range(18):
            bi[1, c * {W} + l] = gnew[b, s, c]
    for l in range({W}):
        s = min(s0 + l, ns - 1)
        for c in range(18):
            bi[2, c * {W} + l] = x[b, s, c]
    for nu in range(nnu):
        for l in range({W}):
            s = min(s0 + l, ns - 1)
            for c in range(18):
                bi[3 + nu, c * {W} + l] = p_[b, nu, s, c]
    for l in range({W}):
        s = min(s0 + l, ns - 1)
        for j in range(3):
            sc[j * {W} + l] = wsave[b, q, j * {W} + l]
        sc[3 * {W} + l] = gld[b, s]
        for nu in range(nnu):
            sc[(4 + nu) * {W} + l] = rho[b, nu, s]


@njit(fastmath={{'contract'}}, error_model='numpy', cache=True)
def trig(sc, tg):
    \"\"\"cos, sin of w_j / 2 (kernels.backends.vtrig: vectorised; |w| is far below its
    1e5 limit, |w_j| <= 2 |Omega|_F).\"\"\"
    for j in range(3):
        for l in range({W}):
            sn, cs = vsincos(0.5 * sc[j * {W} + l])
            tg[2 * j * {W} + l] = cs
            tg[(2 * j + 1) * {W} + l] = sn


@njit(fastmath={{'contract'}}, cache=True)
def staple_sum(sc, bi, nnu, bu):
    \"\"\"bu[2] = C = sum_nu rho_nu (C^up_nu + C^dn_nu) for any nnu (csum<nnu>: the same,
    straight-line, for nnu <= {NNU_MAX}).\"\"\"
    for c in range(18):
        for l in range({W}):
            bu[2, c * {W} + l] = sc[4 * {W} + l] * bi[3, c * {W} + l]
    for nu in range(1, nnu):
        for c in range(18):
            for l in range({W}):
                r = sc[(4 + nu) * {W} + l]
                bu[2, c * {W} + l] = bu[2, c * {W} + l] + r * bi[3 + nu, c * {W} + l]


@threaded_kernel(fastmath={{'contract'}}, error_model='numpy', cache=True)
def core_backward(p_, rho, x, wsave, vsave, kinv, gnew, gld, gs, grho, gx, nch):
    \"\"\"Cotangents gs (B, nnu, n, 18) of the plane sums, grho
    (B, nnu, n), gx (B, n, 18) from gnew (B, n, 18), gld (B, n) and the forward's saved
    wsave (B, nblk, 3 W), vsave (B, nblk, 18 W), kinv (B, nblk, 81 W) (lane blocks:
    component-major, lane-minor); plane sums p_ (B, nnu, n, 18),
    rho (B, nnu, n), x (B, n, 18); nch work chunks of (chain, block) pairs.\"\"\"
    nbat, ns = x.shape[0], x.shape[1]
    nnu = rho.shape[1]
    nblk = (ns + {W} - 1) // {W}
    tot = nbat * nblk
    for ch in prange(nch):
        sc = np.empty((4 + nnu) * {W})
        tg = np.empty(6 * {W})
        kr = np.empty(81 * {W})
        pa = np.empty({NPA} * {W})
        pb = np.empty({NPB} * {W})
        dv = np.empty({NDV} * {W})
        rs = np.empty(36 * {W})
        gr = np.empty((nnu, {W}))
        bi = np.empty((3 + nnu, {LB}))
        bt = np.empty(({NBT}, {LB}))
        bu = np.empty(({NBU}, {LB}))
        for q in range(ch * tot // nch, (ch + 1) * tot // nch):
            b = q // nblk
            s0 = (q % nblk) * {W}
            gather(p_, rho, x, wsave, vsave, kinv, gnew, gld, b, s0, sc, kr, bi)
            trig(sc, tg)
            phases_a(sc, tg, pa)
            phases_b(tg, pa, pb)
{dd_calls}
{rs_calls}
            mm_nd(bi, 1, bi, 2, bt, 0)  # G x^+
            mm_nn(bt, 0, bi, 0, bt, 1)
            mm_dn(bi, 0, bt, 1, bt, 2)  # O = V^+ G x^+ V
            omega_t(sc, pb, rs, bt, bu)
            omega_ta(sc, rs, bu, bt)
            mm_nn(bi, 0, bt, 3, bt, 4)
            mm_nd(bt, 4, bi, 0, bu, 1)  # dL/dOmega
            vscale(bi, pb, bt)
            mm_nd(bt, 5, bi, 0, bt, 6)  # exp(Q) - 1
{csum_calls}
            mm_dn(bt, 6, bi, 1, bt, 7)
            mm_dn_acc(bu, 1, bu, 2, bt, 7)  # dL/dx - G
            mm_nn(bu, 1, bi, 2, bt, 8)  # dL/dC
            rho_cot(bt, bi, nnu, gr)
            for l in range(min({W}, ns - s0)):
                s = s0 + l
                for c in range(18):
                    gx[b, s, c] = bt[7, c * {W} + l] + bi[1, c * {W} + l]
                for nu in range(nnu):
                    r = sc[(4 + nu) * {W} + l]
                    grho[b, nu, s] = gr[nu, l]
                    for c in range(18):
                        gs[b, nu, s, c] = r * bt[8, c * {W} + l]
"""


def _source() -> str:
    rs_src, rs_calls = _rs_funcs()
    dd_src, dd_calls = _divdiff()
    return (
        fused._HEADER
        + "\nfrom kernels.backends.vtrig import vsincos\n"
        + vnode._mm_func("mm_nn", False, False, False)
        + vnode._mm_func("mm_nd", False, True, False)
        + vnode._mm_func("mm_dn", True, False, False)
        + vnode._mm_func("mm_dn_acc", True, False, True)
        + _phases()
        + dd_src
        + rs_src
        + _omega_funcs()
        + _KERNELS.format(
            W=W,
            LB=LB,
            NPA=_NPA,
            NPB=_NPB,
            NDV=2 * len(_DD_PAIRS),
            NBT=_NBT,
            NBU=_NBU,
            NNU_MAX=_NNU_MAX,
            dd_calls=vnode._ind(dd_calls, 12).rstrip("\n"),
            csum_calls=vnode._ind(_csum_dispatch(), 12).rstrip("\n"),
            rs_calls=vnode._ind(rs_calls, 12).rstrip("\n"),
        )
    )


@functools.cache
def kernels():
    """The compiled module (generated, cached on disk, imported on first use)."""
    return fused._load_module(_source(), "stout_core_bwd")
