"""Kernel backend seam (kernels/backends): dispatch, and every backend against ``eager``.

Each fast backend must give the eager reference's staple sum, force, action, flow generator
(SU(3), Wilson and Symanzik) and U(1) action/force to 1e-13 relative, on small lattices, and
keep autograd through the action (first and second derivatives equal to eager's).
The ``compiled`` backend (torch.compile: minutes to compile on a small CPU) runs in the slow
suite; its arithmetic is the ``soa`` one, tested here.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import kernels.backends as kb
from kernels.backends import eager
from kernels.groups.su_n import reunitarize
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

TOL = 1e-13
FAST = [n for n in kb.available_backends() if n not in ("eager", "compiled")]


def close(got: torch.Tensor, ref: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
    err = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    assert err <= tol, f"{what}: differs from eager by {err:.2e} (relative)"


#: every test here may switch the kernel backend (conftest.py ``restore_backend``)
pytestmark = pytest.mark.usefixtures("restore_backend")


def _links(shape=(4, 4, 2, 6), batch=2, seed=3):
    grid = single_rank_grid(shape)
    return grid, SU3Gauge(grid, 6.0).hot_start(SiteRNG(seed), 0, batch)


# --------------------------------------------------------------------------- dispatch
def test_default_is_eager(monkeypatch):
    monkeypatch.delenv(kb.ENV_VAR, raising=False)
    kb._active = None
    assert kb.get_backend().name == "eager"
    assert "eager" in kb.available_backends()


def test_environment_selects(monkeypatch):
    monkeypatch.setenv(kb.ENV_VAR, "soa")
    kb._active = None
    assert kb.get_backend().name == "soa"


def test_set_backend_and_unknown_name():
    assert kb.set_backend("soa").name == "soa"
    assert kb.get_backend().name == "soa"
    with pytest.raises(kb.BackendError, match="unknown kernel backend 'nope'"):
        kb.set_backend("nope")
    assert kb.get_backend().name == "soa"  # a failed selection changes nothing


def test_theory_uses_active_backend():
    """SU3Gauge/U1Gauge route force and action through the active backend."""
    grid, u = _links()
    th = SU3Gauge(grid, 5.7)
    calls = []

    class Spy(eager.EagerBackend):
        name = "spy"

        def su3_force(self, *a):
            calls.append("force")
            return super().su3_force(*a)

        def su3_action_density(self, *a):
            calls.append("action")
            return super().su3_action_density(*a)

    kb._active = Spy()
    th.force(u), th.action(u)
    assert calls == ["force", "action"]


# --------------------------------------------------------------------------- SU(3)
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("c1", [0.0, -1.0 / 12.0], ids=["wilson", "symanzik"])
def test_su3_kernels_match_eager(name, c1):
    grid, u = _links()
    b, c0 = kb.make_backend(name), 1.0 - 8.0 * c1
    close(b.su3_staple_sum(u, grid, c0, c1), eager.staple_sum(u, grid, c0, c1), "staples")
    close(b.su3_force(u, grid, 5.7, c0, c1), eager.gauge_force(u, grid, 5.7, c0, c1), "force")
    close(b.su3_action_local(u, grid, c0, c1), eager.su3_action_local(u, grid, c0, c1), "S")
    dens = eager.su3_action_density(u, grid, c0, c1)
    close(b.su3_action_density(u, grid, c0, c1), dens, "S per site")
    close(b.su3_flow_generator(u, grid, c1), eager.flow_generator(u, grid, c1), "flow Z")
    p = SU3Gauge(grid, 6.0).random_momentum(SiteRNG(4), 1, u.shape[0])
    for eps in (0.1, 3.0):  # 3.0: |eps P| > 1/4, exercises the squaring
        close(b.su3_expm_mul(eps * p, u), eager.su_expm(eps * p) @ u, f"exp({eps} P) U")
    step = eager.flow_step_rk3(u, grid, 0.05, c1)
    close(b.su3_flow_step_rk3(u, grid, 0.05, c1), step, "RK3 flow step")
    # reunitarisation of links 1e-3 off SU(3) (the projection after a trajectory)
    off = u + 1e-3 * torch.randn(u.shape, dtype=u.dtype, generator=torch.Generator().manual_seed(2))
    ref = reunitarize(off)
    close(b.su3_reunitarize(off), ref, "reunitarize")
    assert float((b.su3_reunitarize(off) - off).abs().max()) > 1e-4  # it moved the links


def test_eager_flow_step_is_wilson_flow_step():
    """The seam's RK3 step is bit for bit kernels.wilson_flow.flow_step_rk3."""
    from kernels.wilson_flow import flow_step_rk3

    grid, u = _links()
    for c1 in (0.0, -0.331):
        assert torch.equal(eager.flow_step_rk3(u, grid, 0.02, c1), flow_step_rk3(u, grid, 0.02, c1))


