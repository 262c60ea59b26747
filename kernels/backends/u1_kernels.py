"""numba kernels of the U(1) Wilson action and force (used by the ``numba`` and ``vnode`` backends).

Convention (as :mod:`kernels.theories.u1` and :func:`kernels.backends.eager.u1_force`): links
``U_mu(x) = exp(i theta_mu(x))``, plaquette angle ``theta_{mu nu}(x) = theta_mu(x) +
theta_nu(x + mu) - theta_mu(x + nu) - theta_nu(x)``, action density ``sum_{mu<nu} (1 - cos
theta_{mu nu}(x))``, force ``F_mu(x) = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin
theta_{mu nu}(x - nu)]`` with ``theta_{nu mu} = -theta_{mu nu}``.

Layout: halo-padded angles ``t[b, mu, k]``, ``k`` the flat padded site (width-1 halo on every
axis, corners included), neighbours at constant offsets ``k +- strides[nu]``; ``rows_p`` /
``rows_o`` the padded / unpadded flat starts of the interior rows of the last axis
(:func:`kernels.backends.fused._rows`). Each inner loop runs over slices taken before the
loop: a shifted index ``k + stride`` makes numba emit negative-index wrap-around selects, and
LLVM then leaves the loop scalar (5 against 0.9 ns per site).

The force runs in two passes so that each plaquette's ``sin`` is evaluated once (a direct
site loop needs ``sin theta_{mu nu}(x)`` and ``sin theta_{mu nu}(x - nu)`` for each of the
``d - 1`` planes of each link: 4 per site in 2D against 1): :func:`sin_plaquettes` writes
``sin theta_p`` over the contiguous padded range, :func:`force_rows` takes differences. Both
inner loops are contiguous and branch-free, so LLVM vectorises them with the polynomial
``sin``/``cos`` of :mod:`kernels.backends.vtrig`. The kernels return the number of plaquette
angles above ``vtrig.LIMIT`` (where that ``sin`` is not accurate); the caller then falls back
to torch. Threads: ``numba.prange`` over chunks (chains x planes x blocks of sites, or chains
x rows).
"""

from __future__ import annotations

from numba import prange

from .numba_threads import threaded_kernel
from .vtrig import too_large, vcos, vsin

CHUNK = 4096


@threaded_kernel(cache=True)
def periodic_pad(src, srow, lx, dst):
    """``dst[a, pr (lx + 2) + xp] = src[a, srow[pr] lx + (xp - 1) mod lx]``: the width-1
    periodic halo of every axis (``srow``: the source row of each padded row,
    :func:`kernels.backends.fused._source_rows`). The generated ``periodic_pad`` of
    :mod:`kernels.backends.fused` does the same for 18 reals per site; with one real per site
    its inner component loop made it 5-10x slower than this one (and a slice copy of whole
    rows, tried for both, slowed the 18-real case by 30%)."""
    na, npr = src.shape[0], srow.shape[0]
    for q in prange(na * npr):
        a = q // npr
        pr = q % npr
        sr = src[a, srow[pr] * lx : srow[pr] * lx + lx]
        d = dst[a, pr * (lx + 2) : pr * (lx + 2) + lx + 2]
        d[0] = sr[lx - 1]
        d[lx + 1] = sr[0]
        for x in range(lx):
            d[x + 1] = sr[x]


@threaded_kernel(cache=True, fastmath={"contract"})
def sin_plaquettes(t, mus, nus, strides, n, s):
    """``s[b, p, k] = sin theta_{mu nu}(k)`` for plane ``p = (mus[p], nus[p])`` and padded
    flat ``k < n`` (``n = V_padded - strides[0]``: every such ``k + mu``, ``k + nu`` is in
    the array). Returns the count of angles with ``|theta| > LIMIT``."""
    nb, npl = t.shape[0], mus.shape[0]
    nch = (n + CHUNK - 1) // CHUNK
    big = 0
    for q in prange(nb * npl * nch):
        b = q // (npl * nch)
        p = (q // nch) % npl
        lo = (q % nch) * CHUNK
        hi = min(n, lo + CHUNK)
        smu, snu = strides[mus[p]], strides[nus[p]]
        tm, tn = t[b, mus[p]], t[b, nus[p]]
        t0, t1, t2, t3 = tm[lo:hi], tn[lo + smu : hi + smu], tm[lo + snu : hi + snu], tn[lo:hi]
        out = s[b, p, lo:hi]
        cnt = 0
        for j in range(hi - lo):
            a = t0[j] + t1[j] - t2[j] - t3[j]
            out[j] = vsin(a)
            cnt += too_large(a)
        big += cnt
    return big


@threaded_kernel(cache=True, fastmath={"contract"})
def force_rows(s, mus, nus, rows_p, rows_o, rowlen, strides, beta, f):
    """``f[b, mu, o] = beta sum_p sign (s_p(x) - s_p(x - other))`` over the planes ``p`` that
    contain ``mu`` (``sign = +1``, ``other = nu`` for ``p = (mu, nu)``; ``-1``, ``other = mu'``
    for ``p = (mu', mu)``), ``s`` from :func:`sin_plaquettes`."""
    nb, nd = f.shape[0], f.shape[1]
    nrows, npl = rows_p.shape[0], mus.shape[0]
    for q in prange(nb * nrows):
        b = q // nrows
        p0 = rows_p[q % nrows]
        o = rows_o[q % nrows]
        for mu in range(nd):
            fo = f[b, mu, o : o + rowlen]
            for x in range(rowlen):
                fo[x] = 0.0
            for p in range(npl):
                if mus[p] == mu:
                    sign, other = 1.0, nus[p]
                elif nus[p] == mu:
                    sign, other = -1.0, mus[p]
                else:
                    continue
                so = strides[other]
                s0, s1 = s[b, p, p0 : p0 + rowlen], s[b, p, p0 - so : p0 - so + rowlen]
                for x in range(rowlen):
                    fo[x] += sign * (s0[x] - s1[x])
            for x in range(rowlen):
                fo[x] *= beta


@threaded_kernel(cache=True, fastmath={"contract"})
def density_rows(t, mus, nus, rows_p, rows_o, rowlen, strides, out):
    """``out[b, o] = sum_p (1 - cos theta_p(x))``; returns the count of ``|theta| > LIMIT``."""
    nb = t.shape[0]
    nrows, npl = rows_p.shape[0], mus.shape[0]
    big = 0
    for q in prange(nb * nrows):
        b = q // nrows
        p0 = rows_p[q % nrows]
        o = rows_o[q % nrows]
        oo = out[b, o : o + rowlen]
        for x in range(rowlen):
            oo[x] = 0.0
        cnt = 0
        for p in range(npl):
            smu, snu = strides[mus[p]], strides[nus[p]]
            tm, tn = t[b, mus[p]], t[b, nus[p]]
            t0, t1 = tm[p0 : p0 + rowlen], tn[p0 + smu : p0 + smu + rowlen]
            t2, t3 = tm[p0 + snu : p0 + snu + rowlen], tn[p0 : p0 + rowlen]
            for x in range(rowlen):
                a = t0[x] + t1[x] - t2[x] - t3[x]
                oo[x] += 1.0 - vcos(a)
                cnt += too_large(a)
        big += cnt
    return big
