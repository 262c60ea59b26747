"""SU(3) gauge-covariant stout flows, Lie-derivative forces, SU(3) trivialized HMC, force matching.

Exact checks only: the autograd Lie derivative equals the analytic Wilson/Iwasaki force; the
per-link 8x8 Jacobian formula equals autograd; the flow's log-det equals the brute-force
``slogdet`` of the full 512x512 autograd Jacobian on a 2^4 lattice; ``F^{-1}(F(U)) = U``;
``F(g.U) = g.F(U)``; the trivialized force equals the numerical derivative of ``S~``;
trivialized HMC at ``beta = 0`` reproduces Haar measure (plaquette 0 exactly: sensitive to the
log-det, which moves it by ~70 sigma if dropped) and at ``beta = 1.5`` agrees with plain HMC;
force-matching training lowers the loss on held-out configurations.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.flows.base import Composition, FlowError, build_flow
from kernels.flows.force_matching import (
    ForceMatchingConfig,
    ForceMatchingTrainer,
    force_matching_loss,
    trivialized_force,
)
from kernels.flows.lie import lie_autograd_force
from kernels.flows.su3 import SU3StoutLayer, link_jacobian, link_log_det, su3_stout_flow
from kernels.groups import haar_su_n
from kernels.groups.su_n import (
    algebra_to_components,
    components_to_algebra,
    dagger,
    project_ta,
    su_expm,
)
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.su3 import SU3Gauge, gauge_transform
from parallel import single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG

SHAPE = (4, 2, 2, 2)


def _strong(flow: Composition, bias: float = 1.0) -> Composition:
    """Push every layer's coefficients towards the bound (a large, field-dependent log-det)."""
    with torch.no_grad():
        for layer in flow.layers:
            layer.net.net[-1].bias.add_(bias)
    return flow


MIXED = [(0, 0, 3), (1, 1, 1), (2, 0, 1), (3, 1, 1), (0, 1, 1), (1, 0, 3)]


def _mixed_flow(grid, bias: float = 1.0, spec=MIXED) -> Composition:
    """Layers ``(mu, parity, kernel size)``: by default six over all directions and both
    parities, two with 3^4 convolutions."""
    torch.manual_seed(7)
    layers = [
        SU3StoutLayer(grid, mu, par, hidden=(3,), kernel_size=k, rho_max=0.9) for mu, par, k in spec
    ]
    return _strong(Composition(grid, layers), bias)


def _gauge(grid, batch, seed=11):
    return haar_su_n(SiteRNG(seed).normal(grid, PURPOSE_USER, 0, batch, trail=(3, 3, 2)))


