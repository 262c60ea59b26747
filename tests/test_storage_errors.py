"""A full disk during a 2-rank run: one clear message, a non-zero exit on every rank, no
traceback or crash, nothing earlier damaged, no temporary left; resume completes the run
bit for bit.

The full disk is *simulated*: creating a small tmpfs needs root, so a ``sitecustomize`` put
on the ``PYTHONPATH`` of the launched ranks makes ``os.fsync`` of an ensemble file (each
HDF5 save, appended in place, fsyncs its new rows, then its commit marker) fail with
``ENOSPC`` after the first few, as a file system with delayed allocation reports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from mpi_launch import mpiexec

from app.io.hdf5 import read_config

DECK = """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [8, 8]}
sampler:  {name: hmc, integrator: omelyan, steps: 4, trajectory_length: 1.0}
run:      {seed: 3, thermalization: 2, trajectories: 10, save_every: 2, checkpoint_every: 2,
           chains: 2}
output:   {directory: out, formats: [hdf5]}
"""

FULL_DISK = """\
import errno, os
_after = int(os.environ["FAKE_ENOSPC_AFTER_FSYNCS"])
_orig = os.fsync
_count = [0]
def fsync(fd):
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{int(fd)}"))
    except (OSError, TypeError, ValueError):
        name = ""
    if name.startswith("ensemble_c"):
        _count[0] += 1
        if _count[0] > _after:
            raise OSError(errno.ENOSPC, "No space left on device")
    return _orig(fd)
os.fsync = fsync
"""


def launch(
    tmp: Path, out: str, env_extra: dict[str, str], deck_text: str = DECK
) -> subprocess.CompletedProcess:
    deck = tmp / "deck.yaml"
    deck.write_text(deck_text)
    exe = str(Path(sys.executable).parent / "trivhmc")
    cmd = [mpiexec(), "-n", "2", exe, "run", str(deck), "--no-progress"]
    cmd += ["--set", f"output.directory={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)


def records(d: Path) -> list[dict]:
    """The records of run directory ``d`` without their wall times."""
    lines = (d / "records.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if "time" not in k} for x in lines]


def test_full_disk_on_two_ranks_ends_cleanly_and_resume_completes(tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FULL_DISK)
    path = str(inject) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = launch(tmp_path, "out", {"PYTHONPATH": path, "FAKE_ENOSPC_AFTER_FSYNCS": "12"})
    err = proc.stderr
    assert proc.returncode == 8, err  # the storage exit status (docs/errors.md)
    assert "Traceback" not in err and "Segmentation" not in err and "signal 11" not in err
    assert err.count("No space left on device") == 1, err
    assert "cannot write" in err and "ensemble_c" in err and "bytes" in err and "free" in err
    out = tmp_path / "out"
    assert not [p.name for p in out.rglob("*") if ".tmp-" in p.name]
    # what was saved before the failure is intact and verifies
    for c in (0, 1):
        with h5py.File(out / f"ensemble_c{c}.h5") as f:
            n = f["configs"].shape[0]
        assert n >= 1
        read_config(out / f"ensemble_c{c}.h5", n - 1)
    # resume with space: the same ensemble as an uninterrupted run
    assert launch(tmp_path, "out", {}).returncode == 0
    ref = launch(tmp_path, "ref", {})
    assert ref.returncode == 0, ref.stderr[-2000:]
    for c in (0, 1):
        name = f"ensemble_c{c}.h5"
        with h5py.File(out / name) as a, h5py.File(tmp_path / "ref" / name) as b:
            np.testing.assert_array_equal(a["configs"][...], b["configs"][...])
            np.testing.assert_array_equal(a["observables/dH"][...], b["observables/dH"][...])

    assert records(out) == records(tmp_path / "ref")


FULL_RECORDS = """\
import builtins, errno, os
_after = int(os.environ["FAKE_ENOSPC_AFTER_APPENDS"])
_orig = builtins.open
_count = [0]
class _Full:
    def __init__(self, f):
        self._f = f
    def write(self, text):
        self._f.write(text[: len(text) // 2])  # a line cut by the full disk
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._f.close()
def open(file, mode="r", *args, **kwargs):
    f = _orig(file, mode, *args, **kwargs)
    if str(file).endswith("records.jsonl") and "a" in mode:
        _count[0] += 1
        if _count[0] > _after:
            return _Full(f)
    return f
builtins.open = open
"""


def test_full_disk_while_appending_records_on_two_ranks(tmp_path):
    """records.jsonl is appended by world rank 0 alone; a full disk there stops every rank
    with one storage error (exit 8, no MPI_Abort), before any further checkpoint; the cut
    line is dropped on resume, which completes the run bit for bit."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FULL_RECORDS)
    path = str(inject) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = launch(tmp_path, "out", {"PYTHONPATH": path, "FAKE_ENOSPC_AFTER_APPENDS": "5"})
    err = proc.stderr
    assert proc.returncode == 8, err
    assert "Traceback" not in err and "MPI_Abort" not in err and "(rank" not in err, err
    assert err.count("No space left on device") == 1, err
    assert "cannot append to" in err and "records.jsonl" in err and "trajectory 5" in err
    out = tmp_path / "out"
    assert (out / "records.jsonl").read_text().count("\n") == 5  # 0..4 and a cut line
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "ckpt_00000004.h5"
    assert launch(tmp_path, "out", {}).returncode == 0
    ref = launch(tmp_path, "ref", {})
    assert ref.returncode == 0, ref.stderr[-2000:]

    assert records(out) == records(tmp_path / "ref")
    for c in (0, 1):
        name = f"ensemble_c{c}.h5"
        with h5py.File(out / name) as a, h5py.File(tmp_path / "ref" / name) as b:
            np.testing.assert_array_equal(a["configs"][...], b["configs"][...])


#: two replica groups of one chain each (one rank each on 2 ranks)
REPLICA_DECK = DECK.replace("chains: 2}", "chains: 1}") + "parallel: {replicas: 2}\n"


def test_full_disk_in_one_replica_group_stops_every_rank(tmp_path):
    """Two replica groups (one rank each): only the second group's ensemble fails. Its error
    (collective over that group only) reaches the other group through the per-trajectory
    allreduce: one message from rank 0, exit 8 everywhere, no hang; resume completes the run
    as an uninterrupted one."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        FULL_DISK.replace('name.startswith("ensemble_c")', 'name.startswith("ensemble_c1")')
    )
    path = str(inject) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": path, "FAKE_ENOSPC_AFTER_FSYNCS": "6"}
    proc = launch(tmp_path, "out", env, REPLICA_DECK)
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.count("No space left on device") == 1, proc.stderr
    assert "ensemble_c1.h5" in proc.stderr and "BAD TERMINATION" not in proc.stderr
    assert launch(tmp_path, "out", {}, REPLICA_DECK).returncode == 0
    assert launch(tmp_path, "ref", {}, REPLICA_DECK).returncode == 0
    for c in (0, 1):
        name = f"ensemble_c{c}.h5"
        with h5py.File(tmp_path / "out" / name) as a, h5py.File(tmp_path / "ref" / name) as b:
            np.testing.assert_array_equal(a["configs"][...], b["configs"][...])
