"""numba kernels of the SU(3) stout layer core (imported only when numba is present).

Per active link, complex128, layout ``S[b, i, s, 3, 3]`` (the six staples, ``C^up_nu,
C^dn_nu`` for ``nu != mu`` in order), ``rho[b, nu, s]`` (real), ``x[b, s, 3, 3]``::

    C = sum_nu rho_nu (S_{2nu} + S_{2nu+1}),  Omega = C x^+,  Q = TA(Omega),
    new = exp(Q) x,  ld = log det(1 + phi(-ad_Q) L),  L(w) = TA(Omega w)

(:mod:`kernels.flows.su3`). Eigenbasis formulation: ``i Q = V diag(w) V^+`` (LAPACK ``eigh``),
``exp(Q) = V diag(e^{-i w}) V^+``. On the complexified algebra ``gl(3, C)`` in the basis
``E_jk = V e_j e_k^+ V^+`` (index ``a = 3 j + k``) ``-ad_Q`` is diagonal with eigenvalues
``i theta_a``, ``theta_(jk) = w_j - w_k``, so ``phi(-ad_Q) = diag(Phi)``, ``Phi_a = phi(i
theta_a) = e^{i theta_a / 2} sinc(theta_a / 2)``; ``L`` is complex-linear in ``w``
(``TA(Omega w) = (Omega w + w Omega^+)/2 - trace``), with ``O = V^+ Omega V``::

    (P L)[(jk),(lm)] = L9 - delta_jk/3 sum_n L9[(nn),(lm)],
    L9[(jk),(lm)] = (O_jl delta_km + delta_jl conj(O_km)) / 2,
    N = 1 + diag(Phi) P L    (9 x 9 complex),   ld = log |det N|.

``det N = det_{su(3)}(1 + phi(-ad_Q) L)``: the determinant of a real-linear map equals that
of its complexification on ``sl(3, C)``, and on ``gl(3) = sl(3) + C 1`` ``N`` is block
triangular with ``1`` on the trace part.

Backward (first order; torch's convention ``d/dRe + i d/dIm`` for the complex inputs), with
``K = N^{-1}``, ``g`` the log-det cotangent, ``G`` that of ``new``:

* ``d ld = Re tr(K dN)``; through ``Phi`` (Daleckii-Krein on the diagonal ``-ad_Q``, direction
  ``-ad_{dQ}``) ``H_ab = (delta_ab - K_ba) / Phi_b * phi[i theta_a, i theta_b]`` (using
  ``diag(Phi) P L K = 1 - K``), ``R_pq = sum_j H_(jq),(jp) - sum_k H_(pk),(qk)``;
* through ``L``: ``W_ab = K_ba Phi_a`` with the trace projection's adjoint on the rows
  ``(nn)``, ``S_pq = (sum_k W_(pk),(qk) + conj(sum_j W_(jp),(jq))) / 2``;
* ``exp``: ``L_exp(Q^+, G x^+) = V [(V^+ G x^+ V) o D] V^+``,
  ``D_jk = e^{i (w_j + w_k)/2} sinc((w_j - w_k)/2)`` (as :class:`kernels.flows.su3._SU3Exp`);
* ``dL/dQ = V [g conj(R) + (V^+ G x^+ V) o D] V^+``, ``dL/dOmega = TA(dL/dQ) + g V conj(S)
  V^+``, ``dL/dC = (dL/dOmega) x``, ``dL/dx = exp(Q)^+ G + (dL/dOmega)^+ C``,
  ``dL/dS_{2nu} = dL/dS_{2nu+1} = rho_nu dL/dC``, ``dL/drho_nu = Re tr((dL/dC)^+ (S_{2nu} +
  S_{2nu+1}))``.

Divided differences of ``phi`` at ``x = i t1``, ``y = i t2``: ``(exp[x, y] - phi(y)) / x``
(Leibniz rule for ``z phi(z) = e^z - 1``; ``exp[x, y] = e^{(x+y)/2} sinc((t1 - t2)/2)``) with
``|t1| >= |t2|``, ``|t1| >= 0.05``, else the Taylor series ``sum_n h_{n-1}(x, y) / (n+1)!``.
Work is split in chunks of sites (``numba.prange``, threads = ``torch.get_num_threads()``).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
from numba import njit, prange

# as kernels.backends.fused: workers that sleep between kernels (the default OpenMP layer
# leaves them spinning against torch's threads); NUMBA_THREADING_LAYER still wins
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

CHUNK = 64


def set_threads() -> None:
    """numba threads = torch's (at most numba's maximum)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True)
