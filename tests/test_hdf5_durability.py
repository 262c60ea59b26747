"""Durable in-place appends to an HDF5 ensemble: a SIGKILL at a random moment of a writer
appending in a loop leaves a file that opens, holds only complete, checksum-verified
configurations, and that a resumed writer (``mode="a"`` + ``truncate_after``) continues.

The expected content of every configuration is known independently (a field seeded by its
trajectory number), so a torn or misplaced row cannot pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from app.io.hdf5 import (
    EnsembleDamagedError,
    EnsembleWriter,
    read_config,
    read_metadata,
    read_observables,
)

SHAPE = (2, 4, 4)

CHILD = """\
import sys
import numpy as np
from pathlib import Path
from app.io.hdf5 import EnsembleWriter, read_metadata

path = Path(sys.argv[1])
mode = "a" if path.exists() else "w"
w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test", mode=mode)
t = read_metadata(path)["n_trajectories"]
print("ready", flush=True)
while True:
    w.append_observables(t, {"plaquette": float(t)})
    if t % 2 == 0:
        w.append_config(np.random.default_rng(t).uniform(-3.0, 3.0, (2, 4, 4)), t, first=1)
    else:
        w.flush()
    t += 1
"""


def field(t: int) -> np.ndarray:
    return np.random.default_rng(t).uniform(-3.0, 3.0, SHAPE)


def check_committed(path) -> dict:
    """Every committed row is the one the writer meant to write."""
    meta = read_metadata(path)
    obs = read_observables(path)
    n_rows = meta["n_trajectories"]
    np.testing.assert_array_equal(obs["trajectory"], np.arange(n_rows))
    plaquette = obs.get("plaquette", np.zeros(0))  # absent before the first committed row
    np.testing.assert_array_equal(plaquette, np.arange(n_rows, dtype=float))
    trajs = meta["config_trajectory"]
    assert trajs == list(range(0, 2 * len(trajs), 2))
    for i, t in enumerate(trajs):
        np.testing.assert_array_equal(read_config(path, i), field(t))  # checksum verified
    return meta


def kill_and_resume(path, rng: np.random.Generator, env: dict) -> int:
    """Start a writer, SIGKILL it at a random moment, resume, continue; the committed count."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    meta = check_committed(path)
    # resume as a run does: continue the file, cut back to the checkpoint, append
    last = meta["n_trajectories"] - 1
    w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test", mode="a")
    w.truncate_after(last)
    for t in (last + 1, last + 2):
        w.append_observables(t, {"plaquette": float(t)})
        if t % 2 == 0:
            w.append_config(field(t), t, first=1)
    w.flush()
    return check_committed(path)["n_configs"]


def run_kills(tmp_path, kills: int) -> list[int]:
    path = tmp_path / "ens.h5"
    rng = np.random.default_rng(12)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    counts = [kill_and_resume(path, rng, env) for _ in range(kills)]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    return counts


def test_sigkill_during_appends_leaves_a_file_that_resume_completes(tmp_path):
    run_kills(tmp_path, 2)


@pytest.mark.slow
def test_sigkill_during_appends_many_times(tmp_path):
    run_kills(tmp_path, 30)


def test_uncommitted_tail_is_ignored_by_readers_and_cut_on_resume(tmp_path):
    import h5py

    path = tmp_path / "ens.h5"
    w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test")
    for t in (0, 2):
        w.append_observables(t, {"plaquette": float(t)})
        w.append_config(field(t), t, first=1)
    # what a kill between the data and the commit phases leaves: rows past the marker
    with h5py.File(path, "a") as f:
        for name in ("configs", "config_trajectory", "config_checksum"):
            f[name].resize(3, axis=0)
        f["configs"][2] = np.nan
        for ds in f["observables"].values():
            ds.resize(3, axis=0)
    assert read_metadata(path)["n_configs"] == 2
    assert read_observables(path)["trajectory"].tolist() == [0, 2]
    np.testing.assert_array_equal(read_config(path, -1), field(2))
    EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test", mode="a")
    with h5py.File(path, "r") as f:  # plain h5py sees exactly the committed rows again
        assert f["configs"].shape[0] == 2 and f["observables/plaquette"].shape == (2,)


def test_damaged_file_is_named(tmp_path):
    path = tmp_path / "ens.h5"
    w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test")
    w.append_config(field(0), 0, first=1)
    data = bytearray(path.read_bytes())
    data[:64] = bytes(64)  # the superblock
    path.write_bytes(bytes(data))
    with pytest.raises(EnsembleDamagedError, match=r"cannot open HDF5 ensemble .*ens\.h5"):
        read_metadata(path)
    with pytest.raises(EnsembleDamagedError, match="ens.h5"):
        EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test", mode="a")


HOLDER = """\
import sys, time
import h5py
from app.io.hdf5 import open_ensemble
path, how, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = open_ensemble(path, "r") if how == "trivhmc" else h5py.File(path, "r")  # h5py: locks
with ctx as f:
    print("open", f.attrs["committed"].tolist(), flush=True)
    time.sleep(seconds)
"""


def _hold(path, how: str, seconds: float) -> subprocess.Popen:
    """Another process holding ``path`` open for reading (``how``: trivhmc's reader, or
    h5py's default, which takes HDF5's file lock); returns once it is open."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), how, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("open")
    return proc


def _writer(path) -> EnsembleWriter:
    return EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test")


def test_a_reader_never_makes_the_writer_fail(tmp_path, monkeypatch):
    """``trivhmc analyze``/``info`` on a running run: trivhmc's readers take no file lock,
    so the run's next update goes through while they hold the file open (without waiting:
    a lock conflict would raise at once here)."""
    import app.io.hdf5 as h5mod

    monkeypatch.setattr(h5mod, "LOCK_WAIT_S", 0.0)
    path = tmp_path / "ens.h5"
    w = _writer(path)
    holder = _hold(path, "trivhmc", 30)
    try:
        w.append_observables(0, {"plaquette": 0.5})
        w.flush()
    finally:
        holder.kill()
        holder.wait()
    assert read_observables(path)["plaquette"].tolist() == [0.5]


def test_a_writer_waits_for_a_locking_reader_then_names_it_busy(tmp_path, monkeypatch):
    """A foreign program holding the file with HDF5's lock: the writer waits for it (here
    1 s) and succeeds; held past LOCK_WAIT_S, one clear error (exit 2), not 'damaged'."""
    import app.io.hdf5 as h5mod
    from app.errors import InputError

    path = tmp_path / "ens.h5"
    w = _writer(path)
    holder = _hold(path, "h5py", 1.0)
    w.append_observables(0, {"plaquette": 0.5})
    w.flush()  # waited for the holder
    holder.wait()
    assert read_observables(path)["plaquette"].tolist() == [0.5]

    monkeypatch.setattr(h5mod, "LOCK_WAIT_S", 0.5)
    holder = _hold(path, "h5py", 30)
    try:
        w.append_observables(1, {"plaquette": 0.25})
        with pytest.raises(h5mod.EnsembleBusyError, match="another process") as err:
            w.flush()
        assert isinstance(err.value, InputError)
    finally:
        holder.kill()
        holder.wait()
    assert read_observables(path)["plaquette"].tolist() == [0.5]  # nothing damaged
