"""Trivialized HMC (HMC on S~(V) = S(F(V)) - log det F) and flow independence Metropolis.

Both samplers must be exact for *any* invertible flow, so they are run here with untrained
(random-init) flows and checked against exact results:

* free phi^4 (``lambda = 0``, ``S = phi^T A phi / 2``, ``A(p) = 2 - 2 beta sum_mu cos p_mu``):
  ``<V M^2> = 1 / A(0) = 1 / (2 - 2 d beta)`` and equipartition ``<S> / V = 1/2``;
* 2D U(1) on an ``L x L`` torus (``V`` plaquettes): ``<cos theta_P> = sum_n I_n' I_n^(V-1) /
  sum_n I_n^V`` (character expansion, e.g. Kanwar et al. 2003.06413; kernels.theories.u1_exact,
  itself checked against scipy in tests/test_u1_exact.py);

and, for interacting phi^4, trivialized HMC against plain HMC. Errors: every chain is a
replicum; the Gamma method (app.analysis) accounts for autocorrelations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.analysis import gamma_method
from kernels.flows import phi4_affine_flow, u1_ncp_flow
from kernels.flows.priors import prior_for
from kernels.integrators import make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from kernels.theories.u1_exact import mean_plaquette
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SEED = 2468


def _randomise(flow: torch.nn.Module, scale: float, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _phi4_flow(grid, scale=0.0):
    # no hidden layer: the log-det varies strongly with the field (a sensitive test)
    torch.manual_seed(17)
    flow = phi4_affine_flow(grid, n_pairs=1, hidden=())
    _randomise(flow, scale)
    return flow


def _u1_flow(grid, scale=0.0):
    torch.manual_seed(19)
    flow = u1_ncp_flow(grid, n_layers=4, hidden=(), n_mix=1, stout_layers=2)
    _randomise(flow, scale)
    with torch.no_grad():  # stout coefficients start at 0 (identity): switch them on
        for layer in flow.layers[4:]:
            layer.coeff.fill_(0.5)
    return flow


def _run_hmc(theory, batch, n_traj, n_therm, n_steps, seed=SEED):
    rng = SiteRNG(seed)
    hmc = HMC(theory, make_integrator(theory, "omelyan", n_steps, 1.0), rng)
    field = theory.hot_start(rng, 0, batch)
    series: dict[str, list] = {}
    exp_mdh, acc = [], []
    for t in range(1, n_therm + n_traj + 1):
        field, rec = hmc.trajectory(field, t)
        if t > n_therm:
            exp_mdh.append(rec.exp_minus_dH)
            acc.append(rec.acceptance)
            for k, v in theory.observables(field).items():
                if v.ndim == 1:
                    series.setdefault(k, []).append(v.detach().numpy())
    obs = {k: np.array(v).T for k, v in series.items()}  # (chains, trajectories)
    return obs, torch.stack(exp_mdh), float(np.mean(acc))


def _agree(res, exact, n_sigma=4.0):
    assert abs(res.mean - exact) < n_sigma * res.error, (res.mean, res.error, exact)


# ------------------------------------------------------------------ force and reversibility
@pytest.mark.parametrize("kind", ["phi4", "u1"])
def test_trivialized_force_is_the_derivative(kind: str) -> None:
    grid = single_rank_grid((4, 4))
    if kind == "phi4":
        theory = TransformedTheory(Phi4(grid, beta=0.4, lam=0.7), _phi4_flow(grid, 0.5))
        v = torch.randn((2, 4, 4), generator=torch.Generator().manual_seed(1))
    else:
        theory = TransformedTheory(U1Gauge(grid, beta=2.0), _u1_flow(grid, 0.5))
        v = 3.0 * torch.rand((2, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    f = theory.force(v)
    d = torch.randn(v.shape, generator=torch.Generator().manual_seed(2))
    h = 1e-4

    def diff(k: float) -> torch.Tensor:
        return theory.action(v + k * h * d) - theory.action(v - k * h * d)

    with torch.no_grad():  # fourth-order central difference
        num = (8 * diff(1) - diff(2)) / (12 * h)
    ana = (f * d).flatten(1).sum(1)
    assert torch.allclose(ana, num, rtol=1e-7, atol=1e-6), (ana, num)
    # and it is not the plain force: the flow matters
    assert (f - theory.theory.force(v)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["phi4", "u1"])
def test_trivialized_hmc_is_reversible(kind: str) -> None:
    grid = single_rank_grid((4, 4))
    if kind == "phi4":
        theory = TransformedTheory(Phi4(grid, beta=0.5, lam=0.5), _phi4_flow(grid))
    else:
        theory = TransformedTheory(U1Gauge(grid, beta=2.0), _u1_flow(grid))
    rng = SiteRNG(SEED)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 4, 1.0), rng)
    field = theory.hot_start(rng, 0, 3)
    _, rec = hmc.trajectory(field, 1, check_reversibility=True)
    assert float(rec.reversibility_field_error.max()) < 1e-10
    assert float(rec.reversibility_dH_error.max()) < 1e-9


# ------------------------------------------------------------------ exact results
def test_trivialized_hmc_free_phi4_exact() -> None:
    """Untrained flow, free field: <V M^2> = 1/(2 - 4 beta), <S>/V = 1/2, <exp(-dH)> = 1."""
    beta = 0.2
    grid = single_rank_grid((4, 4))
    theory = TransformedTheory(Phi4(grid, beta=beta, lam=0.0), _phi4_flow(grid))
    obs, exp_mdh, acc = _run_hmc(theory, batch=32, n_traj=40, n_therm=5, n_steps=4)
    assert 0.5 < acc < 1.0
    e = exp_mdh.double()
    assert abs(float(e.mean()) - 1.0) < 4 * float(e.std()) / math.sqrt(e.numel())
    _agree(gamma_method(list(obs["V_M2"])), 1.0 / (2.0 - 4.0 * beta))
    _agree(gamma_method(list(obs["action"])), 0.5)


def test_trivialized_hmc_u1_exact_plaquette() -> None:
    """Untrained gauge-equivariant flow, 2D U(1) 4x4 at beta = 1.5: exact plaquette."""
    beta = 1.5
    grid = single_rank_grid((4, 4))
    theory = TransformedTheory(U1Gauge(grid, beta=beta), _u1_flow(grid))
    obs, exp_mdh, acc = _run_hmc(theory, batch=32, n_traj=30, n_therm=5, n_steps=4)
    assert acc > 0.5
    e = exp_mdh.double()
    assert abs(float(e.mean()) - 1.0) < 4 * float(e.std()) / math.sqrt(e.numel())
    _agree(gamma_method(list(obs["plaquette"])), mean_plaquette(beta, (4, 4)))


def test_trivialized_agrees_with_plain_hmc_interacting_phi4() -> None:
    grid = single_rank_grid((4, 4))
    phys = Phi4(grid, beta=0.5, lam=0.5)
    plain, _, _ = _run_hmc(phys, batch=32, n_traj=40, n_therm=5, n_steps=4, seed=11)
    triv, _, _ = _run_hmc(
        TransformedTheory(phys, _phi4_flow(grid)), batch=32, n_traj=40, n_therm=5, n_steps=6
    )
    for key in ("V_M2", "action", "abs_M"):
        a, b = gamma_method(list(plain[key])), gamma_method(list(triv[key]))
        assert abs(a.mean - b.mean) < 4 * math.hypot(a.error, b.error), (key, a, b)


def test_flow_metropolis_free_phi4_exact() -> None:
    """Independence Metropolis with an untrained flow is exact too (free field)."""
    beta = 0.2
    grid = single_rank_grid((4, 4))
    theory = Phi4(grid, beta=beta, lam=0.0)
    flow = _phi4_flow(grid)
    with torch.no_grad():  # random, but close enough to the target for a usable acceptance
        for layer in flow.layers[:2]:
            for p in layer.net.net[-1].parameters():
                p.mul_(0.1)
    sampler = FlowMetropolis(theory, flow, prior_for(theory, sigma=0.9), SiteRNG(SEED))
    state = sampler.initial_state(0, 64)
    vm2, acc = [], []
    for t in range(1, 161):
        state, rec = sampler.step(state, t)
        acc.append(rec.acceptance)
        assert 0.0 < rec.ess <= 1.0
        vm2.append(theory.observables(state.u)["V_M2"].numpy())
    assert 0.1 < np.mean(acc) < 0.95
    _agree(gamma_method(list(np.array(vm2).T)), 1.0 / (2.0 - 4.0 * beta))
    # starting a chain from given configurations evaluates the same log-weight
    again = sampler.state_of(state.u)
    assert torch.allclose(again.log_w, state.log_w, atol=1e-9)


def test_transformed_theory_interface() -> None:
    grid = single_rank_grid((4, 4))
    phys = U1Gauge(grid, beta=1.0)
    flow = _u1_flow(grid)
    theory = TransformedTheory(phys, flow)
    rng = SiteRNG(3)
    v = theory.hot_start(rng, 0, 2)
    u = theory.to_physical(v)
    assert torch.allclose(u, phys.hot_start(rng, 0, 2), atol=1e-10)
    assert torch.allclose(theory.from_physical(u), v, atol=1e-10)
    with torch.no_grad():
        s_tilde = theory.action(v)
        _, logdet = flow(v)
    assert torch.allclose(s_tilde, phys.action(u) - logdet, atol=1e-12)
    assert theory.observables(v)["plaquette"].shape == (2,)
    with pytest.raises(ValueError, match="rebuild"):
        TransformedTheory(U1Gauge(single_rank_grid((8, 8)), beta=1.0), flow)