@pytest.mark.parametrize("name", FAST)
def test_su3_theory_with_backend(name):
    """The whole theory (action, force, HMC-facing API) under the backend equals eager."""
    grid, u = _links(shape=(2, 4, 4, 4), batch=1, seed=8)
    th = SU3Gauge(grid, 5.9)
    kb.set_backend("eager")
    s_ref, f_ref = th.action(u), th.force(u)
    kb.set_backend(name)
    close(th.action(u), s_ref, "action")
    close(th.force(u), f_ref, "force")


@pytest.mark.parametrize("name", FAST)
def test_su3_action_autograd_matches_eager(name):
    """Gradient of the action w.r.t. the links (what flows differentiate), and a second
    derivative (gradient of a function of that gradient), equal eager's."""
    grid, u = _links(shape=(2, 2, 4, 4), batch=2, seed=4)
    th = SU3Gauge(grid, 5.7)
    w = torch.randn(u.shape, dtype=u.dtype, generator=torch.Generator().manual_seed(1))
    out = {}
    for which in ("eager", name):
        kb.set_backend(which)
        x = u.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(th.action(x).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g.real * w.real + g.imag * w.imag).sum(), x)
        out[which] = (g.detach(), h)
    close(out[name][0], out["eager"][0], "dS/dU")
    close(out[name][1], out["eager"][1], "d(w.dS/dU)/dU")


# --------------------------------------------------------------------------- U(1)
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("shape", [(6, 8), (4, 2, 4, 6)], ids=["2d", "4d"])
def test_u1_kernels_match_eager(name, shape):
    grid = single_rank_grid(shape)
    th = U1Gauge(grid, 2.5)
    theta = 4.0 * th.hot_start(SiteRNG(2), 0, 3)  # unwrapped angles too
    b = kb.make_backend(name)
    close(
        b.u1_action_density(theta, grid, th.planes),
        eager.u1_action_density(theta, grid, th.planes),
        "S",
    )
    close(b.u1_force(theta, grid, th.planes, 2.5), eager.u1_force(theta, grid, th.planes, 2.5), "F")
    x = theta.clone().requires_grad_(True)
    kb.set_backend(name)
    (g,) = torch.autograd.grad(th.action(x).sum(), x)
    close(g, eager.u1_force(theta, grid, th.planes, 2.5), "dS/dtheta")


@pytest.mark.parametrize("name", [n for n in FAST if n in ("numba", "vnode")])
def test_u1_kernels_fall_back_beyond_the_polynomial_range(name):
    """Plaquette angles above ``vtrig.LIMIT`` (where the fused kernels' polynomial ``sin``/``cos``
    lose digits) make the fused U(1) kernels hand over to eager: the same numbers, bit for bit."""
    from kernels.backends import fused, vtrig

    grid = single_rank_grid((6, 8))
    th = U1Gauge(grid, 2.5)
    theta = th.hot_start(SiteRNG(2), 0, 2)
    theta[1, 0, 2, 3] += 3.0 * vtrig.LIMIT  # one link of chain 1: four plaquettes
    assert fused.u1_kernel(theta, grid, th.planes, 2.5, force=True) is None
    b = kb.make_backend(name)
    assert torch.equal(
        b.u1_force(theta, grid, th.planes, 2.5), eager.u1_force(theta, grid, th.planes, 2.5)
    )
    assert torch.equal(
        b.u1_action_density(theta, grid, th.planes),
        eager.u1_action_density(theta, grid, th.planes),
    )
    x = theta.clone().requires_grad_(True)
    d = b.u1_action_density(x, grid, th.planes)
    assert torch.equal(d.detach(), eager.u1_action_density(theta, grid, th.planes))


@pytest.mark.parametrize("name", [n for n in FAST if n in ("numba", "vnode")])
@pytest.mark.parametrize("shape", [(6, 8), (3, 5, 4), (4, 2, 4, 6)], ids=["2d", "3d", "4d"])
def test_u1_action_sums_the_density_exactly_in_one_pass(name, shape):
    """The fused U(1) action (each density value split straight into the exact sum's slots,
    never stored) is bit for bit the exact lattice sum of the fused density: what the action
    was before it, and the same on every process grid (tests/mpi/test_backends_mpi.py)."""
    from kernels.backends import fused
    from parallel import lattice_sum

    grid = single_rank_grid(shape)
    th = U1Gauge(grid, 2.5)
    theta = 4.0 * th.hot_start(SiteRNG(5), 0, 3)  # unwrapped angles too
    theta[1] *= 1e-7  # small plaquettes: densities far below 1
    b = kb.make_backend(name)
    ref = lattice_sum(b.u1_action_density(theta, grid, th.planes), grid, 1)
    got = fused.u1_action_sum(theta, grid, th.planes)
    assert got is not None and torch.equal(got, ref)
    kb.set_backend(name)
    assert torch.equal(th.action(theta), 2.5 * ref)
    close(
        th.action(theta),
        2.5 * lattice_sum(eager.u1_action_density(theta, grid, th.planes), grid, 1),
        "S",
    )


