"""``app.registry.save_model`` on several ranks: every rank gets the reference of the version
world rank 0 wrote (the card's creation time differs between ranks, so a reference hashed on
another rank named no stored version), and every rank loads it."""

from __future__ import annotations

from pathlib import Path

import torch
from mpi4py import MPI

from app.registry import load_model, save_model
from kernels.flows import u1_ncp_flow
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid


def test_every_rank_gets_the_saved_reference(tmp_path_factory):
    comm = MPI.COMM_WORLD
    root = comm.bcast(str(tmp_path_factory.mktemp("models")) if comm.Get_rank() == 0 else None)
    grid = ProcessGrid((8, 8))
    theory = U1Gauge(grid, 2.0)
    torch.manual_seed(3)
    flow = u1_ncp_flow(grid, n_layers=2, hidden=[2])
    ref = save_model(flow, theory, "m", Path(root), history=[{"rank": comm.Get_rank()}])
    assert comm.allgather(ref) == [ref] * comm.Get_size()
    loaded, card = load_model(ref, grid, theory, Path(root))
    assert ref.endswith(card["hash"][: len(ref.split("@")[1])])
    for a, b in zip(loaded.state_dict().values(), flow.state_dict().values(), strict=True):
        assert torch.equal(a, b)
