"""Independent dense reference for the 2D Schwinger model tests (numpy only, shares no code
with kernels/): the Wilson-Dirac matrix written out from the conventions, and a brute-force
link Metropolis for ``exp(-S_G) det(D)^2`` with the dense determinant.

Dense index of a spinor component: ``s * V + x * Lt + t`` (= C order of ``(2, Lx, Lt)``).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

SIGMA = (
    np.array([[0, 1], [1, 0]], dtype=complex),  # g_0
    np.array([[0, -1j], [1j, 0]], dtype=complex),  # g_1
    np.array([[1, 0], [0, -1]], dtype=complex),  # g_5
)
ONE = np.eye(2, dtype=complex)


@cache
def translation(shape, mu, antiperiodic_t):
    """``T[x, x + mu] = sign`` (sign -1 when the hop crosses the t boundary, antiperiodic)."""
    lx, lt = shape
    vol = lx * lt
    t_mat = np.zeros((vol, vol))
    for x in range(lx):
        for t in range(lt):
            y = [x, t]
            y[mu] = (y[mu] + 1) % shape[mu]
            sign = -1.0 if (antiperiodic_t and mu == 1 and t == lt - 1) else 1.0
            t_mat[x * lt + t, y[0] * lt + y[1]] = sign
    return t_mat


def dense_dirac(theta, kappa, antiperiodic_t=True):
    """``D`` for angles ``theta`` of shape ``(C, 2, Lx, Lt)`` (or ``(2, Lx, Lt)``):
    ``D = 1 - kappa sum_mu [(1 - g_mu) x diag(U_mu) T_mu + (1 + g_mu) x T_mu^T diag(U_mu^*)]``.
    """
    theta = np.asarray(theta)
    single = theta.ndim == 3
    if single:
        theta = theta[None]
    c, _, lx, lt = theta.shape
    vol = lx * lt
    out = np.tile(np.eye(2 * vol, dtype=complex), (c, 1, 1))
    view = out.reshape(c, 2, vol, 2, vol)
    for mu in range(2):
        t_mat = translation((lx, lt), mu, bool(antiperiodic_t))
        u = np.exp(1j * theta[:, mu].reshape(c, vol))
        fwd = u[:, :, None] * t_mat[None]  # diag(U) T
        bwd = t_mat.T[None] * u.conj()[:, None, :]  # T^T diag(U^*)
        for p, a in (((ONE - SIGMA[mu]), fwd), ((ONE + SIGMA[mu]), bwd)):
            for s in range(2):
                for r in range(2):
                    if p[s, r] != 0:
                        view[:, s, :, r, :] -= (kappa * p[s, r]) * a
    return out[0] if single else out


def plaquettes(theta):
    """``theta_P(x) = theta_0(x) + theta_1(x + 0) - theta_0(x + 1) - theta_1(x)``."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + np.roll(t1, -1, axis=1) - np.roll(t0, -1, axis=2) - t1


def log_weight(theta, beta, kappa):
    """``-S_G + 2 log|det D|`` per chain."""
    sg = beta * (1.0 - np.cos(plaquettes(theta))).sum(axis=(1, 2))
    if kappa == 0.0:
        return -sg
    _, logabs = np.linalg.slogdet(dense_dirac(theta, kappa))
    return -sg + 2.0 * logabs


def _link_entries(shape, mu, x, t, antiperiodic_t=True):
    """Dense entries that hold the link ``U_mu(x, t)``: the forward hop ``(x -> x+mu)`` with
    ``-kappa (1 - g_mu) U sign`` and the backward hop ``(x+mu -> x)`` with
    ``-kappa (1 + g_mu) U^* sign``; returns ``(rows, cols, coefficient, conjugated)``."""
    lx, lt = shape
    vol = lx * lt
    y = [x, t]
    y[mu] = (y[mu] + 1) % shape[mu]
    sign = -1.0 if (antiperiodic_t and mu == 1 and t == lt - 1) else 1.0
    a, b = x * lt + t, y[0] * lt + y[1]
    out = []
    for p, (r0, c0), conj in (
        ((ONE - SIGMA[mu]), (a, b), False),
        ((ONE + SIGMA[mu]), (b, a), True),
    ):
        for s in range(2):
            for r in range(2):
                if p[s, r] != 0:
                    out.append((s * vol + r0, r * vol + c0, sign * p[s, r], conj))
    return out


def condensate(theta, kappa):
    """Exact ``(1/V) Re tr D^{-1}`` per configuration (dense inverse)."""
    d_mat = dense_dirac(theta, kappa)
    vol = d_mat.shape[-1] // 2
    return np.trace(np.linalg.inv(d_mat), axis1=-2, axis2=-1).real / vol


def link_metropolis(
    beta,
    kappa,
    shape,
    chains,
    sweeps,
    therm,
    seed,
    width=1.5,
    with_condensate=False,
    return_fields=False,
):
    """Brute-force link-by-link Metropolis for ``exp(-S_G) det(D)^2`` (the dense ``D`` is
    patched at the entries of the updated link, the determinant recomputed); returns the
    per-chain mean plaquette ``<cos theta_P>`` over the sweeps after ``therm`` (and, with
    ``with_condensate``, the per-chain mean of the exact :func:`condensate`; with
    ``return_fields``, the last configurations as a further element)."""
    gen = np.random.default_rng(seed)
    theta = gen.uniform(-math.pi, math.pi, size=(chains, 2, *shape))
    d_mat = dense_dirac(theta, kappa)
    logdet = np.linalg.slogdet(d_mat)[1]
    sg = beta * (1.0 - np.cos(plaquettes(theta))).sum(axis=(1, 2))
    idx = np.arange(chains)
    meas, pbp = [], []
    for sweep in range(sweeps + therm):
        for mu in range(2):
            for x in range(shape[0]):
                for t in range(shape[1]):
                    new = theta[:, mu, x, t] + gen.uniform(-width, width, size=chains)
                    trial = theta.copy()
                    trial[:, mu, x, t] = new
                    sg_new = beta * (1.0 - np.cos(plaquettes(trial))).sum(axis=(1, 2))
                    d_new = d_mat.copy()
                    u = np.exp(1j * new)
                    for r, c, coef, conj in _link_entries(shape, mu, x, t):
                        d_new[idx, r, c] = -kappa * coef * (u.conj() if conj else u)
                    logdet_new = np.linalg.slogdet(d_new)[1] if kappa else logdet
                    dlw = -(sg_new - sg) + 2.0 * (logdet_new - logdet)
                    acc = np.log(gen.uniform(size=chains)) < dlw
                    theta[acc, mu, x, t] = new[acc]
                    d_mat[acc] = d_new[acc]
                    sg[acc], logdet[acc] = sg_new[acc], logdet_new[acc]
        if sweep >= therm:
            meas.append(np.cos(plaquettes(theta)).mean(axis=(1, 2)))
            if with_condensate:
                pbp.append(condensate(theta, kappa))
    out = (np.mean(meas, axis=0),)
    if with_condensate:
        out += (np.mean(pbp, axis=0),)
    if return_fields:
        out += (theta,)
    return out if len(out) > 1 else out[0]