# ------------------------------------------------------------------ Lie derivatives
@pytest.mark.parametrize("action", ["wilson", "iwasaki"])
def test_lie_autograd_force_equals_analytic_force(action):
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 5.5, action=action)
    u = th.hot_start(SiteRNG(3), 0, 2)
    f = lie_autograd_force(th.action, u)
    ref = th.force(u)
    assert not f.requires_grad
    assert (f - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert (f - project_ta(f)).abs().max() < 1e-14  # in the algebra


def test_link_jacobian_formula_equals_autograd():
    """``J = exp(ad_Q) + phi(ad_Q) L`` of ``U -> exp(TA(C U^+)) U`` against autograd."""
    gen = torch.Generator().manual_seed(1)
    normals = torch.randn(5, 3, 3, 2, generator=gen)
    u = haar_su_n(normals)
    c = 0.4 * haar_su_n(torch.randn(5, 3, 3, 2, generator=gen)) + 0.3 * haar_su_n(
        torch.randn(5, 3, 3, 2, generator=gen)
    )

    def out_coords(w):  # (5, 8) -> (5, 8)
        x = su_expm(components_to_algebra(w, 3)) @ u
        y = su_expm(project_ta(c @ dagger(x))) @ x
        y0 = su_expm(project_ta(c @ dagger(u))) @ u
        return algebra_to_components(y @ dagger(y0))

    jac = torch.autograd.functional.jacobian(out_coords, torch.zeros(5, 8))
    jac = torch.stack([jac[i, :, i, :] for i in range(5)])
    omega = c @ dagger(u)
    q = project_ta(omega)
    assert (link_jacobian(q, omega) - jac).abs().max() < 1e-12
    ld = link_log_det(q, omega)
    assert (ld - torch.linalg.slogdet(jac).logabsdet).abs().max() < 1e-12
    assert ld.abs().min() > 1e-2  # a non-trivial Jacobian


def test_a_non_finite_link_spoils_only_its_own_log_det():
    """``link_log_det`` (eager path; its ``phi(-ad_Q)`` series is scaled by the largest norm
    of the batch) with one infinite and one NaN link: those two come out non-finite, every
    other link's log-det is bit for bit that of the clean batch, and nothing raises (an
    infinite norm made ``math.ceil`` raise, a NaN one turned every link's series into the
    identity)."""
    gen = torch.Generator().manual_seed(3)
    u = haar_su_n(torch.randn(6, 3, 3, 2, generator=gen))
    c = 0.4 * torch.complex(
        torch.randn(6, 3, 3, generator=gen), torch.randn(6, 3, 3, generator=gen)
    )
    omega = c @ dagger(u)
    q = project_ta(omega)
    ref = link_log_det(q, omega)
    bad_q, bad_o = q.clone(), omega.clone()
    bad_q[1, 0, 1] = complex(float("inf"), 0.0)
    bad_o[4, 2, 2] = complex(float("nan"), 0.0)
    got = link_log_det(bad_q, bad_o)
    ok = torch.tensor([True, False, True, True, False, True])
    assert torch.equal(got[ok], ref[ok]) and ref.abs().min() > 1e-3
    assert not torch.isfinite(got[~ok]).any()


# ------------------------------------------------------------------ the flow
def test_inverse_roundtrip_and_log_det_cancel():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    flow = _strong(su3_stout_flow(grid, n_layers=8, hidden=(4,), rho_max=0.9), 2.0)
    u = th.hot_start(SiteRNG(5), 0, 2)
    with torch.no_grad():
        y, ld = flow(u)
        x, ldi = flow.inverse(y)
    assert ld.dtype == torch.float64 and ld.abs().min() > 1.0
    assert (y - u).abs().max() > 0.1  # the flow does something
    assert (x - u).abs().max() < 1e-10
    assert (ld + ldi).abs().max() < 1e-10
    # links stay in SU(3)
    eye = torch.eye(3, dtype=y.dtype)
    assert (y @ dagger(y) - eye).abs().max() < 1e-12
    assert (torch.linalg.det(y) - 1).abs().max() < 1e-12


def test_log_det_equals_bruteforce_jacobian_2x2x2x2():
    """512x512 Jacobian in algebra coordinates: perturb ``U -> exp(w T) U``, read the output
    in ``log(F(exp(wT) U) F(U)^+)``; one reverse pass on a batch of 512 copies (copy ``b``
    carries its own ``w_b``, so ``d out_b[b] / d w_b`` is row ``b``)."""
    grid = single_rank_grid((2, 2, 2, 2))
    th = SU3Gauge(grid, 2.0)
    flow = _mixed_flow(grid, spec=MIXED[:5])
    u = th.hot_start(SiteRNG(2), 0, 1)
    with torch.no_grad():
        y, ld = flow(u)
    n = 4 * 16 * 8
    w = torch.zeros(n, 4, 2, 2, 2, 2, 8, requires_grad=True)
    out, _ = flow(su_expm(components_to_algebra(w, 3)) @ u)
    # at w = 0 the output is y, and d log(M) = dM at M = 1
    comps = algebra_to_components(out @ dagger(y)).reshape(n, n)
    comps.diagonal().sum().backward()
    jac = w.grad.reshape(n, n)
    sign, brute = torch.linalg.slogdet(jac)
    assert sign == 1
    assert abs(float(brute) - float(ld[0])) < 1e-10 * max(1.0, abs(float(brute)))
    assert abs(float(ld[0])) > 5.0


def test_gauge_equivariance():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    flow = _mixed_flow(grid)
    u = th.hot_start(SiteRNG(8), 0, 2)
    g = _gauge(grid, 2)
    with torch.no_grad():
        y, ld = flow(u)
        yg, ldg = flow(gauge_transform(u, g, grid))
    assert (yg - gauge_transform(y, g, grid)).abs().max() < 1e-12
    assert (ldg - ld).abs().max() < 1e-11


def test_coefficients_bounded_and_gauge_invariant_features():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    layer = SU3StoutLayer(grid, 2, 1, hidden=(4,), rho_max=0.6)
    with torch.no_grad():
        layer.net.net[-1].bias.fill_(50.0)  # saturate tanh
        u = th.hot_start(SiteRNG(4), 0, 2)
        rho = layer.coefficients(u, layer.staples(u))
        s = 2.0 * rho.abs().sum(1)  # sum over nu and the two staples of |rho|
        assert float(s.max()) <= 0.6 + 1e-12 and float(s.max()) > 0.59
        g = _gauge(grid, 2)
        ug = gauge_transform(u, g, grid)
        f, fg = layer.features(u, layer.staples(u)), layer.features(ug, layer.staples(ug))
        assert (f - fg).abs().max() < 1e-12
        assert layer.n_features == 15 + 3
    with pytest.raises(ValueError, match="rho_max"):
        SU3StoutLayer(grid, 0, 0, rho_max=1.0)
    with pytest.raises(ValueError, match="multiple of 2"):
        SU3StoutLayer(single_rank_grid((4, 3, 2, 2)), 0, 0)


def test_inverse_errors_are_clear():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    flow = _strong(su3_stout_flow(grid, n_layers=1, hidden=(), max_iter=2), 2.0)
    u = th.hot_start(SiteRNG(6), 0, 1)
    with pytest.raises(FlowError, match="did not converge"), torch.no_grad():
        flow.inverse(u)
    with pytest.raises(FlowError, match="not differentiable"):
        flow.inverse(u.clone().requires_grad_(True))


def test_builder_registry_roundtrip_and_larger_lattice():
    grid = single_rank_grid(SHAPE)
    flow = su3_stout_flow(grid, n_layers=3, hidden=(2,), kernel_size=3, rho_max=0.7)
    assert flow.architecture["builder"] == "kernels.flows.su3:su3_stout_flow"
    again = build_flow(flow.architecture, grid)
    again.load_state_dict(flow.state_dict())
    u = SU3Gauge(grid, 2.0).hot_start(SiteRNG(9), 0, 1)
    with torch.no_grad():
        assert torch.equal(flow(u)[0], again(u)[0])
        big = flow.rebuild_for(single_rank_grid((4, 4, 2, 2)))
        ub = SU3Gauge(big.grid, 2.0).hot_start(SiteRNG(9), 0, 1)
        yb, ldb = big(ub)
        assert torch.isfinite(ldb).all() and yb.shape == ub.shape


# ------------------------------------------------------------------ trivialized force
def test_trivialized_force_equals_numerical_derivative():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0, action="iwasaki")
    tt = TransformedTheory(th, _mixed_flow(grid))
    v = th.hot_start(SiteRNG(12), 0, 2)
    f = tt.force(v)
    assert f.shape == v.shape and (f - project_ta(f)).abs().max() < 1e-13
    f2 = trivialized_force(tt, v, create_graph=False)
    assert (f2 - f).abs().max() < 1e-13
    f3 = lie_autograd_force(tt.action, v)
    assert (f3 - f).abs().max() < 1e-13
    # d/dt S~(exp(t X) V) at t = 0 equals sum x_a f_a = -2 Re Tr(X F), summed over links
    for seed in (1, 2):
        x = th.random_momentum(SiteRNG(seed), 0, 2)
        h = 1e-4
        with torch.no_grad():
            sp, sm = tt.action(su_expm(h * x) @ v), tt.action(su_expm(-h * x) @ v)
            sp2, sm2 = tt.action(su_expm(2 * h * x) @ v), tt.action(su_expm(-2 * h * x) @ v)
        num = (8 * (sp - sm) - (sp2 - sm2)) / (12 * h)  # O(h^4)
        ana = (algebra_to_components(x) * algebra_to_components(f)).sum((1, 2, 3, 4, 5, 6))
        assert (num - ana).abs().max() < 1e-7 * ana.abs().max()


