"""Fused numba core of the SU(3) stout layer (kernels/flows/su3_fused.py) against the eager one.

The fused forward and analytic backward equal the eager torch core (autograd through
``link_log_det`` and ``su3_exp``) to 1e-12, also for large coefficients and degenerate
spectra (``Q = 0``); a whole flow's field, log-det and trivialized force are the same with
either setting (with and without per-layer checkpointing) and the force equals a numerical
derivative; the double backward (``create_graph``) goes through the eager core and equals
it; without numba, or with the setting ``eager``, the eager core runs.
"""

from __future__ import annotations

import pytest
import torch

from kernels.flows import su3_fused
from kernels.flows.su3 import su3_stout_flow
from kernels.flows.su3_fused import eager_core, set_stout_kernel, stout_core, uses_fused
from kernels.groups.su_n import algebra_to_components, expm_su3, project_ta, su_expm
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

numba = pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def _restore_setting():
    yield
    set_stout_kernel(None)


def _su3(gen: torch.Generator, *shape: int) -> torch.Tensor:
    a = torch.randn(*shape, 3, 3, dtype=torch.complex128, generator=gen)
    return expm_su3(project_ta(a))


def _inputs(scale: float, seed: int = 1, b: int = 2, n: int = 40):
    gen = torch.Generator().manual_seed(seed)
    staples = _su3(gen, b, 2, 3, n)
    x = _su3(gen, b, n)
    rho = scale * torch.randn(b, 3, n, dtype=torch.float64, generator=gen)
    return staples[:, 0] + staples[:, 1], rho, x  # the plane sums P_nu = C^up_nu + C^dn_nu


def _grads(fn, inputs, gnew, gld, create_graph=False):
    ins = [t.clone().requires_grad_(True) for t in inputs]
    new, ld = fn(*ins)
    outs, cots = [], []
    if gnew is not None:
        outs.append(new)
        cots.append(gnew)
    if gld is not None:
        outs.append(ld)
        cots.append(gld)
    return (new, ld), torch.autograd.grad(outs, ins, cots, create_graph=create_graph), ins


@pytest.mark.parametrize("scale", [0.02, 0.08, 0.3])
@pytest.mark.parametrize("which", ["both", "link", "logdet"])
def test_fused_core_equals_eager_core_forward_and_backward(scale, which):
    planes, rho, x = _inputs(scale)
    assert uses_fused(x)
    gen = torch.Generator().manual_seed(5)
    gnew = torch.randn(x.shape, dtype=torch.complex128, generator=gen)
    gld = torch.randn(x.shape[:2], dtype=torch.float64, generator=gen)
    gnew = None if which == "logdet" else gnew
    gld = None if which == "link" else gld
    (n0, l0), g0, _ = _grads(eager_core, (planes, rho, x), gnew, gld)
    (n1, l1), g1, _ = _grads(su3_fused._FusedCore.apply, (planes, rho, x), gnew, gld)
    n0, l0, n1, l1 = (t.detach() for t in (n0, l0, n1, l1))
    assert (n1 - n0).abs().max() < 1e-13
    assert (l1 - l0).abs().max() < 1e-13 * max(1.0, float(l0.abs().max()))
    assert float(l0.abs().max()) > 1e-3  # a real log-det
    for a, b in zip(g0, g1, strict=True):
        assert (a - b).abs().max() < 1e-12 * float(a.abs().max())
        assert float(a.abs().max()) > 1e-3