def _sinc(t):
    if abs(t) < 1e-4:
        t2 = t * t
        return 1.0 - t2 / 6.0 + t2 * t2 / 120.0
    return math.sin(t) / t


@njit(cache=True)
def _phi_i(t):
    """``phi(i t) = (e^{i t} - 1) / (i t)``."""
    return complex(math.cos(0.5 * t), math.sin(0.5 * t)) * _sinc(0.5 * t)


@njit(cache=True)
def _dd_phi(t1, t2):
    """First divided difference ``phi[i t1, i t2]``."""
    if abs(t1) < abs(t2):
        t1, t2 = t2, t1
    if abs(t1) >= 0.05:
        h = 0.5 * (t1 + t2)
        de = complex(math.cos(h), math.sin(h)) * _sinc(0.5 * (t1 - t2))
        return (de - _phi_i(t2)) / complex(0.0, t1)
    x, y = complex(0.0, t1), complex(0.0, t2)
    out = 0.0j
    hn = 1.0 + 0.0j  # h_{n-1}(x, y), n = 1
    xn = 1.0 + 0.0j  # x^{n-1}
    fact = 2.0  # (n+1)!
    for n in range(1, 14):
        out += hn / fact
        xn = xn * x
        hn = xn + y * hn
        fact *= n + 2
    return out


@njit(cache=True)
def _context(s_, rho, x, b, s, c, om):
    """``C`` and ``Omega = C x^+`` at site ``(b, s)`` into ``c``, ``om``."""
    nnu = rho.shape[1]
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            for nu in range(nnu):
                acc += rho[b, nu, s] * (s_[b, 2 * nu, s, i, j] + s_[b, 2 * nu + 1, s, i, j])
            c[i, j] = acc
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            for k in range(3):
                acc += c[i, k] * x[b, s, j, k].conjugate()
            om[i, j] = acc


@njit(cache=True)
def _ta(m, out):
    """``out = TA(m)``."""
    for i in range(3):
        for j in range(3):
            out[i, j] = 0.5 * (m[i, j] - m[j, i].conjugate())
    tr = (out[0, 0] + out[1, 1] + out[2, 2]) / 3.0
    for i in range(3):
        out[i, i] -= tr


@njit(cache=True)
def _rotate_in(v, m, t, out):
    """``out = V^+ m V`` (``t`` scratch)."""
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            for k in range(3):
                acc += m[i, k] * v[k, j]
            t[i, j] = acc
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            for k in range(3):
                acc += v[k, i].conjugate() * t[k, j]
            out[i, j] = acc


@njit(cache=True)
def _rotate_out(v, m, t, out):
    """``out = V m V^+`` (``t`` scratch)."""
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            for k in range(3):
                acc += m[i, k] * v[j, k].conjugate()
            t[i, j] = acc
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            for k in range(3):
                acc += v[i, k] * t[k, j]
            out[i, j] = acc


@njit(cache=True)
def _build_n(o, w, phi, n):
    """``N = 1 + diag(Phi) P L`` (module docstring) from ``O = V^+ Omega V`` and ``w``."""
    for j in range(3):
        for k in range(3):
            phi[3 * j + k] = _phi_i(w[j] - w[k])
    for j in range(3):
        for k in range(3):
            a = 3 * j + k
            for l in range(3):
                for m in range(3):
                    val = 0.0j
                    if k == m:
                        val += 0.5 * o[j, l]
                    if j == l:
                        val += 0.5 * o[k, m].conjugate()
                    if j == k:
                        val -= (0.5 / 3.0) * (o[m, l] + o[l, m].conjugate())
                    n[a, 3 * l + m] = (1.0 if a == 3 * l + m else 0.0) - phi[a] * val


@njit(cache=True)
def _log_abs_det(n):
    """``log |det n|`` of a 9x9 complex matrix by LU with partial pivoting (in place)."""
    out = 0.0
    for col in range(9):
        piv, best = col, abs(n[col, col])
        for r in range(col + 1, 9):
            if abs(n[r, col]) > best:
                piv, best = r, abs(n[r, col])
        if piv != col:
            for k in range(9):
                n[col, k], n[piv, k] = n[piv, k], n[col, k]
        out += math.log(best)
        inv = 1.0 / n[col, col]
        for r in range(col + 1, 9):
            f = n[r, col] * inv
            if f != 0.0:
                for k in range(col + 1, 9):
                    n[r, k] -= f * n[col, k]
    return out


