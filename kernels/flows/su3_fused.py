"""Fused CPU path of the SU(3) stout layer (:class:`kernels.flows.su3.SU3StoutLayer`).

Three ``torch.autograd.Function`` s whose forward and first-order backward are numba
kernels (formulas in :mod:`kernels.flows.su3_fused_kernels`):

* :func:`stout_loops`: field -> plane sums of the staples ``P_nu = C^up_nu + C^dn_nu``, loop
  features and active link at the active sites
  (the links read through the layer's neighbourhood index; backward scatter-added into the
  field's cotangent); 16 sites at a time, one per SIMD lane
  (:mod:`kernels.flows.su3_stout_lanes`);
* :func:`stout_core`: ``(P, rho, U_mu) -> (new link, log det J)``::

      C = sum_nu rho_nu P_nu,  Omega = C x^+,  Q = TA(Omega),
      new = exp(Q) x,   ld = log det(1 + phi(-ad_Q) L),   L(w) = -TA(Omega w)

  (eigenbasis of ``i Q``, a 9x9 determinant on ``gl(3)`` instead of the 8x8 ``phi`` series);
  forward and backward run 16 sites at a time in SIMD lanes
  (:mod:`kernels.flows.su3_stout_core_lanes_fwd`, :mod:`~kernels.flows.su3_stout_core_lanes_bwd`);
* :func:`replace_links`: the field with the active links replaced (its backward works in
  place on its own cotangent buffers).

The eager torch versions (:func:`eager_loops`, :func:`eager_core`, ``index_copy``) are the
reference and the fallback: used for non-CPU tensors, dtypes other than complex128, when numba
is missing, when the setting says ``eager``, and for a backward that builds a graph
(``create_graph``, force matching: the backward then recomputes the eager version from the
saved inputs and differentiates it).

Setting: :func:`set_stout_kernel` (``"auto"``: fused where possible, ``"eager"``: always
eager), default from the environment variable ``TRIVHMC_STOUT_KERNEL`` (``auto``/``eager``).
"""

from __future__ import annotations

import importlib.util
import weakref

import torch

from parallel.settings import CHOICES as SETTING_CHOICES
from parallel.settings import choice

from ..groups.su_n import dagger, project_ta

ENV_VAR = "TRIVHMC_STOUT_KERNEL"
CHOICES = SETTING_CHOICES[ENV_VAR]
_setting: str | None = None
_kernels = None  # the numba module once imported, False if unavailable


def set_stout_kernel(name: str | None) -> None:
    """``"auto"`` (fused numba core on CPU complex128 when numba is installed), ``"eager"``
    (always the torch core), or ``None`` (back to ``$TRIVHMC_STOUT_KERNEL``, default auto)."""
    global _setting
    if name is not None and name not in CHOICES:
        raise ValueError(f"stout kernel {name!r}: one of {CHOICES}")
    _setting = name


def stout_kernel_setting() -> str:
    """The active setting (:func:`set_stout_kernel`, else the environment, else ``auto``)."""
    if _setting is not None:
        return _setting
    return choice(ENV_VAR, "auto")


def _load_kernels():
    global _kernels
    if _kernels is None:
        if importlib.util.find_spec("numba") is None:
            _kernels = False
        else:
            try:
                from . import su3_fused_kernels
            except ImportError:  # numba present but unusable (e.g. numpy too new for it)
                _kernels = False
            else:
                _kernels = su3_fused_kernels
    return _kernels


def fused_available() -> bool:
    """Whether numba can be imported (the fused core's only extra requirement)."""
    return bool(_load_kernels())


def uses_fused(x: torch.Tensor) -> bool:
    """Whether :func:`stout_core` runs the fused kernels for links ``x``."""
    return (
        stout_kernel_setting() == "auto"
        and x.device.type == "cpu"
        and x.dtype == torch.complex128
        and fused_available()
    )