def test_fused_core_degenerate_spectrum_and_zero_coefficients():
    """``rho = 0`` gives ``Q = 0`` (three equal eigenvalues: every divided difference on its
    series branch); a tiny ``rho`` mixes branches."""
    planes, rho, x = _inputs(0.0)
    rho[:, :, ::2] = 1e-9
    gen = torch.Generator().manual_seed(2)
    gnew = torch.randn(x.shape, dtype=torch.complex128, generator=gen)
    gld = torch.randn(x.shape[:2], dtype=torch.float64, generator=gen)
    (n0, l0), g0, _ = _grads(eager_core, (planes, rho, x), gnew, gld)
    (n1, l1), g1, _ = _grads(su3_fused._FusedCore.apply, (planes, rho, x), gnew, gld)
    n0, l0, n1, l1 = (t.detach() for t in (n0, l0, n1, l1))
    assert (n1 - n0).abs().max() < 1e-14 and (l1 - l0).abs().max() < 1e-14
    for a, b in zip(g0, g1, strict=True):
        assert (a - b).abs().max() < 1e-12 * max(1.0, float(a.abs().max()))


def test_double_backward_uses_eager_core():
    """A graph through the backward (force matching): the second derivative equals eager's."""
    planes, rho, x = _inputs(0.08, seed=3)
    gen = torch.Generator().manual_seed(4)
    gld = torch.randn(x.shape[:2], dtype=torch.float64, generator=gen)
    out = []
    for fn in (eager_core, su3_fused._FusedCore.apply):
        _, (gs, grho, gx), ins = _grads(fn, (planes, rho, x), None, gld, create_graph=True)
        second = torch.autograd.grad(gx.abs().pow(2).sum() + grho.pow(2).sum(), ins)
        out.append([gx, grho, *second])
    for a, b in zip(*out, strict=True):
        a, b = a.detach(), b.detach()
        assert (a - b).abs().max() < 1e-12 * float(a.abs().max())


def _flow_results(grid, th, v, checkpoint=False):
    torch.manual_seed(3)
    flow = su3_stout_flow(grid, n_layers=8, hidden=(4,), rho_max=0.9, checkpoint_layers=checkpoint)
    with torch.no_grad():
        for layer in flow.layers:
            layer.net.net[-1].bias.add_(1.0)  # large, field-dependent log-det
    flow.requires_grad_(False)
    tt = TransformedTheory(th, flow)
    with torch.no_grad():
        y, ld = flow(v)
    return tt, y, ld, tt.force(v)


def test_flow_and_trivialized_force_equal_eager_and_numerical_derivative():
    grid = single_rank_grid((4, 4, 2, 2))
    th = SU3Gauge(grid, 2.0)
    v = th.hot_start(SiteRNG(21), 0, 2)
    set_stout_kernel("eager")
    assert not uses_fused(v)
    _, y0, ld0, f0 = _flow_results(grid, th, v)
    set_stout_kernel("auto")
    assert uses_fused(v)
    tt, y1, ld1, f1 = _flow_results(grid, th, v)
    _, _, _, f2 = _flow_results(grid, th, v, checkpoint=True)
    assert (y1 - y0).abs().max() < 1e-13
    assert (ld1 - ld0).abs().max() < 1e-13 * ld0.abs().max() and ld0.abs().min() > 1.0
    assert (f1 - f0).abs().max() < 1e-12 * f0.abs().max()
    assert torch.equal(f1, f2)
    # d/dt S~(exp(t X) V) at t = 0 = sum x_a f_a
    xmom = th.random_momentum(SiteRNG(4), 0, 2)
    h = 1e-4
    with torch.no_grad():
        s = [tt.action(su_expm(k * h * xmom) @ v) for k in (1, -1, 2, -2)]
    num = (8 * (s[0] - s[1]) - (s[2] - s[3])) / (12 * h)
    ana = (algebra_to_components(xmom) * algebra_to_components(f1)).sum((1, 2, 3, 4, 5, 6))
    assert (num - ana).abs().max() < 1e-7 * ana.abs().max()