@njit(cache=True)
def _inverse(n, out):
    """``out = n^{-1}`` (9x9 complex) by Gauss-Jordan with partial pivoting (``n`` destroyed)."""
    for i in range(9):
        for j in range(9):
            out[i, j] = 1.0 if i == j else 0.0
    for col in range(9):
        piv, best = col, abs(n[col, col])
        for r in range(col + 1, 9):
            if abs(n[r, col]) > best:
                piv, best = r, abs(n[r, col])
        if piv != col:
            for k in range(9):
                n[col, k], n[piv, k] = n[piv, k], n[col, k]
                out[col, k], out[piv, k] = out[piv, k], out[col, k]
        inv = 1.0 / n[col, col]
        for k in range(9):
            n[col, k] *= inv
            out[col, k] *= inv
        for r in range(9):
            if r != col:
                f = n[r, col]
                if f != 0.0:
                    for k in range(9):
                        n[r, k] -= f * n[col, k]
                        out[r, k] -= f * out[col, k]


@njit(parallel=True, cache=True)
def core_forward(s_, rho, x, new, ld, wsave, vsave):
    """``new = exp(Q) x`` and ``ld = log det J`` per site; saves ``w``, ``V`` for the backward."""
    nb, ns = x.shape[0], x.shape[1]
    total = nb * ns
    nchunk = (total + CHUNK - 1) // CHUNK
    for ch in prange(nchunk):
        c = np.empty((3, 3), np.complex128)
        om = np.empty((3, 3), np.complex128)
        h = np.empty((3, 3), np.complex128)
        t = np.empty((3, 3), np.complex128)
        o = np.empty((3, 3), np.complex128)
        e = np.empty((3, 3), np.complex128)
        phi = np.empty(9, np.complex128)
        n = np.empty((9, 9), np.complex128)
        for it in range(ch * CHUNK, min(total, (ch + 1) * CHUNK)):
            b, s = it // ns, it % ns
            _context(s_, rho, x, b, s, c, om)
            _ta(om, t)
            for i in range(3):
                for j in range(3):
                    h[i, j] = 1j * t[i, j]
            w, v = np.linalg.eigh(h)
            for i in range(3):
                wsave[b, s, i] = w[i]
                for j in range(3):
                    vsave[b, s, i, j] = v[i, j]
            # exp(Q) = V diag(e^{-i w}) V^+
            for i in range(3):
                for j in range(3):
                    t[i, j] = 0.0
                t[i, i] = complex(math.cos(w[i]), -math.sin(w[i]))
            _rotate_out(v, t, o, e)
            for i in range(3):
                for j in range(3):
                    acc = 0.0j
                    for k in range(3):
                        acc += e[i, k] * x[b, s, k, j]
                    new[b, s, i, j] = acc
            _rotate_in(v, om, t, o)
            _build_n(o, w, phi, n)
            ld[b, s] = _log_abs_det(n)