def eager_core(
    planes: torch.Tensor, rho: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference of the core: the plane sums of the staples ``planes (B, Nd-1, n,
    3, 3)`` (``P_nu = C^up_nu + C^dn_nu``), real ``rho (B, Nd-1, n)``, ``x (B, n, 3, 3)`` ->
    ``(new (B, n, 3, 3), ld (B, n))``."""
    from .su3 import link_log_det, su3_exp

    r = rho.to(x.dtype)
    c = sum(r[:, i, :, None, None] * planes[:, i] for i in range(rho.shape[1]))
    omega = c @ dagger(x)
    q = project_ta(omega)
    return su3_exp(q) @ x, link_log_det(q, omega)


def _lanes():
    """:mod:`kernels.flows.su3_stout_lanes` (the lane-vectorised staples and loops; imported
    on first use: it needs numba)."""
    from . import su3_stout_lanes

    return su3_stout_lanes


def _core_lanes_fwd():
    """:mod:`kernels.flows.su3_stout_core_lanes_fwd` (the core's forward in SIMD lanes)."""
    from . import su3_stout_core_lanes_fwd

    return su3_stout_core_lanes_fwd


def _core_lanes_bwd():
    """:mod:`kernels.flows.su3_stout_core_lanes_bwd` (the core's backward in SIMD lanes)."""
    from . import su3_stout_core_lanes_bwd

    return su3_stout_core_lanes_bwd


def _reals(t: torch.Tensor):
    """Float64 numpy view ``(..., 18)`` of complex 3x3 matrices ``(..., 3, 3)`` (re, im of
    each entry row-major; strides kept)."""
    return torch.view_as_real(t).flatten(-3).numpy()


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Detached, conjugation resolved, contiguous (numba reads the memory)."""
    return t.detach().resolve_conj().contiguous()


class _FusedCore(torch.autograd.Function):
    """numba forward and analytic first-order backward; eager when a graph is requested."""

    @staticmethod
    def forward(ctx, planes, rho, x):  # type: ignore[override]
        k = _load_kernels()
        p_, r_, x_ = (_plain(t) for t in (planes, rho, x))
        k.set_threads()
        lanes = _core_lanes_fwd()
        nb, nblk = x_.shape[0], -(-x_.shape[1] // lanes.W)
        new = torch.empty_like(x_)
        ld = torch.empty(x_.shape[:2], dtype=torch.float64)
        # saved for the backward in the kernels' lane-block layout: w, V, K_r = N_r^{-1}
        w = torch.empty(nb, nblk, 3 * lanes.W, dtype=torch.float64)
        v = torch.empty(nb, nblk, 18 * lanes.W, dtype=torch.float64)
        want_k = any(ctx.needs_input_grad)  # K for the backward
        kinv = torch.empty((nb, nblk, 81 * lanes.W) if want_k else (1, 1, 81), dtype=torch.float64)
        lanes.kernels().core_forward(
            _reals(p_),
            r_.numpy(),
            _reals(x_),
            _reals(new),
            ld.numpy(),
            w.numpy(),
            v.numpy(),
            kinv.numpy(),
            want_k,
            lanes.nchunks(nb * nblk),
        )
        ctx.save_for_backward(planes, rho, x, w, v, kinv)
        return new, ld

    @staticmethod
    def backward(ctx, gnew, gld):  # type: ignore[override]
        planes, rho, x, w, v, kinv = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the eager core
            with torch.enable_grad():
                ins = [
                    t if t.requires_grad else t.detach().requires_grad_(True)
                    for t in (planes, rho, x)
                ]
                new, ld = eager_core(*ins)
                outs, grads = [], []
                for o, g in ((new, gnew), (ld, gld)):
                    if g is not None:
                        outs.append(o)
                        grads.append(g)
                return torch.autograd.grad(outs, ins, grads, create_graph=True, allow_unused=True)
        k = _load_kernels()
        k.set_threads()
        gnew = torch.zeros_like(x) if gnew is None else gnew
        gld = torch.zeros(x.shape[:2], dtype=torch.float64) if gld is None else gld
        gp = torch.empty(planes.shape, dtype=planes.dtype)
        grho = torch.empty_like(rho)
        gx = torch.empty_like(x)
        lanes = _core_lanes_bwd()
        lanes.kernels().core_backward(
            _reals(_plain(planes)),
            _plain(rho).numpy(),
            _reals(_plain(x)),
            w.numpy(),
            v.numpy(),
            kinv.numpy(),
            _reals(_plain(gnew)),
            _plain(gld.to(torch.float64)).numpy(),
            _reals(gp),
            grho.numpy(),
            _reals(gx),
            lanes.nchunks(x.shape[0] * -(-x.shape[1] // lanes.W)),
        )
        return gp, grho, gx


def eager_loops(
    src: torch.Tensor, index: torch.Tensor, st: torch.Tensor, pl: torch.Tensor, ix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch version of :func:`stout_loops` (its differentiable fallback)."""
    b = src.shape[0]
    nb = src.index_select(1, index).reshape(b, _n_items(st, pl, ix), -1, 3, 3)
    out = []
    for i, j, k, up in st.tolist():
        if up:
            out.append(nb[:, i] @ nb[:, j] @ dagger(nb[:, k]))
        else:
            out.append(dagger(nb[:, i]) @ nb[:, j] @ nb[:, k])
    stacked = torch.stack(out, dim=1)  # (B, n_st, n, 3, 3), [up, dn] per plane
    planes = stacked[:, 0::2] + stacked[:, 1::2]
    sv = torch.view_as_real(stacked.resolve_conj()).flatten(-3)  # (B, n_st, n, 18)
    feats = [
        (sv[:, k] * sv[:, m]).sum(-1) / 3.0 for k in range(len(out)) for m in range(k + 1, len(out))
    ]
    for p, q, r, t in pl.tolist():
        left, right = nb[:, p] @ nb[:, q], nb[:, r] @ nb[:, t]
        feats.append((left.real * right.real + left.imag * right.imag).sum((-1, -2)) / 3.0)
    return planes, torch.stack(feats, dim=1), nb[:, ix]


def _n_items(st: torch.Tensor, pl: torch.Tensor, ix: int) -> int:
    """Number of neighbourhood items (every item appears in a table)."""
    return max(int(st[:, :3].max()), int(pl.max()) if pl.numel() else 0, ix) + 1


class _FusedLoops(torch.autograd.Function):
    """numba plane sums of the staples, loops and active link with an analytic backward
    (scatter-added into the field's cotangent; the staples recomputed there, nothing but the
    field saved); eager under a graph."""

    @staticmethod
    def forward(ctx, src, index, st, pl, ix, slabs):  # type: ignore[override]
        _load_kernels().set_threads()
        src_ = _plain(src)
        b, n = src_.shape[0], index.shape[0] // _n_items(st, pl, ix)
        n_st, n_pl = st.shape[0], pl.shape[0]
        planes = torch.empty(b, n_st // 2, n, 3, 3, dtype=src_.dtype)
        feats = torch.empty(b, n_st * (n_st - 1) // 2 + n_pl, n, dtype=torch.float64)
        x = torch.empty(b, n, 3, 3, dtype=src_.dtype)
        lanes = _lanes()
        lanes.kernels(n_st).loops_forward(
            _reals(src_),
            index.numpy(),
            st.numpy(),
            pl.numpy(),
            ix,
            _reals(planes),
            feats.numpy(),
            _reals(x),
            lanes.nchunks(b * -(-n // lanes.W)),
        )
        ctx.save_for_backward(src)
        ctx.tables = (index, st, pl, ix, n, slabs)
        return planes, feats, x, src.view_as(src)

    @staticmethod
    def backward(ctx, gpl, gf, gx, gpass):  # type: ignore[override]
        (src,) = ctx.saved_tensors
        index, st, pl, ix, n, slabs = ctx.tables
        if torch.is_grad_enabled():  # create_graph: differentiate the eager loops
            with torch.enable_grad():
                s_in = src if src.requires_grad else src.detach().requires_grad_(True)
                outs = eager_loops(s_in, index, st, pl, ix)
                pairs = [(o, g) for o, g in zip(outs, (gpl, gf, gx), strict=True) if g is not None]
                (gsrc,) = torch.autograd.grad(
                    [o for o, _ in pairs], [s_in], [g for _, g in pairs], create_graph=True
                )
            return gsrc if gpass is None else gsrc + gpass, None, None, None, None, None
        _load_kernels().set_threads()
        b, dt = src.shape[0], src.dtype
        n_f = st.shape[0] * (st.shape[0] - 1) // 2 + pl.shape[0]
        gpl = torch.zeros(b, st.shape[0] // 2, n, 3, 3, dtype=dt) if gpl is None else gpl
        gf = torch.zeros(b, n_f, n, dtype=torch.float64) if gf is None else gf
        gx = torch.zeros(b, n, 3, 3, dtype=dt) if gx is None else gx
        # the pass-through output's cotangent (the next field minus the replaced links, from
        # replace_links) receives the loops' contributions in place: no second field-sized
        # cotangent and no sum of the two by autograd
        if gpass is not None and _owned(gpass):
            gsrc, zero = gpass, False
        else:
            gsrc, zero = torch.empty(src.shape, dtype=dt), True
            if gpass is not None:
                gsrc.copy_(gpass)
                zero = False
        _lanes().kernels(st.shape[0]).loops_backward(
            _reals(_plain(src)),
            index.numpy(),
            st.numpy(),
            pl.numpy(),
            ix,
            _reals(_plain(gpl)),
            _plain(gf.to(torch.float64)).numpy(),
            _reals(_plain(gx)),
            _reals(gsrc),
            zero,
            slabs.numpy(),
        )
        return gsrc, None, None, None, None, None


def backward_slabs(x0: torch.Tensor, extent: int) -> torch.Tensor:
    """Site boundaries ``(n_slabs + 1,)`` int64 of the loops' backward slabs
    (:mod:`kernels.flows.su3_stout_lanes`): the active sites, ordered with nondecreasing
    local axis-0 coordinate ``x0`` (``0 <= x0 < extent``), cut into slabs ``x0 in [2 k, 2 k +
    2)`` when ``extent % 4 == 0`` (two sites of slabs ``k`` and ``k + 2`` then never add into
    the same row of the field's cotangent), else one slab of all of them."""
    n = x0.numel()
    if extent % 4:
        return torch.tensor([0, n], dtype=torch.int64)
    if n and bool((x0[1:] < x0[:-1]).any()):
        raise ValueError("backward_slabs: the active sites must be ordered along axis 0")
    edges = torch.arange(0, extent + 1, 2, dtype=x0.dtype)
    return torch.searchsorted(x0.contiguous(), edges).to(torch.int64)


def stout_loops(
    src: torch.Tensor,
    index: torch.Tensor,
    st: torch.Tensor,
    pl: torch.Tensor,
    ix: int,
    slabs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plane sums of the staples, loop features and the active link of a layer at its ``n``
    active sites, from the (halo-padded) field ``src (B, M, 3, 3)`` and the flat
    neighbourhood ``index (n_items * n)`` (item-major: link ``src[:, index[item * n + s]]``,
    :meth:`kernels.flows.su3.SU3StoutLayer.neighbourhood`). Tables (int64): ``st (n_st, 4)``
    rows ``(A, B, C, up)``: staple ``A B C^+`` (up) or ``A^+ B C``; ``pl (n_planes, 4)`` rows
    ``(P, Q, R, T)``: feature ``Re Tr(P Q (R T)^+) / 3`` after the pairs ``Re Tr(S_k S_l^+) /
    3`` (``k < l``, row-major); ``ix`` the active link's item. Returns the plane sums ``(B,
    n_st / 2, n, 3, 3)`` (``P_nu = S_{2 nu} + S_{2 nu + 1}``), features ``(B, n_pairs +
    n_planes, n)``, active link ``(B, n, 3, 3)`` and ``src`` passed through (to build the next
    field from: its cotangent then takes the loops' contributions in place). ``slabs``: the
    backward's slabs (:func:`backward_slabs`). Fused (numba) when :func:`uses_fused`, else
    :func:`eager_loops`."""
    if uses_fused(src):
        return _FusedLoops.apply(src, index, st, pl, ix, slabs)
    return (*eager_loops(src, index, st, pl, ix), src)


#: field-sized cotangents created by _FusedReplace.backward (data pointer -> tensor, weak):
#: only these are modified in place later (the loops' contributions, the next replace)
_OWNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _owned(g: torch.Tensor) -> bool:
    """Whether ``g`` is (a contiguous view of all of) a live cotangent from :data:`_OWNED`."""
    t = _OWNED.get(g.data_ptr())
    return (
        t is not None
        and g.is_contiguous()
        and not g.is_conj()
        and g.numel() == t.numel()
        and g.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    )


class _FusedReplace(torch.autograd.Function):
    """``u`` with the links ``u[:, where]`` replaced by ``new`` (numba copy); backward in one
    pass, in place when the incoming cotangent is one of this Function's own earlier buffers
    (:func:`_owned`: the next layer's, never the caller's), torch's ``index_fill`` /
    ``index_select`` under a graph."""

    @staticmethod
    def forward(ctx, u, where, new):  # type: ignore[override]
        k = _load_kernels()
        k.set_threads()
        u_, n_ = _plain(u), _plain(new)
        out = torch.empty_like(u_)
        b = u_.shape[0]
        k.replace_links(
            u_.reshape(b, -1, 9).numpy(),
            where.numpy(),
            n_.reshape(b, -1, 9).numpy(),
            out.reshape(b, -1, 9).numpy(),
        )
        ctx.where = where
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        where = ctx.where
        if torch.is_grad_enabled():
            return g.index_fill(1, where, 0), None, g.index_select(1, where)
        k = _load_kernels()
        k.set_threads()
        b = g.shape[0]
        gnew = torch.empty(b, where.shape[0], 3, 3, dtype=g.dtype)
        if _owned(g):  # the next layer's cotangent buffer (ours): zero the links in place
            k.replace_links_backward_inplace(
                g.reshape(b, -1, 9).numpy(), where.numpy(), gnew.reshape(b, -1, 9).numpy()
            )
            return g, None, gnew
        g_ = _plain(g)
        gu = torch.empty_like(g_)
        k.replace_links_backward(
            g_.reshape(b, -1, 9).numpy(),
            where.numpy(),
            gu.reshape(b, -1, 9).numpy(),
            gnew.reshape(b, -1, 9).numpy(),
        )
        _OWNED[gu.data_ptr()] = gu
        return gu, None, gnew


def replace_links(u: torch.Tensor, where: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``u.index_copy(1, where, new)`` for links ``u (B, M, 3, 3)``, ``new (B, n, 3, 3)``: numba
    when :func:`uses_fused`, else torch."""
    if uses_fused(u):
        return _FusedReplace.apply(u, where, new)
    return u.index_copy(1, where, new)


def stout_core(
    planes: torch.Tensor, rho: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new, ld)`` of the layer core (module docstring) from the plane sums of the staples
    ``(B, Nd-1, n, 3, 3)``: fused when :func:`uses_fused`, else :func:`eager_core`."""
    if uses_fused(x):
        return _FusedCore.apply(planes, rho.to(torch.float64), x)
    return eager_core(planes, rho, x)
