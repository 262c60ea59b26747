"""Checkpoint files: verified round trip, a failed write (full disk) keeps the previous
checkpoint, a damaged file is skipped, a chain-count mismatch is refused."""

from __future__ import annotations

import errno

import h5py
import numpy as np
import pytest
import torch

import app.checkpoint as ckmod
from app.checkpoint import (
    Checkpoint,
    CheckpointError,
    find_latest,
    read_local_fields,
    write_checkpoint,
)
from parallel import single_rank_grid


def make(traj: int, seed: int = 0):
    grid = single_rank_grid((4, 6))
    field = torch.from_numpy(np.random.default_rng(seed).normal(size=(3, 2, 4, 6)))
    ck = Checkpoint(
        traj,
        {"theory": {"name": "u1", "beta": 1.0}, "lattice": [4, 6]},
        {"seed": 1},
        {"n_steps": 7},
    )
    return grid, field, ck


def test_round_trip_and_latest(tmp_path):
    grid, field, ck = make(10)
    write_checkpoint(tmp_path, ck, field, grid, first=2)
    grid, field2, ck2 = make(20, seed=1)
    write_checkpoint(tmp_path, ck2, field2, grid, first=2)
    latest = find_latest(tmp_path)
    assert latest.trajectory == 20 and latest.sampler_state == {"n_steps": 7}
    back = read_local_fields(latest, grid, first=2, batch=3, device=torch.device("cpu"))
    torch.testing.assert_close(back, field2, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="holds 3 chains"):
        read_local_fields(latest, grid, first=2, batch=2, device=torch.device("cpu"))


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    grid, field, ck = make(10)
    write_checkpoint(tmp_path, ck, field, grid, first=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = ckmod.h5py.File

    def full_disk(path, mode="r", *a, **k):
        if mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mode, *a, **k)

    monkeypatch.setattr(ckmod.h5py, "File", full_disk)
    grid, field2, ck2 = make(20, seed=1)
    with pytest.raises(OSError, match="previous checkpoint is intact"):
        write_checkpoint(tmp_path, ck2, field2, grid, first=2)
    monkeypatch.setattr(ckmod.h5py, "File", real)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing new, nothing changed, no temporary left
    assert find_latest(tmp_path).trajectory == 10


def test_damaged_newest_is_skipped_with_a_warning(tmp_path):
    grid, field, ck = make(10)
    write_checkpoint(tmp_path, ck, field, grid, first=2)
    grid, field2, ck2 = make(20, seed=1)
    path = write_checkpoint(tmp_path, ck2, field2, grid, first=2)
    with h5py.File(path, "r+") as f:
        f["fields"][0, 0, 0, 0] += 1e-9
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert find_latest(tmp_path).trajectory == 10
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert find_latest(tmp_path).trajectory == 10