# ------------------------------------------------------------------ trivialized HMC
def _hmc_plaquettes(theory, batch, n_traj, n_therm, n_steps, seed, check_rev=False):
    rng = SiteRNG(seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", n_steps, 1.0), rng)
    field = theory.hot_start(rng, 0, batch)
    plaq, exp_mdh, rev = [], [], None
    for t in range(1, n_therm + n_traj + 1):
        field, rec = hmc.trajectory(field, t, check_reversibility=check_rev and t == 1)
        if rec.reversibility_field_error is not None:
            rev = (rec.reversibility_field_error.max(), rec.reversibility_dH_error.max())
        if t > n_therm:
            plaq.append(theory.observables(field)["plaquette"])
            exp_mdh.append(rec.exp_minus_dH)
    # chains are independent: errors from the spread of the per-chain means
    p = torch.stack(plaq).mean(0)
    e = torch.stack(exp_mdh).mean(0)
    return (
        (float(p.mean()), float(p.std()) / math.sqrt(batch)),
        (float(e.mean()), float(e.std()) / math.sqrt(batch)),
        rev,
    )


def test_trivialized_hmc_beta0_reproduces_haar_measure():
    """At ``beta = 0`` the physical links must be Haar distributed: ``<Re Tr U_P / 3> = 0``.
    The flow is a strong smoother (``F`` maps Haar fields to plaquette ~0.15), so only the
    ``-log det`` term of ``S~`` keeps the plaquette at 0 (dropping it: ~70 sigma off)."""
    grid = single_rank_grid((2, 2, 2, 2))
    torch.manual_seed(0)
    flow = _strong(su3_stout_flow(grid, n_layers=4, hidden=(), init_scale=0.3, rho_max=0.9), 3)
    tt = TransformedTheory(SU3Gauge(grid, 0.0), flow)
    with torch.no_grad():
        u = SU3Gauge(grid, 0.0).hot_start(SiteRNG(1), 0, 4)
        assert float(SU3Gauge(grid, 0.0).observables(flow(u)[0])["plaquette"].mean()) > 0.1
    (p, dp), (e, de), rev = _hmc_plaquettes(tt, 16, 6, 2, 2, seed=12, check_rev=True)
    assert rev[0] < 1e-10 and rev[1] < 1e-9
    assert abs(p) < 4 * dp and dp < 0.004
    assert abs(e - 1) < 4 * de + 1e-3


def test_trivialized_hmc_agrees_with_plain_hmc_beta_1p5():
    grid = single_rank_grid((2, 2, 2, 2))
    th = SU3Gauge(grid, 1.5)
    torch.manual_seed(1)
    flow = _strong(su3_stout_flow(grid, n_layers=4, hidden=(), init_scale=0.3, rho_max=0.9), 2)
    tt = TransformedTheory(th, flow)
    (p0, dp0), (e0, de0), _ = _hmc_plaquettes(th, 16, 10, 2, 2, seed=21)
    (p1, dp1), (e1, de1), _ = _hmc_plaquettes(tt, 16, 6, 2, 2, seed=22)
    assert abs(p1 - p0) < 4 * math.hypot(dp0, dp1)
    # strong coupling: <P> = beta/18 + O(beta^2) ~ 0.083 + ...; both clearly non-zero
    assert 0.06 < p0 < 0.14
    assert abs(e1 - 1) < 4 * de1 + 1e-3 and abs(e0 - 1) < 4 * de0 + 1e-3


# ------------------------------------------------------------------ force matching
def test_force_matching_loss_gradient_and_training_reduce_loss():
    grid = single_rank_grid((2, 2, 2, 2))
    th = SU3Gauge(grid, 2.0)
    torch.manual_seed(3)
    flow = su3_stout_flow(grid, n_layers=4, hidden=(4,), init_scale=0.1)
    train = th.hot_start(SiteRNG(1), 0, 4)
    held = th.hot_start(SiteRNG(1), 1, 4)
    # the loss gradient (double backward) against a central difference in one parameter
    tt = TransformedTheory(th, flow)
    v = flow.inverse(train[:2])[0]
    loss, f = force_matching_loss(tt, v)
    fd = f.detach()
    ref = 2.0 * (fd.real.square() + fd.imag.square()).sum() / (2 * 4 * 16)
    assert abs(float(loss.detach()) - float(ref)) < 1e-12 * float(ref)
    p = flow.layers[1].net.net[-1].bias
    (grad,) = torch.autograd.grad(loss, p)
    h = 1e-5
    with torch.no_grad():
        p[0] += h
        lp = force_matching_loss(tt, v)[0]
        p[0] -= 2 * h
        lm = force_matching_loss(tt, v)[0]
        p[0] += h
    assert abs(float((lp - lm) / (2 * h)) - float(grad[0])) < 1e-7 * abs(float(grad[0])) + 1e-10
    # a few Adam steps lower the loss on configurations it never saw
    cfg = ForceMatchingConfig(steps=5, batch=4, lr=0.05)
    trainer = ForceMatchingTrainer(flow, th, train, cfg)
    before = trainer.evaluate(held)
    hist = trainer.train()
    after = trainer.evaluate(held)
    assert len(hist) == 5 and hist[-1]["loss"] < hist[0]["loss"]
    assert after < 0.8 * before
    state = trainer.state_dict()
    assert state["step"] == 5 and state["architecture"] == flow.architecture


def test_activation_checkpointing_and_float32():
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    u = th.hot_start(SiteRNG(1), 0, 1)
    out = []
    for ck in (False, True):
        torch.manual_seed(3)
        flow = su3_stout_flow(grid, n_layers=2, hidden=(2,), kernel_size=3, checkpoint_layers=ck)
        tt = TransformedTheory(th, flow)
        loss, f = force_matching_loss(tt, u)
        loss.backward()
        out.append((f.detach(), [p.grad for p in flow.parameters()]))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1], strict=True))
    # float32 coefficient network on complex64 links
    th32 = SU3Gauge(grid, 2.0, dtype=torch.complex64)
    u32 = th32.hot_start(SiteRNG(1), 0, 2)
    flow = _strong(su3_stout_flow(grid, n_layers=8, hidden=(4,), dtype="float32"))
    with torch.no_grad():
        y, ld = flow(u32)
        x, ldi = flow.inverse(y)
    assert y.dtype == torch.complex64 and ld.dtype == torch.float32
    assert (x - u32).abs().max() < 1e-4 and (ld + ldi).abs().max() < 1e-4 * ld.abs().max()
    assert TransformedTheory(th32, flow).force(u32).dtype == torch.complex64


