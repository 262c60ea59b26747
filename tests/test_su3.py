"""SU(N) group tools and the SU(3) gauge theory on one rank, checked against exact results.

Group tools: exact exponential vs ``torch.linalg.matrix_exp``, unitarity/determinant,
projection identities, Haar moments (exact group integrals). Theory: force = numerical
derivative of the action for every action option, gauge invariance, unit links, a constant
abelian field whose plaquettes/rectangles/action are known in closed form, a brute-force
Polyakov loop, and a real configuration written by another code (SIMULATeQCD) with its
published plaquette and link trace.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels.groups import (
    algebra_norm2,
    algebra_to_components,
    components_to_algebra,
    dagger,
    expm_su3,
    haar_su_n,
    project_ta,
    reunitarize,
    su_expm,
    su_generators,
    trace,
)
from kernels.theories import make_theory
from kernels.theories.su3 import ACTIONS, SU3Gauge, gauge_transform
from parallel import single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG, gell_mann

CONFIGS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "configs"


def _algebra(shape: tuple[int, ...], n: int = 3, scale: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    c = scale * torch.randn(*shape, n * n - 1, generator=gen)
    return components_to_algebra(c, n)


def _unitarity(u: torch.Tensor) -> float:
    eye = torch.eye(u.shape[-1], dtype=u.dtype)
    return float((u @ dagger(u) - eye).abs().max())


def _det_err(u: torch.Tensor) -> float:
    return float((torch.linalg.det(u) - 1).abs().max())


# --------------------------------------------------------------------------- generators
@pytest.mark.parametrize("n", [2, 3, 4])
def test_generators_normalisation_and_rng_basis(n):
    t = su_generators(n)
    assert t.shape == (n * n - 1, n, n)
    gram = torch.einsum("aij,bji->ab", t, t)
    assert torch.allclose(gram, -0.5 * torch.eye(n * n - 1, dtype=t.dtype), atol=1e-15)
    assert torch.allclose(t + dagger(t), torch.zeros_like(t))
    assert float(trace(t).abs().max()) < 1e-15
    assert np.allclose(t.numpy(), 0.5j * gell_mann(n))
    if n == 3:  # the standard Gell-Mann lambda_2 and lambda_8
        assert t[1, 0, 1] == 0.5 and t[1, 1, 0] == -0.5
        assert torch.allclose(t[7].diagonal().imag, torch.tensor([1, 1, -2]) / (2 * 3**0.5))


def test_components_roundtrip_and_kinetic_normalisation():
    c = torch.randn(5, 7, 8)
    p = components_to_algebra(c, 3)
    assert torch.allclose(algebra_to_components(p), c, atol=1e-14)
    # K = -Re Tr P^2 = (1/2) sum_a p_a^2
    k = -trace(p @ p).real
    assert torch.allclose(k, 0.5 * (c * c).sum(-1), atol=1e-13)
    assert torch.allclose(algebra_norm2(p), k, atol=1e-13)


def test_rng_momenta_components_are_standard_normal():
    grid = single_rank_grid((4, 4, 4, 4))
    p = SiteRNG(11).su_algebra(grid, PURPOSE_USER, 0, 2, 3, lead=(4,))
    c = algebra_to_components(p).reshape(-1, 8)
    n = c.shape[0]
    assert abs(float(c.mean())) < 5 / math.sqrt(8 * n)
    assert torch.allclose(c.var(0), torch.ones(8), atol=5 * math.sqrt(2 / n))
    assert float(trace(p).abs().max()) < 1e-15
    assert float((p + dagger(p)).abs().max()) < 1e-15


# --------------------------------------------------------------------------- exponential
@pytest.mark.parametrize("scale", [3.0, 1.0, 1e-2, 1e-5, 1e-7, 1e-9])
def test_expm_su3_matches_matrix_exp(scale):
    x = _algebra((400,), scale=scale, seed=1)
    e = expm_su3(x)
    ref = torch.linalg.matrix_exp(x)
    assert float((e - ref).abs().max()) < 1e-13
    assert _unitarity(e) < 1e-13
    assert _det_err(e) < 1e-13


def test_expm_su3_degenerate_and_special_cases():
    # degenerate eigenvalues (theta = 0 and pi/2 edges), c0 < 0, zero, tiny perturbations
    d = torch.tensor([1.0, 1.0, -2.0], dtype=torch.complex128)
    cases = [torch.zeros(3, 3, dtype=torch.complex128)]
    for a in (0.3, 1.7, 4.0):
        for sgn in (1, -1):
            base = torch.diag_embed(sgn * 1j * a * d)
            cases.append(base)
            cases.append(base + _algebra((), scale=1e-9, seed=int(10 * a)))
            cases.append(base + _algebra((), scale=1e-4, seed=int(10 * a)))
    cases.append(torch.diag_embed(1j * torch.tensor([0.8, -0.8, 0.0], dtype=torch.complex128)))
    x = torch.stack(cases)
    assert float((expm_su3(x) - torch.linalg.matrix_exp(x)).abs().max()) < 1e-13
    # exp(X) exp(-X) = 1 and exp of a generator rotation
    y = _algebra((50,), scale=2.0, seed=5)
    assert float((expm_su3(y) @ expm_su3(-y) - torch.eye(3)).abs().max()) < 1e-13


def test_su_expm_dispatch_and_autograd():
    x = _algebra((6,), scale=0.7, seed=2)
    assert torch.allclose(su_expm(x), torch.linalg.matrix_exp(x), atol=1e-14)
    x4 = _algebra((6,), n=4, scale=0.7, seed=2)
    assert torch.allclose(su_expm(x4), torch.linalg.matrix_exp(x4), atol=1e-14)
    c = torch.randn(6, 8, requires_grad=True)
    loss = trace(su_expm(components_to_algebra(c, 3))).real.sum()
    (g,) = torch.autograd.grad(loss, c)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- projections
def test_project_ta_properties():
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(20, 3, 3, dtype=torch.complex128, generator=gen)
    a = project_ta(m)
    assert float(trace(a).abs().max()) < 1e-15
    assert float((a + dagger(a)).abs().max()) < 1e-15
    assert torch.allclose(project_ta(a), a, atol=1e-15)
    x = _algebra((20,))
    assert torch.allclose(project_ta(x), x, atol=1e-15)
    # sum_a T_a Re Tr(T_a M) = -TA(M)/2  (the identity the force formula uses)
    t = su_generators(3)
    lhs = torch.einsum("aij,an->nij", t, torch.einsum("akl,nlk->an", t, m).real.to(t.dtype))
    assert torch.allclose(lhs, -0.5 * a, atol=1e-15)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_reunitarize(n):
    u = haar_su_n(torch.randn(30, n, n, 2), dtype=torch.complex128)
    assert torch.allclose(reunitarize(u), u, atol=1e-14)  # fixed point on SU(N)
    gen = torch.Generator().manual_seed(4)
    noise = 1e-6 * torch.randn(30, n, n, dtype=torch.complex128, generator=gen)
    r = reunitarize(u + noise)
    assert _unitarity(r) < 1e-14 and _det_err(r) < 1e-14
    assert float((r - u).abs().max()) < 1e-5  # stays next to the matrix it repairs
    far = reunitarize(torch.randn(30, n, n, dtype=torch.complex128, generator=gen))
    assert _unitarity(far) < 1e-13 and _det_err(far) < 1e-13


@pytest.mark.parametrize("n", [2, 3])
def test_haar_moments(n):
    """Exact SU(N) integrals: <Tr U> = 0, <|Tr U|^2> = 1, <(Tr U)^N> = 1 (one singlet in
    the N-fold tensor product, absent for U(N)), and unitarity/det = 1 of every sample."""
    m = 40000
    gen = torch.Generator().manual_seed(6)
    u = haar_su_n(torch.randn(m, n, n, 2, generator=gen))
    assert _unitarity(u) < 1e-13 and _det_err(u) < 1e-13
    tr = trace(u)
    assert abs(complex(tr.mean())) < 5 / math.sqrt(m)
    assert abs(float((tr.abs() ** 2).mean()) - 1.0) < 5 / math.sqrt(m)
    # Var(Tr U^N) is O(few) for these N; 6 sigma bound
    assert abs(complex((tr**n).mean()) - 1.0) < 6 * math.sqrt(6.0 / m)


# --------------------------------------------------------------------------- theory: force
def _hot(grid, batch=2, seed=5, action="wilson", beta=5.7):
    th = SU3Gauge(grid, beta, action=action)
    return th, th.hot_start(SiteRNG(seed), 0, batch)


def _directional_derivative(th, u, x, h=1e-3):
    """Richardson-extrapolated central difference of S(exp(t X) U) at t = 0 (error h^4)."""

    def d(hh):
        return (th.action(su_expm(hh * x) @ u) - th.action(su_expm(-hh * x) @ u)) / (2 * hh)

    return (4 * d(h / 2) - d(h)) / 3


@pytest.mark.parametrize("shape", [(2, 2, 2, 2), (4, 2, 2, 2), (2, 2, 4, 2)])
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_force_is_the_lie_derivative_of_the_action(shape, action):
    grid = single_rank_grid(shape)
    th, u = _hot(grid, action=action)
    f = th.force(u)
    assert f.shape == u.shape
    assert float(trace(f).abs().max()) < 1e-13
    assert float((f + dagger(f)).abs().max()) < 1e-13
    rng = SiteRNG(9)
    for k in range(3):
        x = th.random_momentum(rng, k, 2)
        num = _directional_derivative(th, u, x)
        # d/dt S(exp(tX)U) = sum_a x_a F_a = -2 sum Re Tr(X F)
        ana = -2 * torch.einsum("b...ij,b...ji->b", x, f).real
        assert torch.allclose(num, ana, rtol=1e-8, atol=1e-8)


def test_force_single_link_components():
    """Every algebra component of the force at one link against the numerical derivative."""
    grid = single_rank_grid((2, 2, 2, 2))
    th, u = _hot(grid, batch=1, action="symanzik")
    f = th.force(u)
    comp = algebra_to_components(f[0, 1, 1, 0, 1, 0])
    t = su_generators(3)
    num = []
    for a in range(8):
        x = torch.zeros_like(u)
        x[0, 1, 1, 0, 1, 0] = t[a]
        num.append(float(_directional_derivative(th, u, x)[0]))
    assert np.allclose(comp.numpy(), num, rtol=1e-8, atol=1e-9)


def test_action_autograd_matches_force():
    """Autograd of S along a one-parameter family exp(t X) U equals the analytic force."""
    grid = single_rank_grid((2, 2, 2, 2))
    th, u = _hot(grid, batch=1, action="iwasaki")
    x = th.random_momentum(SiteRNG(2), 0, 1)
    tt = torch.zeros((), requires_grad=True)
    s = th.action(torch.linalg.matrix_exp(tt * x) @ u).sum()
    (g,) = torch.autograd.grad(s, tt)
    ana = -2 * torch.einsum("...ij,...ji->", x, th.force(u)).real
    assert torch.allclose(g, ana, rtol=1e-11)


def test_md_energy_conservation_small_step():
    """A leapfrog trajectory with the force and exp update conserves H to O(eps^2)."""
    grid = single_rank_grid((2, 2, 2, 2))
    th, u = _hot(grid, batch=1, beta=5.0, action="symanzik")
    p0 = th.random_momentum(SiteRNG(3), 0, 1)
    dh = []
    for n in (20, 40):
        eps = 0.5 / n
        uu, p = u, p0 - 0.5 * eps * th.force(u)
        for i in range(n):
            uu = th.evolve_field(uu, p, eps)
            p = p - (eps if i < n - 1 else 0.5 * eps) * th.force(uu)
        h0 = th.kinetic(p0) + th.action(u)
        dh.append(float((th.kinetic(p) + th.action(uu) - h0)[0]))
    assert abs(dh[1]) < 0.1
    assert 3.5 < dh[0] / dh[1] < 4.5  # eps^2 scaling


# --------------------------------------------------------------------------- invariance
def _random_gauge(grid, batch, seed=21):
    normals = SiteRNG(seed).normal(grid, PURPOSE_USER, 0, batch, trail=(3, 3, 2))
    return haar_su_n(normals)


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_gauge_invariance(action):
    grid = single_rank_grid((4, 2, 2, 4))
    th, u = _hot(grid, action=action)
    g = _random_gauge(grid, 2)
    ug = gauge_transform(u, g, grid)
    assert float((ug - u).abs().max()) > 0.1
    assert torch.allclose(th.action(ug), th.action(u), rtol=1e-13)
    o, og = th.observables(u), th.observables(ug)
    for k in o:
        if k == "link_trace":
            assert not torch.allclose(o[k], og[k], atol=1e-3)  # gauge variant, as it must be
            continue
        assert torch.allclose(og[k], o[k], atol=1e-13), k
    # the force transforms covariantly: F_mu(x) -> g(x) F_mu(x) g(x)^+
    fg = th.force(ug)
    f = th.force(u)
    rot = g[:, None] @ f @ dagger(g[:, None])
    assert torch.allclose(fg, rot, atol=1e-12)


# --------------------------------------------------------------------------- exact values
def test_unit_links():
    grid = single_rank_grid((2, 4, 2, 2))
    for action in ACTIONS:
        th = SU3Gauge(grid, 6.0, action=action)
        u = th.cold_start(3)
        assert torch.equal(th.action(u), torch.zeros(3))
        assert float(th.force(u).abs().max()) == 0.0
        for k, v in th.observables(u).items():
            expect = 0.0 if k == "polyakov_im" else 1.0
            assert torch.allclose(v, torch.full((3,), expect), atol=1e-15), k


def flux_field(shape, fluxes, batch=1):
    """Constant abelian field: plane ``(a, b)`` carries ``n`` flux quanta with colour charges
    ``q`` (sum 0), i.e. plaquette phase ``q_c theta``, ``theta = 2 pi n / (L_a L_b)`` at every
    site; ``fluxes = {(a, b): (n, q)}``. Returns the global field ``(batch, Nd, *shape, 3, 3)``
    and the plaquette phase per plane and colour."""
    nd = len(shape)
    x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    phase = np.zeros((nd, *shape, 3))
    plane_phase = {}
    for (a, b), (n, q) in fluxes.items():
        theta = 2 * math.pi * n / (shape[a] * shape[b])
        q = np.asarray(q, dtype=float)
        # A_b = theta x_a; A_a = -theta L_a x_b on the last slice x_a = L_a - 1
        phase[b] += theta * x[a][..., None] * q
        phase[a] += (-theta * shape[a] * x[b] * (x[a] == shape[a] - 1))[..., None] * q
        plane_phase[(a, b)] = theta * q
    u = np.zeros((nd, *shape, 3, 3), dtype=complex)
    for c in range(3):
        u[..., c, c] = np.exp(1j * phase[..., c])
    u = torch.from_numpy(np.broadcast_to(u, (batch, *u.shape)).copy())
    return u, plane_phase


def test_constant_abelian_field_has_the_analytic_loops():
    shape = (4, 6, 4, 2)
    fluxes = {(0, 1): (1, (1, -1, 0)), (2, 3): (3, (2, -1, -1))}
    u, ph = flux_field(shape, fluxes)
    grid = single_rank_grid(shape)
    planes = [(m, n) for m in range(4) for n in range(m + 1, 4)]
    cos = {p: float(np.cos(ph.get(p, np.zeros(3))).mean()) for p in planes}
    cos2 = {p: float(np.cos(2 * ph.get(p, np.zeros(3))).mean()) for p in planes}
    th = SU3Gauge(grid, 5.0)
    o = th.observables(u)
    assert math.isclose(float(o["plaquette"]), np.mean(list(cos.values())), abs_tol=1e-14)
    spatial = [cos[p] for p in planes if p[1] != 3]
    temporal = [cos[p] for p in planes if p[1] == 3]
    assert math.isclose(float(o["plaquette_spatial"]), np.mean(spatial), abs_tol=1e-14)
    assert math.isclose(float(o["plaquette_temporal"]), np.mean(temporal), abs_tol=1e-14)
    # rectangles enclose two plaquettes: phase 2 q theta, two orientations per plane
    assert math.isclose(float(o["rectangle"]), np.mean(list(cos2.values())), abs_tol=1e-14)
    vol = int(np.prod(shape))
    for action, c1 in ACTIONS.items():
        th = SU3Gauge(grid, 5.0, action=action)
        expect = (
            5.0 * vol * sum((1 - 8 * c1) * (1 - cos[p]) + c1 * 2 * (1 - cos2[p]) for p in planes)
        )
        assert math.isclose(float(th.action(u)[0]), expect, rel_tol=1e-13)
        # a constant field strength solves the lattice field equations: F = 0
        assert float(th.force(u).abs().max()) < 1e-13


def test_polyakov_loop_exact_and_brute_force():
    shape = (2, 2, 4, 6)
    grid = single_rank_grid(shape)
    th = SU3Gauge(grid, 6.0)
    # constant diagonal temporal links: P = (1/3) sum_c exp(i L_t alpha_c)
    alpha = np.array([0.3, -1.1, 0.8])
    u = th.cold_start(1)
    u[0, 3] = torch.diag_embed(torch.from_numpy(np.exp(1j * alpha)))
    g = _random_gauge(grid, 1, seed=4)
    u = gauge_transform(u, g, grid)  # non-diagonal links, same loop
    expect = np.exp(1j * 6 * alpha).mean()
    o = th.observables(u)
    assert math.isclose(float(o["polyakov_re"]), expect.real, abs_tol=1e-14)
    assert math.isclose(float(o["polyakov_im"]), expect.imag, abs_tol=1e-14)
    assert math.isclose(float(o["polyakov_abs"]), abs(expect), abs_tol=1e-14)
    # hot field: brute-force ordered product in numpy
    _, v = _hot(grid, batch=2)
    vt = v[:, 3].numpy()
    for b in range(2):
        acc = 0
        for xs in np.ndindex(*shape[:3]):
            m = np.eye(3)
            for t in range(shape[3]):
                m = m @ vt[(b, *xs, t)]
            acc += np.trace(m) / 3
        acc /= np.prod(shape[:3])
        o = th.observables(v)
        assert abs(complex(o["polyakov_re"][b], o["polyakov_im"][b]) - acc) < 1e-14


def _read_nersc(path: Path) -> tuple[dict[str, str], torch.Tensor]:
    """Minimal NERSC ``4D_SU3_GAUGE_3x3`` reader (x fastest, then y, z, t; mu = x,y,z,t;
    3x3 row-major complex, big-endian doubles) into our ``(1, 4, Lx, Ly, Lz, Lt, 3, 3)``."""
    raw = path.read_bytes()
    end = raw.index(b"END_HEADER\n") + len(b"END_HEADER\n")
    header = {}
    for line in raw[:end].decode().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            header[k.strip()] = v.strip()
    dims = [int(header[f"DIMENSION_{i}"]) for i in (1, 2, 3, 4)]
    assert header["DATATYPE"] == "4D_SU3_GAUGE_3x3" and header["FLOATING_POINT"] == "IEEE64BIG"
    data = np.frombuffer(raw[end:], dtype=">f8").astype(np.float64)
    lx, ly, lz, lt = dims
    data = data.reshape(lt, lz, ly, lx, 4, 3, 3, 2)
    u = data[..., 0] + 1j * data[..., 1]
    u = np.transpose(u, (4, 3, 2, 1, 0, 5, 6))  # (mu, x, y, z, t, 3, 3)
    return header, torch.from_numpy(np.ascontiguousarray(u))[None]


def test_real_configuration_from_simulateqcd():
    """ildg/nersc.l8t4b3360 (SIMULATeQCD, 8^3 x 4): plaquette 0.503866446949594 (spatial
    0.502524597593524, temporal 0.505208296305664), link trace 0.005406083857887
    (values from ../shared/data/configs/README.md, written by that code)."""
    path = CONFIGS / "nersc.l8t4b3360"
    if not path.exists():
        pytest.skip(f"{path} not available")
    _, u = _read_nersc(path)
    grid = single_rank_grid(u.shape[2:6])
    th = make_theory("su3", grid, beta=3.36)
    assert _unitarity(u) < 1e-12
    o = th.observables(u)
    assert math.isclose(float(o["plaquette"]), 0.503866446949594, abs_tol=2e-15)
    assert math.isclose(float(o["plaquette_spatial"]), 0.502524597593524, abs_tol=2e-15)
    assert math.isclose(float(o["plaquette_temporal"]), 0.505208296305664, abs_tol=2e-15)
    assert math.isclose(float(o["link_trace"]), 0.005406083857887, abs_tol=2e-15)
    # the Wilson action in terms of the plaquette: S = beta * 6 V (1 - <P>)
    assert math.isclose(
        float(th.action(u)[0]), 3.36 * 6 * grid.volume * (1 - float(o["plaquette"])), rel_tol=1e-13
    )


# --------------------------------------------------------------------------- theory misc
def test_theory_layout_starts_and_kinetic():
    grid = single_rank_grid((2, 2, 2, 4))
    th = make_theory("su3", grid, beta=6.0, action="iwasaki")
    assert th.params == {"beta": 6.0, "c0": 1 + 8 * 0.331, "c1": -0.331}
    u = th.hot_start(SiteRNG(1), 0, 3)
    assert u.shape == th.field_shape(3) == (3, 4, 2, 2, 2, 4, 3, 3)
    assert _unitarity(u) < 1e-13 and _det_err(u) < 1e-13
    assert torch.equal(u, th.hot_start(SiteRNG(1), 0, 3))
    assert not torch.allclose(u[0], u[1])
    p = th.random_momentum(SiteRNG(1), 0, 3)
    k = th.kinetic(p)
    c = algebra_to_components(p)
    assert torch.allclose(k, 0.5 * (c * c).sum(tuple(range(1, c.ndim))), rtol=1e-13)
    v = th.evolve_field(u, p, 0.1)
    assert _unitarity(v) < 1e-13
    assert torch.allclose(th.evolve_field(v, p, -0.1), u, atol=1e-13)
    noisy = u + 1e-7 * torch.randn_like(u)
    assert _unitarity(th.project(noisy)) < 1e-14
    with pytest.raises(ValueError, match="unknown SU.3. action"):
        SU3Gauge(grid, 6.0, action="dbw3")
