"""Compiled Philox4x32 block draws for :class:`parallel.rng.SiteRNG` (optional: numba).

The same integers as the numpy reference (:func:`parallel.rng._philox_words`) and the same
52-bit uniforms (:func:`parallel.rng._uniform_pair`): every operation is exact integer
arithmetic on 32-bit words held in uint64 (the 32x32 -> 64 products of Philox fit), and the
uniform ``(k + 1/2) 2^-52`` of a 52-bit ``k`` is exact in float64, so the draws are bitwise
identical with or without numba (tests/test_rng.py). One fused loop replaces the ~70
whole-array numpy passes of the reference (10 rounds, word conversions). Serial on purpose:
a parallel kernel here would start numba's threading layer before the kernel backends choose
the work-queue layer (kernels/backends/fused.py), and the default OpenMP layer's spinning
workers slowed every later kernel ~10x with two ranks on two cores.

Counter and key layout (``SiteRNG``, layout 1): counter words ``(site & 0xffffffff,
(site >> 32 & 0xffff) << 16 | block, chain << 16 | purpose, counter)``, key ``(k0, k1)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import jit_target

jit_target.configure()  # before the first @njit: 512-bit vectors on AVX-512 hosts

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S6 = np.uint64(6)
_S26 = np.uint64(26)
_LO16 = np.uint64(0xFFFF)
_SCALE = 2.0**-52


@njit(cache=True, inline="always")
def _round(x0, x1, x2, x3, a, e):
    """One Philox4x32 round on the words ``x`` with round key ``(a, e)``."""
    p0 = x0 * _M0
    p1 = x2 * _M1
    return (p1 >> _S32) ^ x1 ^ a, p1 & _MASK32, (p0 >> _S32) ^ x3 ^ e, p0 & _MASK32


@njit(cache=True, inline="always")
def _block(x0, x1, x2, x3, ka, ke):
    """Philox4x32-10 of the counter words ``x`` (round keys ``ka``, ``ke``) as the two
    52-bit uniforms ``(k + 1/2) 2^-52``."""
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[0], ke[0])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[1], ke[1])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[2], ke[2])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[3], ke[3])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[4], ke[4])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[5], ke[5])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[6], ke[6])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[7], ke[7])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[8], ke[8])
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, ka[9], ke[9])
    g0 = ((x0 >> _S6) << _S26) | (x1 >> _S6)
    g1 = ((x2 >> _S6) << _S26) | (x3 >> _S6)
    return (np.float64(g0) + 0.5) * _SCALE, (np.float64(g1) + 0.5) * _SCALE


@njit(cache=True)
def philox_blocks(sites, chain_offset, purpose, counter, k0, k1, out0, out1):
    """``out0[c, s, b], out1[c, s, b]``: the two uniforms of Philox4x32-10 block ``b`` of
    chain ``chain_offset + c`` at global site ``sites[s]`` (uint64 arrays and scalars).

    The round keys are computed once and the ten rounds written out; the innermost loop runs
    over the blocks of a site, or, with one block per site (U(1), phi^4 in 2D), over the
    sites: LLVM vectorises either (``vpmuludq``: 32x32 -> 64-bit products). One block per site
    took 25 ns per block in a site loop with an inner block loop of one trip, 6 now (Zen 3)."""
    nb, ns, nblk = out0.shape
    ka = np.empty(10, np.uint64)
    ke = np.empty(10, np.uint64)
    a = np.uint64(k0)
    e = np.uint64(k1)
    for r in range(10):
        ka[r] = a
        ke[r] = e
        a = (a + _W0) & _MASK32
        e = (e + _W1) & _MASK32
    x3 = np.uint64(counter)
    for c in range(nb):
        x2 = ((np.uint64(chain_offset) + np.uint64(c)) << _S16) | np.uint64(purpose)
        if nblk == 1:
            o0 = out0[c].reshape(ns)
            o1 = out1[c].reshape(ns)
            for s in range(ns):
                site = sites[s]
                x1 = ((site >> _S32) & _LO16) << _S16
                o0[s], o1[s] = _block(site & _MASK32, x1, x2, x3, ka, ke)
            continue
        for s in range(ns):
            site = sites[s]
            x0 = site & _MASK32
            x1 = ((site >> _S32) & _LO16) << _S16
            p0 = out0[c, s]
            p1 = out1[c, s]
            for b in range(nblk):
                p0[b], p1[b] = _block(x0, x1 | np.uint64(b), x2, x3, ka, ke)


@njit(cache=True)
def su_assemble(p, ent_a, ent_j, ent_k, ent_re, ent_im, z):
    """``z[s, j, k, :] += p[s, a] * (t_re, t_im)`` for the generator entries ``(a, j, k,
    t_re, t_im)`` in their order (generator by generator, entries row-major; a zero part is
    skipped): the su(n) momentum of :meth:`parallel.rng.SiteRNG.su_algebra` from its
    normals ``p`` ``(S, n^2 - 1)`` into zeroed ``z`` ``(S, n, n, 2)`` (real, imaginary).
    Every entry receives the same products added in the same order as the numpy reference's
    whole-array passes (no contraction into FMAs), so the bits are the same."""
    for s in range(p.shape[0]):
        for e in range(ent_a.shape[0]):
            pa = p[s, ent_a[e]]
            j, k = ent_j[e], ent_k[e]
            if ent_re[e] != 0.0:
                z[s, j, k, 0] += pa * ent_re[e]
            if ent_im[e] != 0.0:
                z[s, j, k, 1] += pa * ent_im[e]