def test_deck_checkpoint_layers_switch(tmp_path):
    """``sampler.flow.checkpoint_layers`` turns per-layer checkpointing of a registry model on
    and off; the trivialized force is the same bit for bit either way."""
    from app.deck import loads_deck
    from app.errors import InputError
    from app.flow_samplers import load_flow
    from app.registry import save_model
    from kernels.flows.base import identity_flow

    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 2.0)
    torch.manual_seed(5)
    ref = save_model(_strong(su3_stout_flow(grid, n_layers=4, hidden=(2,))), th, "st", tmp_path)
    save_model(identity_flow(grid, first=2), th, "id", tmp_path)
    u = th.hot_start(SiteRNG(1), 0, 2)
    deck_text = (
        "theory: {name: su3, beta: 2.0, action: wilson}\nlattice: {shape: [4, 2, 2, 2]}\n"
        "run: {trajectories: 1, seed: 1}\noutput: {directory: out}\n"
        "sampler: {name: trivialized_hmc, flow: {model: %s, registry: %s%s}}\n"
    )
    forces = []
    for setting, expect in (("", False), (", checkpoint_layers: true", True)):
        deck = loads_deck(deck_text % (ref, tmp_path, setting), base_dir=tmp_path)
        flow, _ = load_flow(deck, th)
        assert flow.checkpoint_layers is expect
        forces.append(TransformedTheory(th, flow).force(u))
    assert torch.equal(forces[0], forces[1])
    deck = loads_deck(deck_text % ("id", tmp_path, ", checkpoint_layers: false"), base_dir=tmp_path)
    with pytest.raises(InputError, match="checkpoint_layers.*not a composition"):
        load_flow(deck, th)