@pytest.mark.parametrize("name", [n for n in FAST if n in ("numba", "vnode")])
def test_u1_fused_action_hands_over_on_large_or_nan_angles(name):
    """An angle beyond ``vtrig.LIMIT`` or a NaN makes the one-pass action hand over to the
    exact sum of the density (itself eager for the whole batch beyond ``LIMIT``): a NaN spoils
    its own chain alone."""
    from kernels.backends import fused, vtrig
    from parallel import lattice_sum

    grid = single_rank_grid((6, 8))
    th = U1Gauge(grid, 2.5)
    theta = th.hot_start(SiteRNG(2), 0, 2)
    clean = fused.u1_action_sum(theta, grid, th.planes)
    b = kb.make_backend(name)
    kb.set_backend(name)
    for bad in (3.0 * vtrig.LIMIT, float("nan")):
        t = theta.clone()
        t[1, 0, 2, 3] += bad
        assert fused.u1_action_sum(t, grid, th.planes) is None
        s = th.action(t)
        ref = 2.5 * lattice_sum(b.u1_action_density(t, grid, th.planes), grid, 1)
        assert torch.equal(s, ref) or bad != bad
    assert s[0] == 2.5 * clean[0] and torch.isnan(s[1])


# --------------------------------------------------------------------------- compiled
@pytest.mark.slow
def test_compiled_matches_eager():
    """torch.compile of the SoA force kernels (slow: minutes of compilation on a small CPU)."""
    grid, u = _links(shape=(4, 4, 4, 4), batch=1)
    b = kb.make_backend("compiled")
    close(b.su3_force(u, grid, 6.0, 1.0, 0.0), eager.gauge_force(u, grid, 6.0), "force")


# --------------------------------------------------------------------------- numba layout
@pytest.mark.skipif("numba" not in FAST, reason="numba not installed")
@pytest.mark.parametrize("shape", [(4, 4, 2, 6), (3, 5), (2, 3, 4)])
def test_numba_periodic_pad_is_halo_pad(shape):
    """The single-rank padding of the numba backend is parallel.halo_pad, value for value."""
    from kernels.backends import fused
    from parallel import halo_pad

    grid, u = _links(shape=shape, batch=2)
    ref = torch.view_as_real(halo_pad(u, grid, 1, first=2).contiguous())
    got = fused._su3_planes(u, grid)
    assert torch.equal(torch.from_numpy(got.copy()), ref.reshape(got.shape))


def test_numba_workers_sleep_between_kernels():
    """The fused backend picks numba's work-queue threading layer (its workers sleep after a
    kernel) unless NUMBA_THREADING_LAYER says otherwise: the default OpenMP layer left a
    spinning worker that slowed every later torch operation ~10x on a 2-core machine."""
    numba = pytest.importorskip("numba")
    import os

    kb.set_backend("numba")
    try:
        th = SU3Gauge(single_rank_grid((2, 2, 2, 2)), 6.0)
        th.force(th.hot_start(SiteRNG(3), 0, 1))
    finally:
        kb.set_backend("eager")
    want = os.environ.get("NUMBA_THREADING_LAYER", "workqueue")
    if want in ("workqueue", "omp", "tbb"):
        assert numba.threading_layer() == want


def test_the_application_lets_torch_threads_sleep_when_numba_kernels_run():
    """``import app`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads when numba is
    installed (torch's spinning OpenMP threads otherwise hold the cores numba's workers need:
    ~25% of a two-thread vnode trajectory), not without numba (pure torch is faster with
    spinning threads), and never over a user's choice."""
    import os
    import subprocess
    import sys

    hide_numba = (
        "import importlib.util as u; f = u.find_spec; "
        "u.find_spec = lambda n, *a: None if n == 'numba' else f(n, *a); "
    )
    code = "import os, app, torch; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    has_numba = importlib.util.find_spec("numba") is not None
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cases = [
        ("", None, "PASSIVE" if has_numba else "unset"),
        (hide_numba, None, "unset"),
        ("", "ACTIVE", "ACTIVE"),
    ]
    for prefix, given, want in cases:
        run_env = dict(env, **({"OMP_WAIT_POLICY": given} if given else {}))
        out = subprocess.run(
            [sys.executable, "-c", prefix + code], capture_output=True, text=True, env=run_env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == want


def test_numba_exponential_of_any_matrix():
    """The numba ``exp(X) W`` (Cayley-Hamilton, the same scheme as the vnode kernel, per link)
    equals torch's ``matrix_exp`` for general complex matrices over six decades of norm
    (squarings above |X|_F = 1), a degenerate spectrum and zero."""
    fused = pytest.importorskip("kernels.backends.fused", exc_type=ImportError)
    gen = torch.Generator().manual_seed(5)
    w = torch.linalg.matrix_exp(torch.randn(64, 3, 3, dtype=torch.complex128, generator=gen))
    x = torch.randn(64, 3, 3, dtype=torch.complex128, generator=gen)
    deg = torch.diag_embed(torch.tensor([0.7j, 0.7j, -1.4j])).expand(64, 3, 3)
    for a in [1e-6 * x, 0.3 * x, x, 4.0 * x, 0.0 * x, deg, deg + 0.1 * x]:
        close(fused.expm_mul(a, w), torch.linalg.matrix_exp(a) @ w, "exp(X) W")
