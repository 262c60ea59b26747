"""numba kernels of the U(1) Wilson action and force (used by the ``numba`` and ``vnode`` backends).

Convention (as :mod:`kernels.theories.u1` and :func:`kernels.backends.eager.u1_force`): links
``U_mu(x) = exp(i theta_mu(x))``, plaquette angle ``theta_{mu nu}(x) = theta_mu(x) +
theta_nu(x + mu) - theta_mu(x + nu) - theta_nu(x)``, action density ``sum_{mu<nu} (1 - cos
theta_{mu nu}(x))``, force ``F_mu(x) = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin
theta_{mu nu}(x - nu)]`` with ``theta_{nu mu} = -theta_{mu nu}``.

One pass over the angles, in chunks of consecutive rows of the last axis (a chunk's scratch
stays in the L2 cache): each chunk

1. copies the padded rows it needs (width-1 halo on every axis, corners included) into a
   scratch array: from the unpadded angles with the periodic wrap of the last axis
   (``wrap``; ``srow`` gives the periodic image row of each padded row,
   :func:`kernels.backends.fused._source_rows`), or from an already halo-padded array (a
   split grid, :func:`parallel.halo_pad`; ``srow`` the identity);
2. computes ``sin theta_p`` (force) over the chunk's contiguous padded range, extended back by
   ``strides[0]`` so that every ``x - nu`` of the chunk is inside, or ``1 - cos theta_p``
   (action density) on its rows;
3. writes the force rows as differences of those sines (each plaquette's ``sin`` is
   evaluated once per chunk: a direct site loop needs ``sin theta_{mu nu}(x)`` and ``sin
   theta_{mu nu}(x - nu)`` for each of the ``d - 1`` planes of each link, 4 per site in 2D
   against 1).

Neighbours are at constant offsets ``k +- strides[nu]`` in the padded flat index ``k``;
``rows_p`` / ``rows_o`` are the padded / unpadded flat starts of the interior rows
(:func:`kernels.backends.fused._rows`). Every inner loop runs over slices taken before the
loop and is branch-free, so LLVM vectorises it with the polynomial ``sin``/``cos`` of
:mod:`kernels.backends.vtrig` (a shifted index ``k + stride`` inside the loop makes numba
emit negative-index wrap-around selects, and LLVM then leaves the loop scalar: 5 against 0.9
ns per site). The kernels return the number of plaquette angles above ``vtrig.LIMIT``
(where that ``sin`` is not accurate); the caller then falls back to torch. Threads:
``numba.prange`` over ``nw`` workers, each with its own scratch, each taking a contiguous
run of the (chain, chunk) pairs. The chunk geometry (:func:`chunks`) is computed once per
shape by the caller.

:func:`action_slots` is :func:`density` without the stored density: each value goes straight
into the fixed-point slots of the exact lattice sum (:func:`parallel.reduce.round_slot_totals`
rounds the all-reduced slot totals), so the U(1) action costs one pass (2.4x faster at
1024^2 on a Zen 3 host than the density plus :func:`parallel.lattice_sum`) with the same bits.

Before session 8 the force ran as three passes over whole arrays (periodic padding, all the
sines, the differences), each of which went to memory at large volumes
(docs/performance.md, "Kernel backends").
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from parallel.exact_sum_jit import split_block

from .numba_threads import threaded_kernel
from .vtrig import too_large, vcos, vsin

#: :func:`kernels.backends.fused.dependency_hash` of ``vtrig.py``, whose ``vsin``/``vcos`` these
#: kernels inline. numba caches this module's machine code keyed by this file's text alone,
#: so a change of ``vtrig.py`` would keep running the old inlined code; the pin puts vtrig's
#: hash into this file's text (tests/test_vtrig.py fails until it is updated)
VTRIG_HASH = "074ea509e431f13d"
#: the same pin for ``parallel/exact_sum_jit.py``, whose ``split_block`` :func:`action_slots`
#: calls (numba links it into this module's cached code; tests/test_vtrig.py checks the pin)
EXACT_SUM_HASH = "d0bc68acc218283a"

CHUNK_SITES = 16384  # padded sites per chunk (at least 4 strides[0]: the back extension)


def chunks(rows_p: np.ndarray, lx: int, strides: np.ndarray, back: int) -> tuple[int, int, int]:
    """``(rows per chunk, max sines per chunk, max padded rows copied per chunk)`` for the
    kernels below: chunks of ``rpc`` interior rows whose sine range ``[rows_p[r0] - back,
    rows_p[r1 - 1] + lx)`` needs the padded rows up to ``strides[0]`` past its end."""
    nrows, w = rows_p.shape[0], lx + 2
    rpc = max(1, min(nrows, -(-max(4 * int(strides[0]), CHUNK_SITES) // lx)))
    r0 = np.arange(0, nrows, rpc)
    r1 = np.minimum(r0 + rpc, nrows)
    lo = rows_p[r0] - back
    hi = rows_p[r1 - 1] + lx
    prs = (hi - 1 + int(strides[0])) // w + 1 - lo // w
    return rpc, int((hi - lo).max()), int(prs.max())


@njit(cache=True, inline="always")
def _copy_rows(src, srow, wrap, b, nd, pr_lo, pr_hi, lx, tl):
    """``tl[mu, (pr - pr_lo) (lx + 2) + xp]`` = padded angle of padded row ``pr``."""
    w = lx + 2
    lxs = lx if wrap else w
    for mu in range(nd):
        for pr in range(pr_lo, pr_hi):
            r = srow[pr] * lxs
            sr = src[b, mu, r : r + lxs]
            d = tl[mu, (pr - pr_lo) * w : (pr - pr_lo + 1) * w]
            if wrap:
                d[0] = sr[lx - 1]
                d[lx + 1] = sr[0]
                di = d[1 : lx + 1]
                for x in range(lx):
                    di[x] = sr[x]
            else:
                for x in range(w):
                    d[x] = sr[x]


@threaded_kernel(cache=True, fastmath={"contract"})
def force(src, srow, wrap, mus, nus, pl, sg, ot, rows_p, rows_o, lx, strides, beta, geo, nw, f):
    """``f[b, mu, o] = beta sum_j sg[mu, j] (s_p(x) - s_p(x - e_ot))``, ``p = pl[mu, j]``
    (``-1``: none), ``s_p = sin theta_p`` (module doc). ``src``: ``(B, Nd, n)`` angles,
    unpadded (``wrap``) or halo-padded; ``geo = (rpc, span, ncopy)`` from :func:`chunks` with
    ``back = strides[0]``."""
    nb, nd = f.shape[0], f.shape[1]
    nrows, npl = rows_p.shape[0], mus.shape[0]
    rpc, span, ncopy = geo[0], geo[1], geo[2]
    nchr = (nrows + rpc - 1) // rpc
    nq = nb * nchr
    w = lx + 2
    back = strides[0]
    big = 0
    for wk in prange(nw):
        tl = np.empty((nd, ncopy * w))
        s = np.empty((npl, span))
        cnt = 0
        for q in range(wk * nq // nw, (wk + 1) * nq // nw):
            b = q // nchr
            r0 = (q % nchr) * rpc
            r1 = min(nrows, r0 + rpc)
            lo = rows_p[r0] - back
            n = rows_p[r1 - 1] + lx - lo
            pr_lo = lo // w
            _copy_rows(src, srow, wrap, b, nd, pr_lo, (lo + n - 1 + back) // w + 1, lx, tl)
            a0 = lo - pr_lo * w
            for p in range(npl):
                smu, snu = strides[mus[p]], strides[nus[p]]
                tm, tn = tl[mus[p]], tl[nus[p]]
                t0, t1 = tm[a0 : a0 + n], tn[a0 + smu : a0 + smu + n]
                t2, t3 = tm[a0 + snu : a0 + snu + n], tn[a0 : a0 + n]
                sp = s[p, :n]
                for j in range(n):
                    a = t0[j] + t1[j] - t2[j] - t3[j]
                    sp[j] = vsin(a)
                    cnt += too_large(a)
            for r in range(r0, r1):
                p0 = rows_p[r] - lo
                o = rows_o[r]
                for mu in range(nd):
                    fo = f[b, mu, o : o + lx]
                    if pl[mu, 0] < 0:
                        for x in range(lx):
                            fo[x] = 0.0
                    for j in range(pl.shape[1]):
                        p = pl[mu, j]
                        if p < 0:
                            break
                        c = sg[mu, j] * beta
                        so = strides[ot[mu, j]]
                        s0, s1 = s[p, p0 : p0 + lx], s[p, p0 - so : p0 - so + lx]
                        if j == 0:
                            for x in range(lx):
                                fo[x] = c * (s0[x] - s1[x])
                        else:
                            for x in range(lx):
                                fo[x] += c * (s0[x] - s1[x])
        big += cnt
    return big


@njit(cache=True, inline="always")
def _load_chunk(src, srow, wrap, q, nchr, rpc, rows_p, lx, strides, tl):
    """Chunk ``q`` of :func:`density` and :func:`action_slots`: its chain ``b``, interior rows
    ``r0 .. r1 - 1`` and first padded row ``pr_lo``, with its padded rows copied into ``tl``
    (:func:`_copy_rows`)."""
    w = lx + 2
    b = q // nchr
    r0 = (q % nchr) * rpc
    r1 = min(rows_p.shape[0], r0 + rpc)
    pr_lo = rows_p[r0] // w
    pr_hi = (rows_p[r1 - 1] + lx - 1 + strides[0]) // w + 1
    _copy_rows(src, srow, wrap, b, tl.shape[0], pr_lo, pr_hi, lx, tl)
    return b, r0, r1, pr_lo


@njit(cache=True, inline="always", fastmath={"contract"})
def _density_row(tl, mus, nus, strides, p0, oo):
    """``oo[x] = sum_p (1 - cos theta_p)`` for the row at padded offset ``p0`` of the copied
    rows ``tl`` (:func:`density`, :func:`action_slots`); returns the count of
    ``|theta_p| > LIMIT``."""
    lx = oo.shape[0]
    cnt = 0
    for x in range(lx):
        oo[x] = 0.0
    for p in range(mus.shape[0]):
        smu, snu = strides[mus[p]], strides[nus[p]]
        tm, tn = tl[mus[p]], tl[nus[p]]
        t0, t1 = tm[p0 : p0 + lx], tn[p0 + smu : p0 + smu + lx]
        t2, t3 = tm[p0 + snu : p0 + snu + lx], tn[p0 : p0 + lx]
        for x in range(lx):
            a = t0[x] + t1[x] - t2[x] - t3[x]
            oo[x] += 1.0 - vcos(a)
            cnt += too_large(a)
    return cnt


@threaded_kernel(cache=True, fastmath={"contract"})
def density(src, srow, wrap, mus, nus, rows_p, rows_o, lx, strides, geo, nw, out):
    """``out[b, o] = sum_p (1 - cos theta_p(x))`` (``geo`` from :func:`chunks` with
    ``back = 0``); returns the count of ``|theta_p| > LIMIT``."""
    nb, nd = out.shape[0], src.shape[1]
    nrows = rows_p.shape[0]
    rpc, ncopy = geo[0], geo[2]
    nchr = (nrows + rpc - 1) // rpc
    nq = nb * nchr
    w = lx + 2
    big = 0
    for wk in prange(nw):
        tl = np.empty((nd, ncopy * w))
        cnt = 0
        for q in range(wk * nq // nw, (wk + 1) * nq // nw):
            b, r0, r1, pr_lo = _load_chunk(src, srow, wrap, q, nchr, rpc, rows_p, lx, strides, tl)
            for r in range(r0, r1):
                p0 = rows_p[r] - pr_lo * w
                cnt += _density_row(tl, mus, nus, strides, p0, out[b, rows_o[r] : rows_o[r] + lx])
        big += cnt
    return big


@threaded_kernel(cache=True, fastmath={"contract"})
def action_slots(src, srow, wrap, mus, nus, rows_p, rows_o, lx, strides, geo, nw, mags, mbits, out):
    """The action density of :func:`density` (the same values, bit for bit), split over fixed
    slots of the exact sum (:func:`parallel.exact_sum_jit.split_block`) instead of stored:
    ``out[wk, b, j] = sum (q_j / 2^c_j)`` over worker ``wk``'s sites of chain ``b``, slot ``j``
    with ``mags[j] = 1.5 2^(c_j + 52)`` and its bit pattern ``mbits[j]`` (``c_j`` descending;
    the last slot takes the rest). Each density is a multiple of ``2^-53`` below ``2 npl + 1``
    (``1 - cos`` of a double of at most ``1 + 2^-52``, then sums on that grid), so slots down
    to ``c <= -53`` hold it exactly; a rest that is not a multiple of the last ``2^c`` (and a
    NaN density) is counted, like a plaquette angle above ``vtrig.LIMIT``: the caller then
    takes the general exact sum. Returns that count."""
    nb, nd = out.shape[1], src.shape[1]
    nrows = rows_p.shape[0]
    rpc, ncopy = geo[0], geo[2]
    nchr = (nrows + rpc - 1) // rpc
    nq = nb * nchr
    w = lx + 2
    big = 0
    for wk in prange(nw):
        tl = np.empty((nd, ncopy * w))
        dv = np.empty(rpc * lx)
        tb = np.empty(rpc * lx)
        cnt = 0
        for q in range(wk * nq // nw, (wk + 1) * nq // nw):
            b, r0, r1, pr_lo = _load_chunk(src, srow, wrap, q, nchr, rpc, rows_p, lx, strides, tl)
            for r in range(r0, r1):
                p0 = rows_p[r] - pr_lo * w
                cnt += _density_row(
                    tl, mus, nus, strides, p0, dv[(r - r0) * lx : (r - r0 + 1) * lx]
                )
            cnt += split_block(dv[: (r1 - r0) * lx], tb, mags, mbits, out[wk, b])
        big += cnt
    return big
