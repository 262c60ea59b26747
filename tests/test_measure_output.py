"""Where ``trivhmc measure`` writes (docs/measure.md "Output"): it never overwrites its own
inputs, a run's records or on-the-fly measurements or anything else that is not its own
earlier output; a directory, a missing directory or such a file is refused with exit status 2
before anything is measured, on every rank under MPI. Offline lines record their chain, and
``trivhmc analyze`` of a multi-chain offline file keeps every chain (checked against numpy)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import app.measure as am
from app.analysis import analyze
from app.cli import main
from tests.mpi_launch import mpiexec

ROOT = Path(__file__).resolve().parent.parent

DECK = """\
theory: {name: phi4, beta: 0.3, lambda: 0.2}
lattice: {shape: [4, 6]}
run: {seed: 3, thermalization: 2, trajectories: 8, chains: 2, save_every: 2}
output: {directory: out, progress: false, formats: [hdf5]}
measure: {every: 2, correlators: true}
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure_output")
    (d / "deck.yaml").write_text(DECK)
    assert main(["run", str(d / "deck.yaml")]) == 0
    return d


def test_chain_of_file():
    from app.analysis import chain_of_file

    assert chain_of_file("/x/ensemble_c3.h5") == 3
    assert chain_of_file("run_c12_000008.lime") == 12
    assert chain_of_file("b/run_c1_000008.nersc") == 1
    assert chain_of_file("cfg_0004.lime") is None and chain_of_file("ensemble.h5") is None


def test_offline_lines_record_the_chain_and_analyze_keeps_every_chain(run_dir, capsys):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    assert main(["measure", str(deck)]) == 0
    capsys.readouterr()
    lines = [json.loads(x) for x in (out / "measurements_offline.jsonl").read_text().splitlines()]
    assert len(lines) == 8  # 4 saved configurations x 2 chains
    assert sorted({(x["chain"], Path(x["file"]).name) for x in lines}) == [
        (0, "ensemble_c0.h5"),
        (1, "ensemble_c1.h5"),
    ]
    # independent of the JSON lines: the per-file HDF5 groups the same command wrote
    values = []
    for c in range(2):
        with h5py.File(out / f"ensemble_c{c}.h5", "r") as f:
            values.append(f["measurements_offline"]["two_point_0"][:])
    assert [len(v) for v in values] == [4, 4]
    a = analyze(out / "measurements_offline.jsonl", names=["two_point_0"])
    r = a.observables["two_point_0"]
    assert a.n_chains == 2 and a.n_trajectories == 4 and r.n == 8 and r.n_replicas == 2
    assert r.mean == pytest.approx(np.mean(np.concatenate(values)), rel=1e-12)
    # an offline file written before the `chain` field: the chain comes from the file name
    old = run_dir / "old.jsonl"
    old.write_text(
        "".join(json.dumps({k: v for k, v in x.items() if k != "chain"}) + "\n" for x in lines)
    )
    b = analyze(old, names=["two_point_0"])
    assert b.n_chains == 2 and b.observables["two_point_0"].mean == pytest.approx(r.mean)
    # ... and where the name does not tell, a trajectory twice is refused, never dropped
    renamed = [dict(x, file=f"copy{x['chain']}.h5") for x in lines]
    old.write_text(
        "".join(json.dumps({k: v for k, v in x.items() if k != "chain"}) + "\n" for x in renamed)
    )
    assert main(["analyze", str(old)]) == 2
    err = capsys.readouterr().err
    assert "was measured already on line 1 (copy0.h5 and copy1.h5)" in err
    # a configuration measured twice in a new file (e.g. its .lime and .nersc copies)
    old.write_text("".join(json.dumps(x) + "\n" for x in lines + lines[:1]))
    assert main(["analyze", str(old)]) == 2
    assert "chain 0 trajectory" in capsys.readouterr().err


def test_outputs_that_are_refused_before_measuring(run_dir, tmp_path, capsys, monkeypatch):
    deck, out = run_dir / "deck.yaml", run_dir / "out"

    def never(*args, **kwargs):  # the checks come first: nothing may be measured
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(am.Measurer, "measure", never)
    ens = out / "ensemble_c0.h5"
    (tmp_path / "notes.txt").write_text("keep me\n")
    protected = [ens, out / "records.jsonl", out / "measurements.jsonl", tmp_path / "notes.txt"]
    before = {p: digest(p) for p in protected}
    cases = [
        ([str(ens)], ens, "it is one of the configuration files being measured"),
        ([], ens, "it is one of the configuration files being measured"),
        ([], out / "records.jsonl", "is not an earlier output of trivhmc measure"),
        ([], out / "measurements.jsonl", "is not an earlier output of trivhmc measure"),
        ([str(ens)], tmp_path / "notes.txt", "is not an earlier output of trivhmc measure"),
        ([str(ens)], tmp_path, "is a directory; give a file name"),
        ([str(ens)], tmp_path / "nodir" / "x.jsonl", "its directory"),
    ]
    for files, target, expected in cases:
        code = main(["measure", str(deck), *files, "-o", str(target)])
        err = capsys.readouterr().err
        assert code == 2, (target, err)
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and f"cannot write {target}" in lines[0], err
        assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "nodir").exists()  # no directory is created
    assert {p: digest(p) for p in protected} == before


def test_default_output_beside_a_run_keeps_its_measurements(run_dir, capsys, monkeypatch):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    fly = digest(out / "measurements.jsonl")
    monkeypatch.chdir(out)  # measuring files from inside the run directory
    assert main(["measure", str(deck), "ensemble_c1.h5"]) == 0
    assert "measurements_offline.jsonl" in capsys.readouterr().out
    assert digest(out / "measurements.jsonl") == fly
    got = [json.loads(x) for x in (out / "measurements_offline.jsonl").read_text().splitlines()]
    assert {x["chain"] for x in got} == {1} and len(got) == 4
    # its own earlier output is replaced (atomically), also under another name
    target = out / "mine.jsonl"
    target.write_text("")  # empty: nothing to lose
    for _ in range(2):
        assert main(["measure", str(deck), "ensemble_c0.h5", "-o", str(target)]) == 0
        capsys.readouterr()
        assert len(target.read_text().splitlines()) == 4


def test_refused_on_every_rank_without_abort(run_dir, tmp_path):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    records = digest(out / "records.jsonl")
    for target in (tmp_path, out / "records.jsonl"):
        cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "app.cli", "measure", str(deck)]
        cmd += ["-o", str(target)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert p.returncode == 2, p.stderr
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "cannot write" in lines[0], p.stderr
        assert "MPI_Abort" not in p.stderr and "Traceback" not in p.stderr
    assert digest(out / "records.jsonl") == records