def _reference_layer(layer: SU3StoutLayer, v: torch.Tensor):
    """The layer as first written (kept here as the reference of the fast path): staples,
    loops and coefficients on the whole lattice with shifts of products, the update scattered
    by the parity mask, ``log det J`` from the 16x16 exponential of :func:`link_jacobian`."""
    from parallel import shift

    g, mu, nc = layer.grid, layer.mu, 3

    def sh(x, d, k):
        return shift(x, g, d, k, first=1)

    def retr(a, b):
        return (a.real * b.real + a.imag * b.imag).sum((-1, -2))

    umu = v[:, mu]
    st = []
    for nu in layer.others:
        unu = v[:, nu]
        unu_mu = sh(unu, mu, 1)
        st += [unu @ sh(umu, nu, 1) @ dagger(unu_mu), sh(dagger(unu) @ umu @ unu_mu, nu, -1)]
    feats = [retr(st[k], st[m]) / nc for k in range(len(st)) for m in range(k + 1, len(st))]
    for a, b in layer.planes:
        ua, ub = v[:, a], v[:, b]
        feats.append(retr(ua @ sh(ub, a, 1), ub @ sh(ua, b, 1)) / nc)
    mask = layer.active
    rho = layer.rho_max * torch.tanh(layer.net(torch.stack(feats, 1) * mask)) / 6.0
    c = sum(rho[:, i, ..., None, None] * (st[2 * i] + st[2 * i + 1]) for i in range(3))
    omega = c @ dagger(umu)
    q = project_ta(omega)
    new = torch.linalg.matrix_exp(q) @ umu
    m = mask[None, ..., None, None].to(v.dtype)
    out = v.clone()
    out[:, mu] = m * new + (1 - m) * umu
    ld = (torch.linalg.slogdet(link_jacobian(q, omega)).logabsdet * mask).flatten(1).sum(1)
    return out, ld


