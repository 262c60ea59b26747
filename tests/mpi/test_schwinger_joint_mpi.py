"""The joint (U, phi) flow of the Schwinger model on a distributed lattice equals the
single-rank one (1, 2 and 4 ranks; grids that split t, where the antiperiodic fermion boundary
crosses ranks): forward/inverse fields and log-dets, the training loss and its all-reduced
gradients, an optimisation step, and joint independence-Metropolis decisions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mpi4py import MPI

from kernels.flows.schwinger_joint import JointFlowMetropolis, JointTrainer, schwinger_joint_flow
from kernels.flows.train import TrainConfig
from kernels.theories.schwinger import Schwinger
from parallel import ProcessGrid, allgather_field, allreduce_gradients, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (8, 8)
GRIDS = {1: [(1, 1)], 2: [(1, 2), (2, 1)], 4: [(1, 4), (2, 2), (4, 1)]}[SIZE]
TOL = 1e-11
REF = single_rank_grid(SHAPE)
GAUGE = {"builder": "kernels.flows.u1:u1_ncp_flow", "kwargs": {"n_layers": 2, "hidden": [4]}}


@pytest.fixture(params=GRIDS, ids=lambda g: f"grid{list(g)}")
def grid(request):
    g = ProcessGrid(SHAPE, grid=request.param)
    yield g
    g.free()


def worst(err: float) -> float:
    return MPI.COMM_WORLD.allreduce(float(err), op=MPI.MAX)


def close(what, a, b, tol=TOL):
    err = worst(float((a - b).detach().abs().max()) / max(1.0, float(b.detach().abs().max())))
    assert err <= tol, f"{what}: distributed differs from single rank by {err:.3e}"


def flow_on(grid):
    torch.manual_seed(13)  # same initial weights on every rank and both grids
    flow = schwinger_joint_flow(grid, GAUGE, pf_layers=3, pf_hidden=4, init_kappa=0.2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def local(x, grid):
    return x[(slice(None), slice(None)) + grid.local_slices()].contiguous()


def test_joint_flow_forward_inverse_logdet(grid):
    gen = np.random.default_rng(2)
    v = torch.from_numpy(gen.uniform(-np.pi, np.pi, size=(2, 2, *SHAPE)))
    chi = torch.from_numpy(gen.normal(size=(2, 2, *SHAPE)) + 1j * gen.normal(size=(2, 2, *SHAPE)))
    flow, ref = flow_on(grid), flow_on(REF)
    th, phi, ld = flow(local(v, grid), local(chi, grid))
    th_r, phi_r, ld_r = ref(v, chi)
    close("U", allgather_field(th, grid, 2), th_r)
    close("phi", allgather_field(phi, grid, 2), phi_r)
    close("log-det", ld, ld_r)
    v2, chi2, ldi = flow.inverse(th, phi)
    close("inverse V", allgather_field(v2, grid, 2), v)
    close("inverse chi", allgather_field(chi2, grid, 2), chi)
    close("inverse log-det", ldi, -ld_r)


def grads(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def test_joint_training_loss_gradients_and_step(grid):
    cfg = TrainConfig(steps=2, batch=3, lr=1e-2, lr_schedule="constant")
    trainers = [
        JointTrainer(flow_on(g), Schwinger(g, 1.0, 0.2), copy.deepcopy(cfg), rng=SiteRNG(21))
        for g in (grid, REF)
    ]
    losses = []
    for t in trainers:
        t.flow.zero_grad()
        loss = t.loss_terms(0)["loss"]
        loss.backward()
        allreduce_gradients(t.flow, t.grid)
        losses.append(loss.detach())
    close("loss", losses[0], losses[1])
    close("gradients", grads(trainers[0].flow), grads(trainers[1].flow))
    for _ in range(2):
        m, m_ref = (t.step() for t in trainers)
        assert abs(m["loss"] - m_ref["loss"]) <= TOL * max(1.0, abs(m_ref["loss"]))
    for a, b in zip(trainers[0].flow.parameters(), trainers[1].flow.parameters(), strict=True):
        close("parameters after Adam", a.detach(), b.detach())
    assert trainers[0].cg.iterations == trainers[1].cg.iterations  # grid-independent CG


def test_joint_metropolis_decisions(grid):
    samplers = []
    for g in (grid, REF):
        flow = flow_on(g)
        flow.requires_grad_(False)
        samplers.append(JointFlowMetropolis(Schwinger(g, 1.0, 0.2), flow, SiteRNG(8)))
    states = [s.initial_state(0, 4) for s in samplers]
    for c in range(1, 4):
        (states[0], rec), (states[1], rec_ref) = (
            s.step(st, c) for s, st in zip(samplers, states, strict=True)
        )
        assert torch.equal(rec.accepted, rec_ref.accepted)
        close("log w", states[0].log_w, states[1].log_w)
    close("U", allgather_field(states[0].u, grid, 2), states[1].u)
