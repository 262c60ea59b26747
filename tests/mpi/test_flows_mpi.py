"""Flows, training, trivialized force/HMC and flow Metropolis on 1, 2, 4 ranks equal one rank.

Flow kinds: phi^4 affine couplings, U(1) NCP and U(1) circular-spline plaquette couplings
(``u1_ncp_flow(..., transform="spline")``), both followed by stout layers, and the U(1)
sweep-ordered couplings of ``kernels.flows.u1_sweep``.

Every rank builds the same flow on the distributed grid and on ``single_rank_grid`` (same
parameters), feeds the same global input (a global numpy array sliced with
``grid.local_slices()``, or site-keyed RNG draws), and compares to 1e-12 in float64: flow
output and log-det (forward and inverse), training loss, parameter gradients after
``allreduce_gradients`` (also with two replica groups), one Adam step, the trivialized force,
one trivialized-HMC trajectory and one flow-Metropolis step.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.flows import phi4_affine_flow, u1_ncp_flow
from kernels.flows.priors import prior_for
from kernels.flows.train import TrainConfig, Trainer
from kernels.flows.u1_sweep import u1_sweep_flow
from kernels.integrators import make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis
from kernels.samplers.hmc import HMC
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, allgather_field, allreduce_gradients, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (8, 8)
GRIDS = {1: [[1, 1]], 2: [[2, 1], [1, 2]], 4: [[4, 1], [2, 2], [1, 4]]}[SIZE]
TOL = 1e-12
REF = single_rank_grid(SHAPE)


#: flow kinds: phi^4 affine; U(1) NCP and U(1) circular-spline plaquette couplings (+ stout);
#: U(1) sweep-ordered couplings (kernels.flows.u1_sweep)
KINDS = ["phi4", "u1", "u1spline", "u1sweep"]


@pytest.fixture(params=GRIDS, ids=lambda g: "g" + "x".join(map(str, g)))
def grid(request):
    return ProcessGrid(SHAPE, request.param)


def _flow(kind: str, grid):
    torch.manual_seed(11)  # same init on every rank and for both grids
    if kind == "phi4":
        flow = phi4_affine_flow(grid, n_pairs=1, hidden=(4,))
    elif kind == "u1sweep":
        flow = u1_sweep_flow(grid, n_mix=2, hidden=(2,))
    else:
        transform = "spline" if kind == "u1spline" else "ncp"
        flow = u1_ncp_flow(grid, n_layers=2, hidden=(4,), stout_layers=2, transform=transform)
        with torch.no_grad():
            for layer in flow.layers[2:]:
                layer.coeff.fill_(0.7)
    return flow


def _theory(kind: str, grid):
    return Phi4(grid, beta=0.5, lam=0.5) if kind == "phi4" else U1Gauge(grid, beta=2.0)


def _global_input(kind: str, batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "phi4":
        return rng.normal(size=(batch,) + SHAPE)
    return rng.uniform(-4.0, 4.0, size=(batch, 2) + SHAPE)


def _local(full: np.ndarray, grid, first: int) -> torch.Tensor:
    return torch.from_numpy(
        np.ascontiguousarray(full[(slice(None),) * first + grid.local_slices()])
    )


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err = float((a - b).detach().abs().max()) if a.numel() else 0.0
    assert err <= TOL * max(1.0, float(b.detach().abs().max())), err


@pytest.mark.parametrize("kind", KINDS)
def test_flow_forward_inverse_logdet(grid, kind):
    first = 1 if kind == "phi4" else 2
    full = _global_input(kind)
    flow, ref = _flow(kind, grid), _flow(kind, REF)
    u, ld = flow(_local(full, grid, first))
    u_ref, ld_ref = ref(torch.from_numpy(full))
    _close(allgather_field(u, grid, first), u_ref)
    _close(ld, ld_ref)
    v, ldi = flow.inverse(u)
    v_ref, ldi_ref = ref.inverse(u_ref)
    _close(allgather_field(v, grid, first), v_ref)
    _close(ldi, ldi_ref)
    _close(allgather_field(v, grid, first), torch.from_numpy(full))


def _grads(module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("kind", KINDS)
def test_training_loss_gradients_and_step(grid, kind):
    cfg = TrainConfig(steps=2, batch=3, lr=1e-2, force_every=1)
    tr = Trainer(_flow(kind, grid), _theory(kind, grid), cfg, rng=SiteRNG(21))
    ref = Trainer(_flow(kind, REF), _theory(kind, REF), copy.deepcopy(cfg), rng=SiteRNG(21))
    for t in (tr, ref):
        t.flow.zero_grad()
        loss = t.loss_terms(0)["loss"]
        loss.backward()
        allreduce_gradients(t.flow, t.grid)
        t.loss0 = float(loss.detach())
    assert abs(tr.loss0 - ref.loss0) <= TOL * max(1.0, abs(ref.loss0))
    _close(_grads(tr.flow), _grads(ref.flow))
    # full optimisation steps (gradients all-reduced inside) and their metrics
    for _ in range(2):
        m, m_ref = tr.step(), ref.step()
        for key in ("loss", "kl", "ess", "force_rms", "force_trivialized_rms"):
            assert math.isclose(m[key], m_ref[key], rel_tol=1e-11, abs_tol=1e-12), key
    for a, b in zip(tr.flow.parameters(), ref.flow.parameters()):
        _close(a.detach(), b.detach())


def test_training_gradients_with_two_replica_groups():
    """Replicas draw chains ``[r B, (r+1) B)``; the averaged gradient is the one of the
    union batch on one rank."""
    if SIZE < 2:
        pytest.skip("needs 2 or 4 ranks")
    grid = ProcessGrid(SHAPE, None, replicas=2)
    cfg = TrainConfig(steps=1, batch=2)
    tr = Trainer(_flow("u1", grid), _theory("u1", grid), cfg, rng=SiteRNG(4))
    ref = Trainer(
        _flow("u1", REF), _theory("u1", REF), TrainConfig(steps=1, batch=4), rng=SiteRNG(4)
    )
    for t in (tr, ref):
        t.flow.zero_grad()
        t.loss_terms(0)["loss"].backward()
        allreduce_gradients(t.flow, t.grid)
    _close(_grads(tr.flow), _grads(ref.flow))
    m, m_ref = tr.step(), ref.step()
    for key in ("loss", "kl", "ess"):
        assert math.isclose(m[key], m_ref[key], rel_tol=1e-11, abs_tol=1e-12), key


@pytest.mark.parametrize("kind", KINDS)
def test_trivialized_force_and_trajectory(grid, kind):
    first = 1 if kind == "phi4" else 2
    full = _global_input(kind)
    tt = TransformedTheory(_theory(kind, grid), _flow(kind, grid))
    tt_ref = TransformedTheory(_theory(kind, REF), _flow(kind, REF))
    f = tt.force(_local(full, grid, first))
    _close(allgather_field(f, grid, first), tt_ref.force(torch.from_numpy(full)))
    # one trivialized HMC trajectory: same dH, decisions and field
    out = []
    for theory in (tt, tt_ref):
        rng = SiteRNG(8)
        hmc = HMC(theory, make_integrator(theory, "leapfrog", 2, 0.3), rng)
        v0 = theory.hot_start(rng, 0, 2)
        v1, rec = hmc.trajectory(v0, 1)
        out.append((allgather_field(v1, theory.grid, first), rec))
    _close(out[0][0], out[1][0])
    _close(out[0][1].dH, out[1][1].dH)
    assert torch.equal(out[0][1].accepted, out[1][1].accepted)


@pytest.mark.parametrize("kind", KINDS)
def test_flow_metropolis_step(grid, kind):
    first = 1 if kind == "phi4" else 2
    res = []
    for g in (grid, REF):
        theory = _theory(kind, g)
        sampler = FlowMetropolis(theory, _flow(kind, g), prior_for(theory), SiteRNG(6))
        state = sampler.initial_state(0, 4)
        state, rec = sampler.step(state, 1)
        res.append((allgather_field(state.u, g, first), state.log_w, rec))
    _close(res[0][0], res[1][0])
    _close(res[0][1], res[1][1])
    assert torch.equal(res[0][2].accepted, res[1][2].accepted)
    assert math.isclose(res[0][2].ess, res[1][2].ess, rel_tol=1e-11)
