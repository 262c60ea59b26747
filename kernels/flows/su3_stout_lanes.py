"""Lane-vectorised staples and loops of the SU(3) stout layer (the fused path's
:func:`kernels.flows.su3_fused.stout_loops`; the torch reference is
:func:`~kernels.flows.su3_fused.eager_loops`), generated like :mod:`kernels.backends.vnode`.

``W = 16`` active sites of one chain at a time, one site per SIMD lane: the ``n_items`` links
each site reads (through the layer's neighbourhood index, from the halo-padded field) are
gathered into a scratch array of link blocks ``loc[item, c W + l]`` (``c = 2 (3 i + j) + {0:
re, 1: im}``, the :mod:`~kernels.backends.vnode` block layout; the next block's links
prefetched), and every 3x3 product is vnode's unrolled lane loop (LLVM vectorises it: one
multiply and five FMAs per output component and lane). The last block of a layer (of a
slab, in the backward) repeats its last site in the unused lanes and writes nothing for them.

Per block (``S_k`` the staples, ``k = 2 nu + {0: up, 1: down}``, ``G`` cotangents)::

    forward:   S_k = A B C^+ (up) or A^+ B C (down),   P_nu = S_{2 nu} + S_{2 nu + 1},
               f_kl = Re Tr(S_k S_l^+) / 3,   f_plane = Re Tr(P Q (R T)^+) / 3
    backward:  the staples recomputed, G_{S_k} = G_{P_{k // 2}} + sum_l (g_kl / 3) S_l; the
               staples' and the plaquettes' chain rule into the links; then the links'
               cotangents added into the field's, block by block (item-major, lane order),
               slab by slab (below).

Only the plane sums leave the kernel (the core needs ``C = sum_nu rho_nu P_nu``): half the
bytes of the six staples, and the backward rebuilds the staples from the links it gathers
anyway.

The backward's scatter-add runs in parallel within a chain without races and in a fixed
order: the layer cuts its active sites (row-major) into slabs of two slices of axis 0
(:func:`kernels.flows.su3_fused.backward_slabs`). A site adds into rows within one slice of
its own along axis 0, so two sites of slabs ``k`` and ``k + 2`` never add into the same row
when the slabs are an even number (``L0 % 4 == 0``; the periodic wrap joins the last, odd
slab to slab 0): the even slabs of every chain run in parallel, then the odd ones, and a row
receives its contributions in the same order on any number of threads (one slab otherwise,
one thread per chain). It agrees with the eager loops' autograd to rounding
(tests/test_stout_fused.py). Floating point: ``fastmath={'contract'}`` only.
"""

from __future__ import annotations

from kernels.backends import fused, prefetch, vnode

W = vnode.W
LB = vnode.LB
nchunks = vnode.nchunks  # work chunks (each with its own scratch) per (chain, block) pairs

