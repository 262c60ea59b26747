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


@njit(cache=True)
def philox_blocks(sites, chain_offset, purpose, counter, k0, k1, out0, out1):
    """``out0[c, s, b], out1[c, s, b]``: the two uniforms of Philox4x32-10 block ``b`` of
    chain ``chain_offset + c`` at global site ``sites[s]`` (uint64 arrays and scalars)."""
    nb, ns, nblk = out0.shape
    s32 = np.uint64(32)
    s16 = np.uint64(16)
    s6 = np.uint64(6)
    s26 = np.uint64(26)
    lo16 = np.uint64(0xFFFF)
    scale = 2.0**-52
    for q in range(nb * ns):
        c = q // ns
        s = q % ns
        site = sites[s]
        w2 = ((np.uint64(chain_offset) + np.uint64(c)) << s16) | np.uint64(purpose)
        for b in range(nblk):
            x0 = site & _MASK32
            x1 = (((site >> s32) & lo16) << s16) | np.uint64(b)
            x2 = w2
            x3 = np.uint64(counter)
            a = np.uint64(k0)
            e = np.uint64(k1)
            for r in range(10):
                if r:
                    a = (a + _W0) & _MASK32
                    e = (e + _W1) & _MASK32
                p0 = x0 * _M0
                p1 = x2 * _M1
                n0 = (p1 >> s32) ^ x1 ^ a
                n2 = (p0 >> s32) ^ x3 ^ e
                x0, x1, x2, x3 = n0, p1 & _MASK32, n2, p0 & _MASK32
            g0 = ((x0 >> s6) << s26) | (x1 >> s6)
            g1 = ((x2 >> s6) << s26) | (x3 >> s6)
            out0[c, s, b] = (np.float64(g0) + 0.5) * scale
            out1[c, s, b] = (np.float64(g1) + 0.5) * scale


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