def test_without_numba_or_when_set_eager_the_eager_core_runs(monkeypatch):
    planes, rho, x = _inputs(0.08)
    n0, l0 = eager_core(planes, rho, x)
    monkeypatch.setattr(su3_fused, "_kernels", False)  # as if numba were not installed
    assert not su3_fused.fused_available() and not uses_fused(x)
    n1, l1 = stout_core(planes, rho, x)
    assert torch.equal(n1, n0) and torch.equal(l1, l0)
    monkeypatch.undo()
    set_stout_kernel("eager")
    assert not uses_fused(x)
    set_stout_kernel(None)
    monkeypatch.setenv(su3_fused.ENV_VAR, "eager")
    assert not uses_fused(x)
    monkeypatch.setenv(su3_fused.ENV_VAR, "auto")
    assert uses_fused(x) and not uses_fused(x.to(torch.complex64))
    monkeypatch.setenv(su3_fused.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="TRIVHMC_STOUT_KERNEL"):
        uses_fused(x)
    with pytest.raises(ValueError, match="one of"):
        set_stout_kernel("numba")


@pytest.mark.parametrize("shape", [(4, 4, 2, 2), (6, 2, 2, 2), (8, 4, 2, 2)])
def test_fused_loops_equal_layer_plane_sums_features_and_eager_loops(shape):
    """Lane blocks of 16 active sites: 32 (two full blocks) and 24 (a partial last block);
    at 8x4x2x2 the backward runs in four slabs of 16 sites (two per colour)."""
    grid = single_rank_grid(shape)
    th = SU3Gauge(grid, 2.0)
    u = th.hot_start(SiteRNG(8), 0, 2)
    src = u.reshape(2, -1, 3, 3)
    for layer in su3_stout_flow(grid, n_layers=8, hidden=(2,)).layers[::3]:
        st, pl, ix = layer._tables
        index = layer.neighbour_index
        planes, f, x, passed = su3_fused._FusedLoops.apply(src, index, st, pl, ix, layer._slabs)
        assert torch.equal(passed, src)
        ref_staples = layer.staples(u)
        ref_f = layer.features(u, ref_staples)
        ref = torch.stack([ref_staples[2 * i] + ref_staples[2 * i + 1] for i in range(3)], 1)
        assert (planes - ref).abs().max() < 1e-14
        assert (layer._on_lattice(f) - ref_f).abs().max() < 1e-14
        assert torch.equal(x, layer.neighbourhood(u)[ix])
        gen = torch.Generator().manual_seed(9)
        cots = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in (planes, f, x, src)]
        for through in (False, True):  # with a cotangent on the passed-through field or not
            grads = []
            for fused in (False, True):
                s_in = src.clone().requires_grad_(True)
                if fused:
                    outs = su3_fused._FusedLoops.apply(s_in, index, st, pl, ix, layer._slabs)
                else:
                    outs = (*su3_fused.eager_loops(s_in, index, st, pl, ix), s_in)
                n_out = 4 if through else 3
                grads.append(torch.autograd.grad(outs[:n_out], s_in, cots[:n_out])[0])
            assert (grads[0] - grads[1]).abs().max() < 1e-13 * grads[0].abs().max()
            assert float(grads[0].abs().max()) > 1e-3