_KERNELS = """

@njit(fastmath={{'contract'}}, cache=True)
def gather(src, index, ns, end, b, s0, ni, loc):
    \"\"\"loc[it, c W + l] = src[b, index[it ns + s], c], s = min(s0 + l, end - 1).\"\"\"
    for it in range(ni):
        for l in range({W}):
            k = index[it * ns + min(s0 + l, end - 1)]
            for c in range(18):
                loc[it, c * {W} + l] = src[b, k, c]


@njit(cache=True)
def prefetch_next(a, index, ns, end, s0, ni):
    \"\"\"Prefetch (into L2) the rows a[index[it ns + s]] of the next block's sites s0 + W ...
    (the gather's reads, or the scatter-add's targets): the index is irregular, so the
    hardware prefetchers do not see them coming.\"\"\"
    if s0 + {W} < end:
        for it in range(ni):
            for l in range({W}):
                prefetch_row(a, index[it * ns + min(s0 + {W} + l, end - 1)])


@njit(fastmath={{'contract'}}, cache=True)
def scaled(A, ao, g, B, bo):
    \"\"\"B[bo] = g[l] A[ao] per lane.\"\"\"
    for c in range(18):
        for l in range({W}):
            B[bo, c * {W} + l] = g[l] * A[ao, c * {W} + l]


@njit(fastmath={{'contract'}}, cache=True)
def lane_values(v, b, f, s0, end, scale, g):
    \"\"\"g[l] = scale v[b, f, min(s0 + l, end - 1)].\"\"\"
    for l in range({W}):
        g[l] = scale * v[b, f, min(s0 + l, end - 1)]


@njit(fastmath={{'contract'}}, cache=True)
def staples_of(loc, st, p, sk):
    \"\"\"Staples of the block into sk (loc[p] scratch).\"\"\"
    for i in range(st.shape[0]):
        if st[i, 3]:
            mm_nd(loc, st[i, 1], loc, st[i, 2], loc, p)  # P = B C^+
            mm_nn(loc, st[i, 0], loc, p, sk, i)
        else:
            mm_nn(loc, st[i, 1], loc, st[i, 2], loc, p)  # P = B C
            mm_dn(loc, st[i, 0], loc, p, sk, i)


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def loops_forward(src, index, st, pl, ix, planes, feats, x, nch):
    \"\"\"Plane sums of the staples (B, n_st / 2, n, 18), features (B, n_pairs + n_planes, n)
    and the active link (B, n, 18) from the field src (B, M, 18) (float views of the complex
    arrays).\"\"\"
    nbat, ns = src.shape[0], x.shape[1]
    ni = index.shape[0] // ns
    nst = st.shape[0]
    nf = feats.shape[1]
    nblk = (ns + {W} - 1) // {W}
    tot = nbat * nblk
    for ch in prange(nch):
        loc = np.empty((ni + 2, {LB}))
        sk = np.empty((nst, {LB}))
        fe = np.empty((nf, {W}))
        skf, fef = sk.reshape(nst * {LB}), fe.reshape(nf * {W})  # flat views (pair loops)
        for q in range(ch * tot // nch, (ch + 1) * tot // nch):
            b = q // nblk
            s0 = (q % nblk) * {W}
            gather(src, index, ns, ns, b, s0, ni, loc)
            prefetch_next(src[b], index, ns, ns, s0, ni)
            staples_of(loc, st, ni, sk)
            pair_features(skf, fef)
            f = nst * (nst - 1) // 2
            for i in range(pl.shape[0]):
                mm_nn(loc, pl[i, 0], loc, pl[i, 1], loc, ni)
                mm_nn(loc, pl[i, 2], loc, pl[i, 3], loc, ni + 1)
                retr3(loc, ni, loc, ni + 1, fe, f)
                f += 1
            for l in range(min({W}, ns - s0)):
                s = s0 + l
                for k in range(nst // 2):
                    for c in range(18):
                        planes[b, k, s, c] = sk[2 * k, c * {W} + l] + sk[2 * k + 1, c * {W} + l]
                for g in range(nf):
                    feats[b, g, s] = fe[g, l]
                for c in range(18):
                    x[b, s, c] = loc[ix, c * {W} + l]


@threaded_kernel(fastmath={{'contract'}}, cache=True)
def loops_backward(src, index, st, pl, ix, gpl, gf, gx, gsrc, zero, slabs):
    \"\"\"Cotangent gsrc (B, M, 18) of the field (zeroed first if zero, else added to) from
    those of loops_forward's outputs (gpl: of the plane sums, the cotangent of both staples
    of a plane); the staples recomputed. The active sites come in slabs (site ranges
    slabs[k] .. slabs[k + 1]) whose even and odd members never add into the same row of
    gsrc: the even slabs of every chain run in parallel, then the odd ones; within a slab
    one thread, blocks in order (a fixed order whatever the thread count).\"\"\"
    nbat, ns = src.shape[0], gx.shape[1]
    ni = index.shape[0] // ns
    nst = st.shape[0]
    nsl = slabs.shape[0] - 1
    if zero:
        for b in prange(nbat):
            gsrc[b] = 0.0
    for color in range(2):
        ntask = (nsl - color + 1) // 2
        for q in prange(nbat * ntask):
            b = q // ntask
            kz = color + 2 * (q % ntask)
            a0, a1 = slabs[kz], slabs[kz + 1]
            loc = np.empty((ni + 4, {LB}))  # links, then L, R, g L, g R
            gl = np.empty((ni, {LB}))
            sk = np.empty((nst, {LB}))
            gs = np.empty((nst, {LB}))
            gs0 = np.empty((nst, {LB}))  # the staples' incoming cotangents (pairs_backward adds)
            g = np.empty({W})
            gq = np.empty((nst * (nst - 1) // 2, {W}))
            skf, gsf = sk.reshape(nst * {LB}), gs.reshape(nst * {LB})  # flat views (pair loops)
            gs0f = gs0.reshape(nst * {LB})
            gqf = gq.reshape(gq.shape[0] * {W})
            for s0 in range(a0, a1, {W}):
                gather(src, index, ns, a1, b, s0, ni, loc)
                prefetch_next(src[b], index, ns, a1, s0, ni)
                prefetch_next(gsrc[b], index, ns, a1, s0, ni)
                gl[:, :] = 0.0
                for l in range({W}):
                    s = min(s0 + l, a1 - 1)
                    for c in range(18):
                        gl[ix, c * {W} + l] = gx[b, s, c]
                    for k in range(nst):
                        for c in range(18):
                            gs0[k, c * {W} + l] = gpl[b, k // 2, s, c]
                staples_of(loc, st, ni, sk)
                f = nst * (nst - 1) // 2  # pairs Re Tr(S_k S_m^+) / 3: dS_k = S_m, dS_m = S_k
                for i in range(f):
                    lane_values(gf, b, i, s0, a1, 1.0 / 3.0, gq[i])
                pairs_backward(skf, gqf, gs0f, gsf)
                for k in range(nst):
                    a, bb, c = st[k, 0], st[k, 1], st[k, 2]
                    if st[k, 3]:  # A B C^+
                        mm_nd(loc, bb, loc, c, loc, ni)  # P = B C^+
                        mm_nd_acc(gs, k, loc, ni, gl, a)  # dA += G P^+
                        mm_dn(loc, a, gs, k, loc, ni + 1)  # dP = A^+ G
                        mm_nn_acc(loc, ni + 1, loc, c, gl, bb)  # dB += dP C
                        mm_dn_acc(loc, ni + 1, loc, bb, gl, c)  # dC += dP^+ B
                    else:  # A^+ B C
                        mm_nn(loc, bb, loc, c, loc, ni)  # P = B C
                        mm_nd_acc(loc, ni, gs, k, gl, a)  # dA += P G^+
                        mm_nn(loc, a, gs, k, loc, ni + 1)  # dP = A G
                        mm_nd_acc(loc, ni + 1, loc, c, gl, bb)  # dB += dP C^+
                        mm_dn_acc(loc, bb, loc, ni + 1, gl, c)  # dC += B^+ dP
                for i in range(pl.shape[0]):  # Re Tr(L R^+), L = P Q, R = R T
                    lane_values(gf, b, f, s0, a1, 1.0 / 3.0, g)
                    pp, qq, rr, tt = pl[i, 0], pl[i, 1], pl[i, 2], pl[i, 3]
                    mm_nn(loc, pp, loc, qq, loc, ni)  # L
                    mm_nn(loc, rr, loc, tt, loc, ni + 1)  # R
                    scaled(loc, ni, g, loc, ni + 2)
                    scaled(loc, ni + 1, g, loc, ni + 3)
                    mm_nd_acc(loc, ni + 3, loc, qq, gl, pp)  # dP += g R Q^+
                    mm_dn_acc(loc, pp, loc, ni + 3, gl, qq)  # dQ += P^+ g R
                    mm_nd_acc(loc, ni + 2, loc, tt, gl, rr)  # dR += g L T^+
                    mm_dn_acc(loc, rr, loc, ni + 2, gl, tt)  # dT += R^+ g L
                    f += 1
                nl = min({W}, a1 - s0)
                for k in range(ni):
                    for l in range(nl):
                        m = index[k * ns + s0 + l]
                        for c in range(18):
                            gsrc[b, m, c] += gl[k, c * {W} + l]
"""