def test_fast_layer_equals_reference_and_force_unchanged():
    """The active-site formulation (staples, Gram-matrix loops, real-GEMM ``ad_Q`` and
    ``L``) reproduces the whole-lattice reference layer: field and log-det to 1e-13, and the
    trivialized force (pullback) to 1e-12 of the reference's autograd force."""
    grid = single_rank_grid((4, 4, 2, 2))
    th = SU3Gauge(grid, 2.0)
    flow = _mixed_flow(grid, spec=[(0, 0, 1), (1, 1, 3), (2, 1, 1), (3, 0, 1)])
    flow.requires_grad_(False)
    v = th.hot_start(SiteRNG(21), 0, 2)
    x = v
    for layer in flow.layers:
        y, ld = layer.forward_local(x)
        ld = ld.sum(-1)  # per-link terms -> per chain (one rank)
        yr, ldr = _reference_layer(layer, x)
        assert (y - yr).abs().max() < 1e-13
        assert (ld - ldr).abs().max() < 1e-13 * ldr.abs().max()
        assert ldr.abs().min() > 1.0  # a real, field-dependent log-det
        x = y

    def ref_action(w):
        ld_sum = 0.0
        for layer in flow.layers:
            w, ld = _reference_layer(layer, w)
            ld_sum = ld_sum + ld
        return th.action(w) - ld_sum

    ref_s = ref_action(v)
    assert (TransformedTheory(th, flow).action(v) - ref_s).abs().max() < 1e-12 * ref_s.abs().max()
    f = TransformedTheory(th, flow).force(v)
    f_ref = lie_autograd_force(ref_action, v)
    assert (f - f_ref).abs().max() < 1e-12 * f_ref.abs().max()


def test_su3_exp_gradient_equals_matrix_exp_gradient_also_degenerate():
    """The spectral backward of :func:`su3_exp` equals autograd through
    ``torch.linalg.matrix_exp`` (1e-13), for random generators and for degenerate spectra
    (``Q = 0``; ``Q`` with two equal eigenvalues), and its double backward equals the
    reference's too."""
    from kernels.flows.su3 import su3_exp

    torch.manual_seed(4)
    q = project_ta(torch.randn(64, 3, 3, dtype=torch.complex128))
    q[0] = 0.0
    q[1] = torch.diag(torch.tensor([1j, 1j, -2j], dtype=torch.complex128)) * 0.3
    q[2] = 1e-9 * q[3]
    g = torch.randn(64, 3, 3, dtype=torch.complex128)
    grads = []
    for fn in (su3_exp, torch.linalg.matrix_exp):
        x = q.clone().requires_grad_(True)
        y = fn(x)
        (dx,) = torch.autograd.grad(y, x, g, create_graph=True)
        (ddx,) = torch.autograd.grad((dx * dx.conj()).real.sum(), x)
        grads.append((y.detach(), dx.detach(), ddx))
        (dx1,) = torch.autograd.grad(fn(x), x, g)  # first order: the spectral backward
        grads[-1] += (dx1,)
    (y, dx, ddx, dx1), (yr, dxr, ddxr, dxr1) = grads
    assert (y - yr).abs().max() < 1e-13
    assert (dx - dxr).abs().max() < 1e-13
    assert (ddx - ddxr).abs().max() < 1e-12 * ddxr.abs().max()
    assert (dx1 - dxr1).abs().max() < 1e-13 * dxr1.abs().max()