@pytest.mark.parametrize("shape", [(8, 4, 2, 2), (12, 2, 2, 2), (4, 4, 2, 2), (6, 2, 2, 2)])
def test_backward_slabs_of_one_colour_never_add_into_the_same_row(shape):
    """The premise of the parallel backward (su3_stout_lanes): the field rows a slab's sites
    read (and add into) are disjoint from those of every other slab of the same parity;
    axis 0 with ``L0 % 4 == 0`` gives ``L0 / 2`` slabs, otherwise one."""
    grid = single_rank_grid(shape)
    for layer in su3_stout_flow(grid, n_layers=8, hidden=(2,)).layers:
        idx = layer.neighbour_index.reshape(len(layer._item), -1)
        sl = layer._slabs.tolist()
        assert sl[0] == 0 and sl[-1] == idx.shape[1] and sl == sorted(sl)
        assert len(sl) - 1 == (shape[0] // 2 if shape[0] % 4 == 0 else 1)
        rows = [set(idx[:, a:b].reshape(-1).tolist()) for a, b in zip(sl[:-1], sl[1:])]
        for i in range(len(rows)):
            for j in range(i + 2, len(rows), 2):
                assert not rows[i] & rows[j], (layer.mu, layer.parity, i, j)
    with pytest.raises(ValueError, match="ordered along axis 0"):
        su3_fused.backward_slabs(torch.tensor([0, 2, 1, 3]), 4)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one numba thread here")
def test_loops_backward_same_bits_on_one_and_two_threads_and_with_one_slab():
    """The slabs' fixed order: the field's cotangent is bitwise the same on 1 and 2 threads;
    with a single slab (the serial order) it agrees to rounding."""
    grid = single_rank_grid((12, 4, 2, 2))
    u = SU3Gauge(grid, 2.0).hot_start(SiteRNG(8), 0, 2)
    layer = su3_stout_flow(grid, n_layers=2, hidden=(2,)).layers[1]
    st, pl, ix = layer._tables
    src, index = u.reshape(2, -1, 3, 3), layer.neighbour_index
    one = torch.tensor([0, layer._slabs[-1]])
    gen = torch.Generator().manual_seed(4)
    outs = su3_fused._FusedLoops.apply(src, index, st, pl, ix, layer._slabs)
    cots = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in outs]
    threads = torch.get_num_threads()
    grads = []
    try:
        for n, slabs in ((1, layer._slabs), (2, layer._slabs), (2, one)):
            torch.set_num_threads(n)
            s_in = src.clone().requires_grad_(True)
            outs = su3_fused._FusedLoops.apply(s_in, index, st, pl, ix, slabs)
            grads.append(torch.autograd.grad(outs, s_in, cots)[0])
    finally:
        torch.set_num_threads(threads)
    assert len(layer._slabs) == 7
    assert torch.equal(grads[0], grads[1])
    assert (grads[2] - grads[0]).abs().max() < 1e-13 * grads[0].abs().max()
    assert not torch.equal(grads[2], grads[0])  # a different order: the slabs were used


def test_force_matching_double_backward_equals_eager():
    """create_graph through both fused Functions (their backward recomputes the eager torch
    versions): the force-matching loss gradients equal the all-eager ones."""
    from kernels.flows.force_matching import force_matching_loss

    grid = single_rank_grid((4, 2, 2, 2))
    th = SU3Gauge(grid, 2.0)
    v = th.hot_start(SiteRNG(5), 0, 1)
    out = []
    for setting in ("eager", "auto"):
        set_stout_kernel(setting)
        torch.manual_seed(3)
        flow = su3_stout_flow(grid, n_layers=4, hidden=(2,), rho_max=0.9)
        loss, _ = force_matching_loss(TransformedTheory(th, flow), v)
        loss.backward()
        out.append((loss.detach(), [p.grad for p in flow.parameters()]))
    assert abs(float(out[0][0] - out[1][0])) < 1e-12 * abs(float(out[0][0]))
    for a, b in zip(out[0][1], out[1][1], strict=True):
        assert (a - b).abs().max() < 1e-11 * max(1e-3, float(a.abs().max()))


def test_replace_links_equals_index_copy():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 40, 3, 3, dtype=torch.complex128, generator=gen)
    new = torch.randn(2, 7, 3, 3, dtype=torch.complex128, generator=gen)
    where = torch.tensor([0, 5, 6, 11, 20, 33, 39])
    g = torch.randn(2, 40, 3, 3, dtype=torch.complex128, generator=gen)
    out = []
    for fn in (
        lambda a, b: a.index_copy(1, where, b),
        lambda a, b: su3_fused._FusedReplace.apply(a, where, b),
    ):
        a, b = u.clone().requires_grad_(True), new.clone().requires_grad_(True)
        y = fn(a, b)
        out.append((y.detach(), *torch.autograd.grad(y, (a, b), g)))
    for x, y in zip(*out, strict=True):
        assert torch.equal(x, y)


