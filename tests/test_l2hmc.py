"""L2HMC sampler (kernels/l2hmc): involution, exact log-Jacobian, exactness of the chain.

* involution: the forward map with ``d`` followed by the map with ``-d`` returns ``(x, v)`` to
  1e-12 (U(1) 4x4 with unwrapped angles, phi^4 4x4, mixed directions in one batch);
* the accumulated log-Jacobian equals the brute-force ``slogdet`` of the autograd Jacobian of
  the whole ``(x, v) -> (x', v')`` map (both directions);
* with all networks zero the map is plain leapfrog (compared with kernels/integrators.py);
* exactness with an untrained (random) model: 2D U(1) plaquette and ``<Q_int^2>`` against the
  character expansion (kernels/theories/u1_exact.py), phi^4 against plain HMC; the errors are
  the spread of independent chains (each chain's time average is one sample).
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.integrators import make_integrator
from kernels.l2hmc import L2HMC, L2HMCModel
from kernels.l2hmc.sampler import propose
from kernels.samplers.hmc import HMC
from kernels.samplers.protocol import Sampler
from kernels.theories import u1_exact
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SEED = 2468


def theory_for(name: str, shape=(4, 4), beta: float | None = None):
    grid = single_rank_grid(shape)
    if name == "u1":
        return U1Gauge(grid, beta=2.0 if beta is None else beta)
    return Phi4(grid, beta=0.3 if beta is None else beta, lam=0.5)


def random_model(theory, seed=11, **kw):
    torch.manual_seed(seed)
    kw.setdefault("n_layers", 2)
    kw.setdefault("hidden", (4,))
    return L2HMCModel(theory.grid, theory.name, **kw)


def start(theory, batch=3, counter=0):
    rng = SiteRNG(SEED)
    x = theory.hot_start(rng, counter, batch)
    if theory.name == "u1":
        x = x + 2.0 * math.pi * torch.tensor([0.0, 1.0, -3.0])[:batch].view(-1, 1, 1, 1)
    return x, theory.random_momentum(rng, counter + 1, batch)


@pytest.mark.parametrize("name", ["u1", "phi4"])
def test_involution(name):
    theory = theory_for(name)
    model = random_model(theory)
    x, v = start(theory)
    with torch.no_grad():
        for d in (torch.tensor([1.0, -1.0, 1.0]), torch.tensor([-1.0, -1.0, 1.0])):
            p1 = propose(model, theory, x, v, d)
            # the proposal moved: the test is not vacuous
            assert (p1["x1"] - x).abs().max() > 1e-2 and (p1["v1"] - v).abs().max() > 1e-2
            p2 = propose(model, theory, p1["x1"], p1["v1"], -d)
            assert (p2["x1"] - x).abs().max() < 1e-12
            assert (p2["v1"] - v).abs().max() < 1e-12
            # log|J| of the way back is minus the way there, dH too
            assert (p1["log_jacobian"] + p2["log_jacobian"]).abs().max() < 1e-12
            assert (p1["dH"] + p2["dH"]).abs().max() < 1e-11


@pytest.mark.parametrize("name", ["u1", "phi4"])
@pytest.mark.parametrize("direction", [1, -1])
def test_log_jacobian_matches_slogdet(name, direction):
    theory = theory_for(name)
    model = random_model(theory, seed=5, n_layers=2)
    x, v = start(theory, batch=1)
    n = x.numel()
    fmap = model.forward_map if direction > 0 else model.inverse_map

    def flat_map(z):
        x1, v1, _, _ = fmap(z[:n].view_as(x), z[n:].view_as(v), theory.force)
        return torch.cat([x1.reshape(-1), v1.reshape(-1)])

    z = torch.cat([x.reshape(-1), v.reshape(-1)])
    jac = torch.autograd.functional.jacobian(flat_map, z)
    sign, logabs = torch.linalg.slogdet(jac)
    _, _, logj, _ = fmap(x, v, theory.force)
    assert float(sign) != 0.0
    lj = float(logj.detach()[0].sum())
    assert abs(lj - float(logabs)) < 1e-10, (lj, float(logabs))
    assert abs(float(logabs)) > 1e-2  # the map is not volume preserving


@pytest.mark.parametrize("name", ["u1", "phi4"])
def test_zero_networks_are_leapfrog(name):
    theory = theory_for(name)
    n_layers, eps = 3, 0.15
    model = random_model(theory, n_layers=n_layers, step_size=eps, init_scale=0.0)
    x, v = start(theory)
    with torch.no_grad():
        x1, v1, logj, n_force = model.forward_map(x, v, theory.force)
    res = make_integrator(theory, "leapfrog", n_layers, n_layers * eps).integrate(x, v, None, None)
    assert (x1 - res.field).abs().max() < 1e-12
    assert (v1 - res.momentum).abs().max() < 1e-12
    assert logj.abs().max() < 1e-14 and n_force == n_layers + 1


def test_sampler_protocol_and_record():
    theory = theory_for("u1")
    sampler = L2HMC(theory, random_model(theory), SiteRNG(SEED))
    assert isinstance(sampler, Sampler) and sampler.name == "l2hmc"
    x, _ = start(theory)
    x1, rec = sampler.trajectory(x, 7)
    x2, rec2 = L2HMC(theory, random_model(theory), SiteRNG(SEED)).trajectory(x, 7)
    assert torch.equal(x1, x2) and torch.equal(rec.dH, rec2.dH)
    for key in ("dQ_int", "dQ_sin", "direction", "action"):
        assert rec.extra[key].shape == (3,)
    assert rec.log_jacobian is not None and rec.n_force == 3 and rec.n_steps == 2
    ratio = torch.exp(-rec.dH + rec.log_jacobian).clamp(max=1.0)
    assert torch.allclose(rec.acceptance_probability, ratio)
    # accepted fields are wrapped, rejected ones kept bit for bit
    for b in range(3):
        if rec.accepted[b]:
            assert x1[b].abs().max() <= math.pi
        else:
            assert torch.equal(x1[b], x[b])
    assert torch.allclose(rec.extra["action"], theory.action(x1))
    state = sampler.state_dict()
    other = L2HMC(theory, random_model(theory), SiteRNG(SEED))
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(ValueError, match="built for theory"):
        L2HMC(theory_for("phi4"), random_model(theory), SiteRNG(SEED))


def test_model_needs_even_lattice():
    with pytest.raises(ValueError, match="even lattice extents"):
        L2HMCModel(single_rank_grid((4, 5)), "u1")
    with pytest.raises(ValueError, match="supports the theories"):
        L2HMCModel(single_rank_grid((4, 4)), "o3")
    with pytest.raises(ValueError, match="SU3L2HMCModel"):
        L2HMCModel(single_rank_grid((4, 4)), "su3")


# ------------------------------------------------------------------ exactness
def chain_means(sampler, theory, x, n_therm, n_meas, observables):
    sums = {k: torch.zeros(x.shape[0]) for k in observables}
    acc = 0.0
    for counter in range(1, n_therm + n_meas + 1):
        x, rec = sampler.trajectory(x, counter)
        acc += rec.acceptance
        if counter > n_therm:
            obs = theory.observables(x)
            for k in observables:
                sums[k] += obs[k]
    return {k: s / n_meas for k, s in sums.items()}, acc / (n_therm + n_meas)


def mean_err(per_chain: torch.Tensor) -> tuple[float, float]:
    n = per_chain.numel()
    return float(per_chain.mean()), float(per_chain.std() / math.sqrt(n))


def u1_exactness(
    shape, beta, batch, n_therm, n_meas, n_layers, init_scale=1.0, train_steps=0, lr=1e-2
):
    theory = theory_for("u1", shape, beta)
    model = random_model(theory, seed=3, n_layers=n_layers, step_size=0.25, init_scale=init_scale)
    if train_steps:
        from kernels.l2hmc import L2HMCTrainConfig, L2HMCTrainer

        cfg = L2HMCTrainConfig(steps=train_steps, batch=8, lr=lr, plaquette_weight=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        L2HMCTrainer(model, theory, SiteRNG(SEED + 5), cfg).train()
        moved = max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), before))
        assert moved > 0.01  # the weights really changed
    sampler = L2HMC(theory, model, SiteRNG(SEED))
    x = theory.hot_start(SiteRNG(SEED), 0, batch)
    means, acc = chain_means(sampler, theory, x, n_therm, n_meas, ["plaquette", "Q2"])
    assert acc > 0.3, acc
    exact = {
        "plaquette": u1_exact.mean_plaquette(beta, shape),
        "Q2": u1_exact.topological_charge_squared(beta, shape),
    }
    for key, ref in exact.items():
        m, e = mean_err(means[key])
        assert abs(m - ref) < 4.0 * e, f"{key}: {m} +- {e} vs exact {ref}"


def test_u1_exact_untrained_short():
    u1_exactness((4, 4), 1.5, batch=48, n_therm=15, n_meas=45, n_layers=2)


def test_u1_exact_trained_short():
    u1_exactness((4, 4), 1.5, batch=48, n_therm=15, n_meas=45, n_layers=2, train_steps=8)


@pytest.mark.slow
def test_u1_exact_trained_long():
    u1_exactness(
        (8, 8),
        3.0,
        batch=64,
        n_therm=100,
        n_meas=400,
        n_layers=4,
        init_scale=0.3,
        train_steps=60,
        lr=2e-3,
    )


@pytest.mark.slow
def test_u1_exact_untrained_long():
    u1_exactness((8, 8), 3.0, batch=64, n_therm=100, n_meas=400, n_layers=4, init_scale=0.3)


def phi4_vs_hmc(shape, batch, n_therm, n_meas, init_scale=1.0):
    theory = theory_for("phi4", shape, beta=0.35)
    keys = ["V_M2", "abs_M"]
    model = random_model(theory, seed=4, n_layers=3, step_size=0.25, init_scale=init_scale)
    x0 = theory.hot_start(SiteRNG(SEED), 0, batch)
    l2, acc = chain_means(L2HMC(theory, model, SiteRNG(SEED)), theory, x0, n_therm, n_meas, keys)
    assert acc > 0.3, acc
    hmc = HMC(theory, make_integrator(theory, "leapfrog", 4, 1.0), SiteRNG(SEED + 1))
    ref, _ = chain_means(hmc, theory, x0, n_therm, n_meas, keys)
    for key in keys:
        (m1, e1), (m2, e2) = mean_err(l2[key]), mean_err(ref[key])
        assert abs(m1 - m2) < 4.0 * math.hypot(e1, e2), f"{key}: {m1}+-{e1} vs HMC {m2}+-{e2}"


def test_phi4_untrained_matches_hmc_short():
    phi4_vs_hmc((4, 4), batch=48, n_therm=15, n_meas=45)


@pytest.mark.slow
def test_phi4_untrained_matches_hmc_long():
    phi4_vs_hmc((8, 8), batch=64, n_therm=100, n_meas=400, init_scale=0.3)


def test_architecture_record_rebuilds_the_model():
    from kernels.l2hmc import build_l2hmc_model

    theory = theory_for("u1")
    model = random_model(theory)
    arch = model.architecture
    assert arch["builder"] == "kernels.l2hmc.layers:build_l2hmc_model"
    again = build_l2hmc_model(theory.grid, **arch["kwargs"])
    again.load_state_dict(model.state_dict())
    assert again.n_parameters() == model.n_parameters() > 0
    x, v = start(theory)
    with torch.no_grad():
        a = model.forward_map(x, v, theory.force)
        b = again.forward_map(x, v, theory.force)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    # the networks are local: the same weights run on a larger lattice
    big = build_l2hmc_model(
        single_rank_grid((8, 8)),
        "u1",
        dtype="float64",
        **{k: v for k, v in arch["kwargs"].items() if k != "theory"},
    )
    big.load_state_dict(model.state_dict())
