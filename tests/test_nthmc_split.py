"""Multiple-time-scale NTHMC (kernels.samplers.nthmc.FlowSplitTheory) and step-size tuning on a
few chains: the split terms add up to the single-scale trivialized action, every term's force
is the numerical derivative of its action, the nested integrator is reversible and samples
the exact 2D U(1) plaquette; tuning moves the step count toward the target acceptance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.analysis import gamma_method
from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.nthmc import FlowSplitTheory, tune_on_few_chains
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SHAPE = (4, 4)
TERMS = ["gauge_plain", "flow_correction"]


def _flow(grid):
    torch.manual_seed(41)
    flow = u1_nthmc_flow(grid, hidden=(4,), identity_init=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(2.0)
    return flow


def _field(batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((batch, 2) + SHAPE, generator=gen) - 0.5) * 2 * math.pi


def _theories(beta=2.0):
    grid = single_rank_grid(SHAPE)
    phys = U1Gauge(grid, beta=beta)
    flow = _flow(grid)
    return FlowSplitTheory(phys, flow), TransformedTheory(phys, flow)


def test_split_terms_add_up_to_the_trivialized_action_and_force():
    split, single = _theories()
    v = _field()
    terms = {t.name: t for t in split.action_terms()}
    assert sorted(terms) == sorted(TERMS)
    total = terms["gauge_plain"].action(v) + terms["flow_correction"].action(v)
    assert torch.allclose(total, single.action(v).detach(), rtol=1e-13, atol=1e-12)
    assert torch.allclose(terms["gauge_plain"].action(v), single.theory.action(v))
    f_all = split.term_force(TERMS)(v)
    assert torch.allclose(f_all, single.force(v), rtol=1e-12, atol=1e-12)
    f_sum = split.term_force(["gauge_plain"])(v) + split.term_force(["flow_correction"])(v)
    assert torch.allclose(f_sum, f_all, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TERMS)
def test_term_force_is_the_numerical_derivative(name):
    split, _ = _theories()
    term = {t.name: t for t in split.action_terms()}[name]
    v = _field()
    f = term.force(v)
    d = torch.randn(v.shape, generator=torch.Generator().manual_seed(2))
    h = 1e-4

    def diff(k: float) -> torch.Tensor:
        return term.action(v + k * h * d) - term.action(v - k * h * d)

    num = (8 * diff(1) - diff(2)) / (12 * h)
    ana = (f * d).flatten(1).sum(1)
    assert torch.allclose(ana, num, rtol=1e-7, atol=1e-6), (ana, num)
    assert float(f.abs().max()) > 1e-2


def test_bad_inner_term():
    grid = single_rank_grid(SHAPE)
    with pytest.raises(ValueError, match="no action term 'fermion'"):
        FlowSplitTheory(U1Gauge(grid, 1.0), _flow(grid), inner=("fermion",))


def _mts_hmc(theory, rng, outer=2, inner=3):
    levels = [LevelSpec(("flow_correction",), outer), LevelSpec(("gauge_plain",), inner)]
    return HMC(
        theory, make_integrator(theory, "omelyan", trajectory_length=1.0, levels=levels), rng
    )


def test_nested_integrator_is_reversible():
    split, _ = _theories()
    rng = SiteRNG(5)
    hmc = _mts_hmc(split, rng)
    v = split.hot_start(rng, 0, 3)
    _, rec = hmc.trajectory(v, 1, check_reversibility=True)
    assert float(rec.reversibility_field_error.max()) < 1e-10
    assert float(rec.reversibility_dH_error.max()) < 1e-9
    # force evaluations: the flow correction on the outer level only
    assert rec.force_evaluations[0] < rec.force_evaluations[1]


@pytest.mark.slow
def test_nested_nthmc_exact_plaquette():
    beta = 1.5
    split, _ = _theories(beta)
    rng = SiteRNG(77)
    hmc = _mts_hmc(split, rng)
    v = split.hot_start(rng, 0, 32)
    plaq, emdh = [], []
    for t in range(1, 31):
        v, rec = hmc.trajectory(v, t)
        if t > 5:
            plaq.append(split.observables(v)["plaquette"].numpy())
            emdh.append(rec.exp_minus_dH)
    e = torch.stack(emdh).double()
    assert abs(float(e.mean()) - 1.0) < 4 * float(e.std()) / math.sqrt(e.numel())
    res = gamma_method(list(np.array(plaq).T))
    exact = mean_plaquette(beta, SHAPE)
    assert abs(res.mean - exact) < 4 * res.error, (res.mean, res.error, exact)


def test_tune_on_few_chains_then_freeze():
    grid = single_rank_grid((8, 8))
    theory = U1Gauge(grid, beta=4.0)
    rng = SiteRNG(3)
    hmc = HMC(theory, make_integrator(theory, "leapfrog", 1, 1.0), rng, target_acceptance=0.8)
    v = theory.hot_start(rng, 0, 2)
    for t in range(1, 6):  # thermalise a little with a small step first
        v, _ = HMC(theory, make_integrator(theory, "leapfrog", 10, 1.0), rng).trajectory(v, t)
    n, v = tune_on_few_chains(hmc, v, 25, counter=100)
    assert n == hmc.n_steps and n > 2  # one leapfrog step per unit time accepts nothing
    with pytest.raises(ValueError, match="target_acceptance"):
        tune_on_few_chains(HMC(theory, make_integrator(theory, "leapfrog", 1, 1.0), rng), v, 1)