@njit(cache=True)
def _ld_cotangents(k_, phi, w, dd, n, m, gc):
    """Log-det cotangent factors from ``K = N^{-1}`` (module docstring): ``R`` into ``m``,
    ``S`` into ``gc`` (``dd``, ``n`` scratch)."""
    for a in range(9):
        ta = w[a // 3] - w[a % 3]
        for bb in range(a, 9):
            d = _dd_phi(ta, w[bb // 3] - w[bb % 3])
            dd[a, bb] = d
            dd[bb, a] = d
    # R (through Phi) into m, S (through L) into gc (reused as scratch)
    for p in range(3):
        for q in range(3):
            r = 0.0j
            for j in range(3):
                a, bb = 3 * j + q, 3 * j + p
                r += ((1.0 if a == bb else 0.0) - k_[bb, a]) / phi[bb] * dd[a, bb]
            for kk in range(3):
                a, bb = 3 * p + kk, 3 * q + kk
                r -= ((1.0 if a == bb else 0.0) - k_[bb, a]) / phi[bb] * dd[a, bb]
            m[p, q] = r
    # W_ab = K_ba Phi_a; rows (nn) minus their mean over n (adjoint of P)
    for bb in range(9):
        mean = (k_[bb, 0] * phi[0] + k_[bb, 4] * phi[4] + k_[bb, 8] * phi[8]) / 3.0
        for a in range(9):
            n[a, bb] = k_[bb, a] * phi[a] - (mean if a % 4 == 0 else 0.0)
    for p in range(3):
        for q in range(3):
            s1 = 0.0j
            s2 = 0.0j
            for kk in range(3):
                s1 += n[3 * p + kk, 3 * q + kk]
                s2 += n[3 * kk + p, 3 * kk + q]
            gc[p, q] = -0.5 * (s1 + s2.conjugate())


@njit(cache=True)
def _omega_cotangent(v, w, g, m, gc, ge, t, o, gq, gom):
    """``dL/dOmega`` into ``gom`` from ``R`` (``m``), ``S`` (``gc``), the log-det cotangent ``g``
    and ``ge = G x^+`` (``t``, ``o``, ``gq`` scratch)."""
    _rotate_in(v, ge, t, o)
    for i in range(3):
        for j in range(3):
            hsum = 0.5 * (w[i] + w[j])
            d = complex(math.cos(hsum), math.sin(hsum)) * _sinc(0.5 * (w[i] - w[j]))
            t[i, j] = g * m[i, j].conjugate() + o[i, j] * d
    _rotate_out(v, t, o, gq)
    _ta(gq, gom)
    for i in range(3):
        for j in range(3):
            t[i, j] = g * gc[i, j].conjugate()
    _rotate_out(v, t, o, gq)
    for i in range(3):
        for j in range(3):
            gom[i, j] += gq[i, j]


@njit(cache=True)
def _input_cotangents(s_, rho, x, gnew, b, s, c, om, e, gom, gc, gs, grho, gx):
    """``dL/dS``, ``dL/drho``, ``dL/dx`` at site ``(b, s)`` from ``dL/dOmega`` (``gom``) and
    ``exp(Q)`` (``e``)."""
    nnu = rho.shape[1]
    _context(s_, rho, x, b, s, c, om)
    for i in range(3):
        for j in range(3):
            acc = 0.0j
            acc2 = 0.0j
            for kk in range(3):
                acc += gom[i, kk] * x[b, s, kk, j]
                acc2 += e[kk, i].conjugate() * gnew[b, s, kk, j]
                acc2 += gom[kk, i].conjugate() * c[kk, j]
            gc[i, j] = acc
            gx[b, s, i, j] = acc2
    for nu in range(nnu):
        r = rho[b, nu, s]
        acc = 0.0
        for i in range(3):
            for j in range(3):
                z = gc[i, j]
                sum_s = s_[b, 2 * nu, s, i, j] + s_[b, 2 * nu + 1, s, i, j]
                acc += z.real * sum_s.real + z.imag * sum_s.imag
                gs[b, 2 * nu, s, i, j] = r * z
                gs[b, 2 * nu + 1, s, i, j] = r * z
        grho[b, nu, s] = acc


@njit(parallel=True, cache=True)
def core_backward(s_, rho, x, wsave, vsave, gnew, gld, gs, grho, gx):
    """Cotangents of ``S``, ``rho``, ``x`` from those of ``new`` and ``ld`` (module docstring)."""
    nb, ns = x.shape[0], x.shape[1]
    total = nb * ns
    nchunk = (total + CHUNK - 1) // CHUNK
    for ch in prange(nchunk):
        c = np.empty((3, 3), np.complex128)
        om = np.empty((3, 3), np.complex128)
        t = np.empty((3, 3), np.complex128)
        o = np.empty((3, 3), np.complex128)
        e = np.empty((3, 3), np.complex128)
        m = np.empty((3, 3), np.complex128)
        gq = np.empty((3, 3), np.complex128)
        gom = np.empty((3, 3), np.complex128)
        gc = np.empty((3, 3), np.complex128)
        v = np.empty((3, 3), np.complex128)
        w = np.empty(3)
        phi = np.empty(9, np.complex128)
        n = np.empty((9, 9), np.complex128)
        k_ = np.empty((9, 9), np.complex128)
        dd = np.empty((9, 9), np.complex128)
        for it in range(ch * CHUNK, min(total, (ch + 1) * CHUNK)):
            b, s = it // ns, it % ns
            for i in range(3):
                w[i] = wsave[b, s, i]
                for j in range(3):
                    v[i, j] = vsave[b, s, i, j]
            _context(s_, rho, x, b, s, c, om)
            g = gld[b, s]
            # --- log-det: K = N^{-1}
            _rotate_in(v, om, t, o)
            _build_n(o, w, phi, n)
            _inverse(n, k_)
            _ld_cotangents(k_, phi, w, dd, n, m, gc)
            # --- exp: G x^+, then dL/dOmega
            for i in range(3):
                for j in range(3):
                    acc = 0.0j
                    for kk in range(3):
                        acc += gnew[b, s, i, kk] * x[b, s, j, kk].conjugate()
                    e[i, j] = acc
            _omega_cotangent(v, w, g, m, gc, e, t, om, gq, gom)
            # exp(Q) again for dL/dx
            for i in range(3):
                for j in range(3):
                    t[i, j] = 0.0
                t[i, i] = complex(math.cos(w[i]), -math.sin(w[i]))
            _rotate_out(v, t, o, e)
            _input_cotangents(s_, rho, x, gnew, b, s, c, om, e, gom, gc, gs, grho, gx)
