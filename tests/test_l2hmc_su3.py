"""SU(3) L2HMC (kernels/l2hmc/su3.py): involution, exact log-Jacobian, gauge covariance,
leapfrog limit, exactness of the chain against plain HMC.

* involution: forward with ``d`` then the map with ``-d`` returns ``(U, P)`` to 1e-12 (mixed
  directions in one batch), ``log|J|`` and ``dH`` change sign;
* the accumulated ``log|J|`` equals the brute-force ``slogdet`` of the 1024 x 1024 Jacobian of
  the whole ``(U, P) -> (U', P')`` map on a 2^4 lattice, in algebra coordinates
  (``U = exp(w) U_0``, ``U' = exp(w') U'_0``, ``P = sum p_a T_a``);
* with all networks zero the map is plain leapfrog (kernels/integrators.py);
* the map is gauge covariant: ``F(g.U, g P g^+) = (g.U', g P' g^+)`` with the same ``log|J|``;
* exactness with an untrained (random) model: plaquette and Polyakov loop against plain HMC
  (independent chains; each chain's time average is one sample).
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.groups.su_n import algebra_to_components, components_to_algebra, dagger, su_expm
from kernels.integrators import make_integrator
from kernels.l2hmc import L2HMC, build_l2hmc_model
from kernels.l2hmc.sampler import propose
from kernels.l2hmc.su3 import SU3L2HMCModel
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge, gauge_transform
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SEED = 97


def setup(shape=(2, 2, 2, 2), beta=5.0, batch=3, seed=4, **kw):
    grid = single_rank_grid(shape)
    theory = SU3Gauge(grid, beta=beta)
    torch.manual_seed(seed)
    kw.setdefault("n_layers", 2)
    kw.setdefault("hidden", (4,))
    model = SU3L2HMCModel(grid, **kw)
    rng = SiteRNG(SEED)
    return theory, model, theory.hot_start(rng, 0, batch), theory.random_momentum(rng, 1, batch)


def test_involution():
    theory, model, u, p = setup()
    with torch.no_grad():
        for d in (torch.tensor([1.0, -1.0, 1.0]), torch.tensor([-1.0, -1.0, -1.0])):
            a = propose(model, theory, u, p, d)
            assert (a["x1"] - u).abs().max() > 0.1 and (a["v1"] - p).abs().max() > 0.1
            assert a["log_jacobian"].abs().min() > 1.0  # not volume preserving
            b = propose(model, theory, a["x1"], a["v1"], -d)
            assert (b["x1"] - u).abs().max() < 1e-12
            assert (b["v1"] - p).abs().max() < 1e-12
            assert (a["log_jacobian"] + b["log_jacobian"]).abs().max() < 1e-12
            assert (a["dH"] + b["dH"]).abs().max() < 1e-11
            # links stay in SU(3)
            eye = torch.eye(3, dtype=u.dtype)
            assert (a["x1"] @ dagger(a["x1"]) - eye).abs().max() < 1e-13


@pytest.mark.parametrize("direction", [1, -1])
def test_log_jacobian_matches_slogdet_2x2x2x2(direction):
    """Copy ``b`` of a batch of 1024 carries its own perturbation ``z_b`` of all inputs (the
    copies are independent chains), so one reverse pass of ``sum_b out_b[b]`` gives row ``b``
    of the Jacobian, ``d out[b] / d z``, in row ``b`` of ``z.grad``."""
    theory, model, u, p = setup(batch=1, n_layers=1)
    fmap = model.forward_map if direction > 0 else model.inverse_map
    with torch.no_grad():
        u1, p1, logj, _ = fmap(u, p, theory.force)
    n_half = 4 * 16 * 8
    n = 2 * n_half
    z = torch.zeros(n, n, dtype=torch.float64, requires_grad=True)
    shape = (n, 4, 2, 2, 2, 2, 8)
    w = z[:, :n_half].reshape(shape)
    dp = z[:, n_half:].reshape(shape)
    uu = su_expm(components_to_algebra(w, 3)) @ u
    pp = p + components_to_algebra(dp, 3)
    out_u, out_p, _, _ = fmap(uu, pp, theory.force)
    # at w = 0 the output link is u1, and d log(M) = dM at M = 1
    out = torch.cat(
        [
            algebra_to_components(out_u @ dagger(u1)).reshape(n, n_half),
            algebra_to_components(out_p).reshape(n, n_half),
        ],
        dim=1,
    )
    out.diagonal().sum().backward()
    jac = z.grad
    sign, brute = torch.linalg.slogdet(jac)
    lj = float(logj.sum())
    assert float(sign) != 0.0
    assert abs(float(brute) - lj) < 1e-10 * max(1.0, abs(lj)), (float(brute), lj)
    assert abs(lj) > 0.5  # not volume preserving


def test_zero_networks_are_leapfrog():
    n_layers, eps = 3, 0.1
    theory, model, u, p = setup(n_layers=n_layers, step_size=eps, init_scale=0.0)
    with torch.no_grad():
        u1, p1, logj, n_force = model.forward_map(u, p, theory.force)
    res = make_integrator(theory, "leapfrog", n_layers, n_layers * eps).integrate(u, p, None, None)
    assert (u1 - res.field).abs().max() < 1e-12
    assert (p1 - res.momentum).abs().max() < 1e-12
    assert logj.abs().max() == 0.0 and n_force == n_layers + 1


def test_gauge_covariance():
    theory, model, u, p = setup(batch=2)
    grid = theory.grid
    g = theory.hot_start(SiteRNG(5), 3, 2)[:, 0]  # random SU(3) per site
    gp = torch.stack([g @ p[:, mu] @ dagger(g) for mu in range(4)], dim=1)
    d = torch.tensor([1.0, -1.0])
    with torch.no_grad():
        a = propose(model, theory, u, p, d)
        b = propose(model, theory, gauge_transform(u, g, grid), gp, d)
    assert (b["x1"] - gauge_transform(a["x1"], g, grid)).abs().max() < 1e-12
    gp1 = torch.stack([g @ a["v1"][:, mu] @ dagger(g) for mu in range(4)], dim=1)
    assert (b["v1"] - gp1).abs().max() < 1e-12
    assert (a["log_jacobian"] - b["log_jacobian"]).abs().max() < 1e-11
    assert (a["dH"] - b["dH"]).abs().max() < 1e-10


def test_sampler_record_and_builder():
    theory, model, u, _ = setup(batch=2)
    sampler = L2HMC(theory, model, SiteRNG(SEED))
    u1, rec = sampler.trajectory(u, 3)
    assert rec.n_force == 3 and rec.log_jacobian is not None
    assert "dQ_int" not in rec.extra and rec.extra["action"].shape == (2,)
    for b in range(2):
        if not rec.accepted[b]:
            assert torch.equal(u1[b], u[b])
    again = build_l2hmc_model(theory.grid, **model.architecture["kwargs"])
    assert isinstance(again, SU3L2HMCModel)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        d = torch.tensor([1.0, -1.0])
        p = theory.random_momentum(SiteRNG(1), 0, 2)
        x = propose(model, theory, u, p, d)["x1"]
        y = propose(again, theory, u, p, d)["x1"]
    assert torch.equal(x, y)


def chain_means(sampler, theory, u, n_therm, n_meas, keys):
    sums = {k: torch.zeros(u.shape[0], dtype=torch.float64) for k in keys}
    acc = 0.0
    for counter in range(1, n_therm + n_meas + 1):
        u, rec = sampler.trajectory(u, counter)
        acc += rec.acceptance
        if counter > n_therm:
            obs = theory.observables(u)
            for k in keys:
                sums[k] += obs[k]
    return {k: s / n_meas for k, s in sums.items()}, acc / (n_therm + n_meas)


def mean_err(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


def su3_vs_hmc(
    shape, beta, batch, n_therm, n_meas, init_scale, kernel_size=3, step_size=0.2, pre_therm=0
):
    grid = single_rank_grid(shape)
    theory = SU3Gauge(grid, beta=beta)
    torch.manual_seed(8)
    model = SU3L2HMCModel(
        grid,
        n_layers=3,
        hidden=(4,),
        kernel_size=kernel_size,
        step_size=step_size,
        init_scale=init_scale,
    )
    keys = ["plaquette", "polyakov_re"]
    u0 = theory.hot_start(SiteRNG(SEED), 0, batch)
    if pre_therm:  # a common start near equilibrium (Omelyan HMC, tau = 1)
        pre = HMC(theory, make_integrator(theory, "omelyan", 6, 1.0), SiteRNG(SEED + 2))
        for c in range(1, pre_therm + 1):
            u0, _ = pre.trajectory(u0, 10_000 + c)
    l2, acc = chain_means(L2HMC(theory, model, SiteRNG(SEED)), theory, u0, n_therm, n_meas, keys)
    assert acc > 0.25, acc
    hmc = HMC(theory, make_integrator(theory, "leapfrog", 5, 1.0), SiteRNG(SEED + 1))
    ref, _ = chain_means(hmc, theory, u0, n_therm, n_meas, keys)
    for key in keys:
        (m1, e1), (m2, e2) = mean_err(l2[key]), mean_err(ref[key])
        assert abs(m1 - m2) < 4.0 * math.hypot(e1, e2), f"{key}: {m1}+-{e1} vs HMC {m2}+-{e2}"


def test_plaquette_matches_hmc_short():
    su3_vs_hmc((2, 2, 2, 2), beta=3.0, batch=24, n_therm=10, n_meas=20, init_scale=0.5)


@pytest.mark.slow
def test_plaquette_matches_hmc_long():
    # kernel size 1 (pointwise networks): the 4D 3^4 convolutions would triple the cost
    # random networks act on 1024 links: smaller steps and outputs than on 2^4 keep the
    # acceptance up (0.02 with eps 0.2, init 0.3); both samplers start from HMC-thermalised links
    su3_vs_hmc(
        (4, 4, 4, 4),
        beta=5.5,
        batch=8,
        n_therm=20,
        n_meas=80,
        init_scale=0.1,
        kernel_size=1,
        step_size=0.12,
        pre_therm=40,
    )
