"""NTHMC on the Schwinger model (issue 15 item 5): the U(1) NTHMC transformation acts on the
gauge field, the pseudofermion force at ``U = F(V)`` is pulled back through the flow (no
differentiation through the solver), the heatbath uses ``U = F(V)``, and with
:class:`kernels.samplers.nthmc.FlowSplitTheory` the fermion and flow terms sit on the outer
time scale with the plain gauge force inside. Exactness with an untrained (randomised) flow
against the brute-force ``exp(-S_G) det(D)^2`` link Metropolis of tests/schwinger_reference.py
(independent numpy code); the split terms' forces against numerical derivatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from schwinger_reference import link_metropolis

from kernels.flows.nthmc_u1 import u1_nthmc_flow
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.nthmc import FlowSplitTheory
from kernels.theories.schwinger import Schwinger
from parallel import single_rank_grid
from parallel.rng import SiteRNG

BETA, KAPPA = 2.0, 0.25


def _flow(grid):
    torch.manual_seed(43)
    flow = u1_nthmc_flow(grid, hidden=(4,), identity_init=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(2.0)
    return flow


def _per_chain_err(x):
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def test_split_schwinger_terms_and_forces():
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, BETA, KAPPA, cg_tol=1e-12)
    split = FlowSplitTheory(th, _flow(grid))
    assert [t.name for t in split.action_terms()] == ["gauge_plain", "flow_correction"]
    rng = SiteRNG(4)
    v = th.hot_start(rng, 0, 2)
    split.refresh(v, rng, 1)
    corr = split.action_terms()[1]
    f = corr.force(v)
    d = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    h = 1e-4

    def diff(k: float) -> torch.Tensor:
        return corr.action(v + k * h * d) - corr.action(v - k * h * d)

    num = (8 * diff(1) - diff(2)) / (12 * h)
    ana = (f * d).flatten(1).sum(1)
    assert torch.allclose(ana, num, rtol=1e-6, atol=1e-6), (ana, num)


@pytest.mark.slow
def test_split_nthmc_with_pseudofermions_matches_brute_force():
    grid = single_rank_grid((4, 4))
    th = Schwinger(grid, BETA, KAPPA, cg_tol=1e-9)
    tt = FlowSplitTheory(th, _flow(grid))
    levels = [LevelSpec(("flow_correction",), 3), LevelSpec(("gauge_plain",), 2)]
    hmc = HMC(tt, make_integrator(tt, "omelyan", levels=levels), SiteRNG(6))
    v = tt.cold_start(48)
    vals, emdh = [], []
    for c in range(1, 13):
        v, rec = hmc.trajectory(v, c)
        assert int(rec.costs["fermion.cg_failures"].sum()) == 0
        if c > 4:
            u = tt.to_physical(v)
            vals.append(torch.cos(th.plaquette_angles(u)).mean(dim=(1, 2, 3)))
            emdh.append(rec.exp_minus_dH)
    e = torch.cat(emdh)
    assert abs(float(e.mean()) - 1) < 4 * float(e.std()) / math.sqrt(e.numel())
    m, err = _per_chain_err(torch.stack(vals).mean(dim=0).numpy())
    ref_m, ref_e = _per_chain_err(link_metropolis(BETA, KAPPA, (4, 4), 64, 20, 10, 2))
    assert abs(m - ref_m) < 4 * math.hypot(err, ref_e), (m, err, ref_m, ref_e)
