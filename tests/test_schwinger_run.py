"""``inputs/schwinger.yaml`` through ``trivhmc run``: it runs as it is (shrunk by overrides),
writes the HDF5 ensemble and CG iterations in the records, restarts from its checkpoint to the
same configurations bit for bit, and gives the same configurations bit for bit on 1, 2 and 4
ranks with grids that split t (the antiperiodic fermion boundary then crosses ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi_launch import ROOT, mpiexec

DECK = ROOT / "inputs" / "schwinger.yaml"
SMALL = [
    "--set", "lattice.shape=[4,8]",
    "--set", "theory.kappa=0.22",
    "--set", "theory.hasenbusch=[0.15]",
    "--set", "run.chains=2",
    "--set", "run.thermalization=1",
    "--set", "run.save_every=1",
    "--set", "run.checkpoint_every=2",
]  # fmt: skip


def run(out: Path, nranks: int, *extra: str) -> None:
    exe = str(Path(sys.executable).parent / "trivhmc")
    cmd = [mpiexec(), "-n", str(nranks), exe, "run", str(DECK), "--no-progress"]
    cmd += [*SMALL, "--set", f"output.directory={out}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def ensemble(out: Path) -> dict:
    ens = {}
    for c in (0, 1):
        with h5py.File(out / f"ensemble_c{c}.h5") as f:
            ens[c] = (f["configs"][...], f["config_trajectory"][...])
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return {"ensembles": ens, "records": recs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank") / "out"
    run(out, 1, "--set", "run.trajectories=4")
    return {**ensemble(out), "out": out}


def assert_same_configs(got, ref):
    for c in (0, 1):
        np.testing.assert_array_equal(got["ensembles"][c][1], ref["ensembles"][c][1])
        np.testing.assert_array_equal(got["ensembles"][c][0], ref["ensembles"][c][0])
    assert len(got["records"]) == len(ref["records"])
    for g, r in zip(got["records"], ref["records"]):
        assert g["accepted"] == r["accepted"]
        for term in ("fermion", "hasenbusch_0"):
            assert g[f"{term}.cg_iterations"] == r[f"{term}.cg_iterations"]


def test_deck_runs_and_records_cg_iterations(reference):
    recs = reference["records"]
    assert len(recs) == 5
    last = recs[-1]
    assert all(n > 5 for n in last["fermion.cg_iterations"])
    assert last["fermion.cg_failures"] == [0.0, 0.0]
    assert {"plaquette", "Q_int", "pbp", "pion_C_0"} <= set(last["observables"])
    cfg, traj = reference["ensembles"][0]
    assert cfg.shape[1:] == (2, 4, 8) and len(traj) == 4  # after thermalization
    assert any(any(r["accepted"]) for r in recs)
    # the analysis derives the pion effective mass from the pion_C_<t> columns
    exe = str(Path(sys.executable).parent / "trivhmc")
    proc = subprocess.run([exe, "analyze", str(reference["out"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "m_eff[pion_C][1]" in proc.stdout and "pbp" in proc.stdout


def test_restart_continues_bit_for_bit(reference, tmp_path):
    out = tmp_path / "out"
    run(out, 1, "--set", "run.trajectories=2")
    run(out, 1, "--set", "run.trajectories=4")
    assert_same_configs(ensemble(out), reference)


@pytest.mark.slow  # minutes on a loaded 2-core machine (4 ranks oversubscribed)
@pytest.mark.parametrize("nranks,grid", [(2, "[1,2]"), (4, "[1,4]"), (4, "[2,2]")])
def test_same_configurations_on_other_process_grids(reference, tmp_path, nranks, grid):
    out = tmp_path / "out"
    run(out, nranks, "--set", f"parallel.grid={grid}", "--set", "run.trajectories=4")
    assert_same_configs(ensemble(out), reference)
