"""Every reader of an HDF5 ensemble sees only the committed rows: a writer killed between
the data and the commit phases leaves rows past the ``committed`` marker (here: NaN links and
absurd observables), which ``trivhmc analyze`` (app/analysis.py), training data
(app/training.py), ``trivhmc info`` (app/io/info.py) and offline measurements
(app/measure.py) must not use. The expected content is known independently (fields seeded by
their trajectory number)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from app.analysis import load_run, read_hdf5
from app.deck import loads_deck
from app.io.hdf5 import EnsembleWriter, committed_rows, read_configs
from app.io.info import config_info
from app.setup import build_grid, build_theory
from app.training import _ensemble_blocks

SHAPE = (2, 4, 4)


def field(t: int) -> np.ndarray:
    return np.random.default_rng(t).uniform(-3.0, 3.0, SHAPE)


@pytest.fixture
def crashed(tmp_path):
    """Two committed configurations and three observable rows, then an uncommitted tail."""
    path = tmp_path / "ensemble_c0.h5"
    w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test")
    for t in (0, 1, 2):
        w.append_observables(t, {"plaquette": 0.1 * t, "dH": 0.01 * t})
        if t != 1:
            w.append_config(field(t), t + 1, first=1)  # 1-based trajectory count
    w.close()
    with h5py.File(path, "a") as f:  # the rows a kill before the commit phase leaves
        for name in ("configs", "config_trajectory", "config_checksum"):
            f[name].resize(4, axis=0)
        f["configs"][2:] = np.nan
        f["config_trajectory"][2:] = [4, 5]
        for ds in f["observables"].values():
            ds.resize(5, axis=0)
            ds[3:] = 1e300 if ds.dtype.kind == "f" else 99
        assert committed_rows(f) == (2, 3)
    return path


def test_read_configs_and_training_data_skip_the_tail(crashed, tmp_path):
    np.testing.assert_array_equal(read_configs(crashed), np.stack([field(0), field(2)]))
    block = read_configs(crashed, (slice(1, 3), slice(0, 2)), default_first=1)
    np.testing.assert_array_equal(block, np.stack([field(0), field(2)])[:, :, 1:3, 0:2])
    deck = loads_deck(
        "theory: {name: u1, beta: 2.0}\nlattice: {shape: [4, 4]}\n"
        "run: {seed: 1, trajectories: 1}\noutput: {directory: out}\n"
        "train: {architecture: u1_stout, loss: force_matching, model_name: m,\n"
        f"        configurations: [{crashed}]}}\n",
        base_dir=tmp_path,
    )
    grid = build_grid(deck)
    theory = build_theory(deck, grid)
    data = _ensemble_blocks(deck, grid, theory)
    assert data.shape == (2, *SHAPE)
    np.testing.assert_array_equal(data.numpy(), np.stack([field(0), field(2)]))


def test_analysis_info_and_measure_skip_the_tail(crashed):
    run = read_hdf5(crashed)
    np.testing.assert_array_equal(run.observables["plaquette"][:, 0], [0.0, 0.1, 0.2])
    assert run.dH is not None and run.dH.shape == (3, 1)
    assert load_run(crashed.parent).observables["plaquette"].shape == (3, 1)
    info = config_info(crashed)
    assert info["n_configs"] == 2 and info["n_trajectories"] == 3
    assert info["valid"] and info["checksum"]["status"] == "ok"  # the last committed one
    from app.measure import _entries

    entries = _entries([(crashed, "hdf5")])
    assert [(i, t) for _, _, i, t in entries] == [(0, 0), (1, 2)]


def test_files_without_the_ensemble_layout_are_read_whole(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["dH"] = np.arange(4.0)
        f.create_group("observables")["plaquette"] = np.arange(4.0) / 10
        assert committed_rows(f) == (None, None)
    run = read_hdf5(path)
    assert run.dH.shape == (4, 1) and run.observables["plaquette"].shape == (4, 1)