def _pairs(nst: int) -> list[tuple[int, int]]:
    return [(k, m) for k in range(nst) for m in range(k + 1, nst)]


def _load_staples(nst: int) -> list[str]:
    return [f"s{k}_{c} = S[{k * LB + c * W} + l]" for k in range(nst) for c in range(18)]


def _pair_funcs(nst: int) -> str:
    """Generated lane loops of the staple pairs (``nst`` staples; every load before every
    store, flat arrays at constant offsets, so that LLVM vectorises the lane loop without a
    run-time alias check per row): ``pair_features``: ``F[f, l] = Re Tr(S_k S_m^+) / 3`` for
    the pairs ``k < m`` in row-major order ``f``; ``pairs_backward``: ``G_k = G0_k + sum_m
    g_km S_m`` with ``g_km = g_mk = Gq[f(k, m), l]``; and ``retr3``: ``D[do, l] = Re Tr(A[ao]
    B[bo]^+) / 3``."""
    pairs = _pairs(nst)
    feats = _load_staples(nst)
    feats += [
        f"F[{f * W} + l] = ("
        + " + ".join(f"s{k}_{c} * s{m}_{c}" for c in range(18))
        + ") * (1.0 / 3.0)"
        for f, (k, m) in enumerate(pairs)
    ]
    # G_k = G0_k + sum_m g_km S_m, three matrix components per lane loop: one loop over all 18
    # holds more memory dependences than LLVM's loop-access analysis examines (it then leaves
    # the loop scalar); one component at a time inside a loop: few live values
    back = []
    for c0 in range(0, 18, 3):
        back.append(f"for l in range({W}):")
        body = [f"g{f} = Gq[{f * W} + l]" for f in range(len(pairs))]
        for c in range(c0, c0 + 3):
            body += [f"s{k} = S[{k * LB + c * W} + l]" for k in range(nst)]
            body += [f"t{k} = G0[{k * LB + c * W} + l]" for k in range(nst)]
            for k in range(nst):
                terms = [
                    f"g{f} * s{m if kk == k else kk}"
                    for f, (kk, m) in enumerate(pairs)
                    if k in (kk, m)
                ]
                body.append(f"G[{k * LB + c * W} + l] = t{k} + " + " + ".join(terms))
        back += ["    " + ln for ln in body]
    retr = " + ".join(f"A[ao, {c * W} + l] * B[bo, {c * W} + l]" for c in range(18))
    return (
        vnode._NJIT
        + "def pair_features(S, F):\n"
        + f"    for l in range({W}):\n"
        + vnode._ind(feats, 8)
        + vnode._NJIT
        + "def pairs_backward(S, Gq, G0, G):\n"
        + vnode._ind(back, 4)
        + vnode._NJIT
        + "def retr3(A, ao, B, bo, D, do):\n"
        + f"    for l in range({W}):\n"
        + f"        D[do, l] = ({retr}) * (1.0 / 3.0)\n"
    )


def _source(nst: int) -> str:
    return (
        fused._HEADER
        + prefetch.source()
        + vnode._mm_func("mm_nn", False, False, False)
        + vnode._mm_func("mm_nd", False, True, False)
        + vnode._mm_func("mm_dn", True, False, False)
        + vnode._mm_func("mm_nn_acc", False, False, True)
        + vnode._mm_func("mm_nd_acc", False, True, True)
        + vnode._mm_func("mm_dn_acc", True, False, True)
        + _pair_funcs(nst)
        + _KERNELS.format(W=W, LB=LB)
    )


_K: dict[int, object] = {}


def kernels(nst: int):
    """The compiled module for layers with ``nst`` staples (``2 (Nd - 1)``; generated, cached
    on disk, imported on first use)."""
    if nst not in _K:
        _K[nst] = fused._load_module(_source(nst), f"stout_lanes{nst}")
    return _K[nst]