def test_caller_cotangent_is_not_modified():
    """The write-back modifies only its own cotangent buffers in place, never the caller's."""
    grid = single_rank_grid((4, 4, 2, 2))
    th = SU3Gauge(grid, 2.0)
    v = th.hot_start(SiteRNG(6), 0, 2).requires_grad_(True)
    torch.manual_seed(3)
    flow = su3_stout_flow(grid, n_layers=4, hidden=(2,))
    flow.requires_grad_(False)
    u, ld = flow.forward_local(v)
    g = torch.randn(u.shape, dtype=u.dtype, generator=torch.Generator().manual_seed(1))
    g0 = g.clone()
    (gv,) = torch.autograd.grad((u, ld), v, (g, torch.ones_like(ld)))
    assert torch.equal(g, g0)
    assert float(gv.abs().max()) > 1e-3


def test_divided_difference_of_phi_equals_high_precision():
    """``phi[i t1, i t2]`` (``phi(z) = (e^z - 1) / z``) of the core's backward, on both of its
    branches (the real Taylor series below |t| = 0.2 with its adaptive length, the
    exponential's divided difference above), against 50-digit arithmetic (mpmath: the
    divided difference, or ``phi'`` when ``t1 = t2``)."""
    mpmath = pytest.importorskip("mpmath")
    from kernels.flows import su3_fused_kernels as k

    mpmath.mp.dps = 50

    def phi(z):
        return mpmath.expm1(z) / z if z != 0 else mpmath.mpf(1)

    def reference(t1, t2):
        x, y = mpmath.mpc(0, t1), mpmath.mpc(0, t2)
        if t1 == t2:
            return mpmath.diff(phi, x) if t1 != 0 else mpmath.mpf(0.5)
        return (phi(x) - phi(y)) / (x - y)

    def inputs(t):
        e = complex(mpmath.exp(mpmath.mpc(0, t / 2)))
        return e, complex(phi(mpmath.mpc(0, t)))

    gen = torch.Generator().manual_seed(4)
    cases = [(0.0, 0.0), (1e-3, 1e-3), (0.199, -0.199), (0.2, 0.0), (0.3, 0.29), (2.5, -1.0)]
    for _ in range(40):
        scale = float(10 ** (-4 * torch.rand(1, generator=gen)))  # 1e-4 .. 1
        t1, t2 = (scale * (2 * torch.rand(2, generator=gen) - 1)).tolist()
        cases.append((t1, t2))
    for t1, t2 in cases:
        (e1, p1), (e2, p2) = inputs(t1), inputs(t2)
        got = k._dd_phi(t1, t2, e1, e2, p1, p2)
        ref = complex(reference(t1, t2))
        assert abs(got - ref) <= 2e-15 * abs(ref), (t1, t2, got, ref)


def test_real_inverse_with_row_pivoting_equals_numpy():
    """The core's in-place 9x9 Gauss-Jordan (``N_r^{-1}`` and ``log |det N_r|``) against
    numpy's LU, for matrices near 1 (no row swaps, as in a flow) and for ones whose
    elimination must swap rows (a permuted, badly ordered matrix)."""
    import numpy as np

    from kernels.flows import su3_fused_kernels as k

    rng = np.random.default_rng(5)
    perm = np.empty(9, np.int64)
    near_one = np.eye(9) + 0.1 * rng.standard_normal((9, 9))
    permuted = rng.permutation(np.eye(9) + 0.05 * rng.standard_normal((9, 9)))
    general = rng.standard_normal((9, 9))
    for m in (near_one, permuted, general):
        a = m.copy()
        logdet = k._inverse_real(a, perm)
        assert np.abs(a - np.linalg.inv(m)).max() < 1e-12 * np.abs(a).max()
        assert abs(logdet - np.linalg.slogdet(m)[1]) < 1e-12
    assert (perm != np.arange(9)).any()  # the last case swapped rows
