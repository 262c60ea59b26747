"""What ``trivhmc run`` finds in its output directory (app/run_directory.py): a run killed
before its first regular checkpoint resumes from checkpoint 0, bit for bit; a fresh run never
overwrites an earlier run's records, ensembles or configuration files; a resume never leaves
a gap (records or an ensemble older than the checkpoint, a missing ensemble) and never cuts
anything before it has checked everything. Every refusal is exit status 2 on every rank and
leaves the files as they were."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi_launch import mpiexec

from app.cli import main

DECK = """\
theory:   {name: u1, beta: 1.5}
lattice:  {shape: [6, 6]}
sampler:  {name: hmc, integrator: omelyan, steps: 4, trajectory_length: 1.0}
run:      {seed: 5, thermalization: 2, trajectories: 10, save_every: 3,
           checkpoint_every: CKPT, chains: 2}
output:   {directory: out, formats: [hdf5], progress: false}
"""


def make_deck(d: Path, checkpoint_every: int = 4, **subs: str) -> Path:
    text = DECK.replace("CKPT", str(checkpoint_every))
    for old, new in subs.items():
        text = text.replace(old, new)
    (d / "deck.yaml").write_text(text)
    return d / "deck.yaml"


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a run directory (but the lock), by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".trivhmc.lock")
    }


def content(out: Path) -> dict:
    """Records (without wall times), ensemble datasets and the newest checkpoint's field."""
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    recs = [{k: v for k, v in r.items() if "time" not in k} for r in recs]
    ens = {}
    for path in sorted(out.glob("ensemble_c*.h5")):
        with h5py.File(path) as f:
            ens[path.name] = {
                "configs": f["configs"][...],
                "config_trajectory": f["config_trajectory"][...],
                **{f"obs/{k}": v[...] for k, v in f["observables"].items()},
            }
    ck = out / "checkpoints"
    with h5py.File(ck / (ck / "LATEST").read_text().strip()) as f:
        fields = f["fields"][...]
    return {"records": recs, "ensembles": ens, "fields": fields}


def assert_same(a: dict, b: dict) -> None:
    assert a["records"] == b["records"]
    assert sorted(a["ensembles"]) == sorted(b["ensembles"])
    for name, datasets in a["ensembles"].items():
        assert sorted(datasets) == sorted(b["ensembles"][name])
        for key, value in datasets.items():
            np.testing.assert_array_equal(value, b["ensembles"][name][key], err_msg=key)
    np.testing.assert_array_equal(a["fields"], b["fields"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run with checkpoints at 4, 8, 12 (and 0)."""
    d = tmp_path_factory.mktemp("reference")
    assert main(["run", str(make_deck(d))]) == 0
    return content(d / "out")


def refused(deck: Path, capsys, *words: str) -> str:
    """Run ``deck``; assert exit status 2 with ``words`` in the message; return it."""
    out = deck.parent / "out"
    before = snapshot(out)
    assert main(["run", str(deck)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert snapshot(out) == before, "a refused run changed the run directory"
    return err


# ------------------------------------------------------------------ checkpoint 0
def test_a_fresh_run_writes_checkpoint_0_before_its_first_trajectory(tmp_path):
    deck = make_deck(tmp_path, checkpoint_every=100)  # no regular checkpoint before the end
    assert main(["run", str(deck), "--set", "run.trajectories=1"]) == 0
    ck = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in ck.glob("ckpt_*.h5")) == ["ckpt_00000000.h5", "ckpt_00000003.h5"]
    with h5py.File(ck / "ckpt_00000000.h5") as f:
        assert int(f.attrs["trajectory"]) == 0


def test_a_run_killed_before_its_first_checkpoint_resumes_bit_for_bit(reference, tmp_path):
    """The state a kill leaves after trajectory k < the first regular checkpoint: records,
    run.log and ensembles written past checkpoint 0, no later checkpoint."""
    deck = make_deck(tmp_path, checkpoint_every=100)
    assert main(["run", str(deck)]) == 0  # checkpoints 0 and 12
    ck = tmp_path / "out" / "checkpoints"
    (ck / "ckpt_00000012.h5").unlink()
    (ck / "LATEST").write_text("ckpt_00000000.h5\n")
    make_deck(tmp_path)  # back to the reference's checkpoint_every
    assert main(["run", str(deck)]) == 0
    assert_same(content(tmp_path / "out"), reference)


def test_resume_with_a_last_records_line_cut_by_a_kill(reference, tmp_path):
    deck = make_deck(tmp_path)
    assert main(["run", str(deck), "--set", "run.trajectories=6"]) == 0  # checkpoint at 8
    records = tmp_path / "out" / "records.jsonl"
    records.write_text(records.read_text() + '{"trajectory": 8, "thermaliz')  # cut line
    assert main(["run", str(deck)]) == 0
    assert_same(content(tmp_path / "out"), reference)


def test_a_resume_reads_records_once(reference, tmp_path, monkeypatch):
    """World rank 0 read records.jsonl twice when a resume started: in the start-up check
    (app/run_directory.py) and again to cut it (Records.truncate). The check's lines are
    handed on: one read, the same result (a later line and a cut line dropped)."""
    deck = make_deck(tmp_path)
    assert main(["run", str(deck), "--set", "run.trajectories=6"]) == 0  # checkpoint at 8
    records = tmp_path / "out" / "records.jsonl"
    lines = records.read_text().splitlines()
    later = json.dumps({**json.loads(lines[-1]), "trajectory": 8})
    records.write_text("\n".join(lines + [later]) + '\n{"trajectory": 9, "thermaliz')
    reads = []
    read_text = Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "records.jsonl":
            reads.append(self)
        return read_text(self, *args, **kwargs)

    from app.deck import load_deck
    from app.run import run

    monkeypatch.setattr(Path, "read_text", counting)
    assert run(load_deck(deck), progress=False).finished  # (the CLI's summary reads it after)
    monkeypatch.undo()
    assert reads == [records]
    assert_same(content(tmp_path / "out"), reference)


# ------------------------------------------------------------------ fresh start
def test_a_fresh_run_does_not_overwrite_an_earlier_ensemble(tmp_path, capsys):
    deck = make_deck(tmp_path)
    assert main(["run", str(deck), "--set", "run.trajectories=2"]) == 0
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints")
    (out / "records.jsonl").unlink()
    err = refused(deck, capsys, "refusing to start a new run", "ensemble_c0.h5", "ensemble_c1.h5")
    assert "configuration(s)" in err


def test_a_fresh_run_does_not_overwrite_earlier_records(tmp_path, capsys):
    deck = make_deck(tmp_path)
    assert main(["run", str(deck), "--set", "run.trajectories=2"]) == 0
    shutil.rmtree(tmp_path / "out" / "checkpoints")
    refused(deck, capsys, "refusing to start a new run", "records.jsonl holds records")


def test_a_fresh_run_does_not_overwrite_configuration_files(tmp_path, capsys):
    deck = make_deck(tmp_path)
    configs = tmp_path / "out" / "configs"
    configs.mkdir(parents=True)
    (configs / "out_c0_000003.lime").write_bytes(b"an earlier run's file")
    refused(deck, capsys, "refusing to start a new run", "out_c0_000003.lime")


def test_a_fresh_run_may_replace_an_empty_ensemble(tmp_path):
    """A run killed between creating its ensembles and checkpoint 0 left nothing to lose."""
    deck = make_deck(tmp_path)
    assert main(["run", str(deck), "--set", "run.trajectories=1"]) == 0
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints")
    (out / "records.jsonl").unlink()
    for path in out.glob("ensemble_c*.h5"):
        path.unlink()
    from app.io.hdf5 import EnsembleWriter

    EnsembleWriter(out / "ensemble_c0.h5", "u1", {"beta": 1.5}, (6, 6), "hmc", 5, "x").close()
    assert main(["run", str(deck), "--set", "run.trajectories=1"]) == 0


# ------------------------------------------------------------------ resume
@pytest.fixture
def stopped(tmp_path) -> Path:
    """A run stopped at its checkpoint at 8 (of 12), and a copy of its ensemble of chain 0
    from the checkpoint at 4."""
    deck = make_deck(tmp_path)
    assert main(["run", str(deck), "--set", "run.trajectories=2"]) == 0  # stops at 4
    shutil.copy(tmp_path / "out" / "ensemble_c0.h5", tmp_path / "ensemble_c0_at_4.h5")
    assert main(["run", str(deck), "--set", "run.trajectories=6"]) == 0  # stops at 8
    return deck


def test_resume_refuses_an_ensemble_older_than_the_checkpoint(stopped, capsys):
    out = stopped.parent / "out"
    shutil.copy(stopped.parent / "ensemble_c0_at_4.h5", out / "ensemble_c0.h5")
    refused(stopped, capsys, "older than the checkpoint", "trajectories 4..7", "ensemble_c0.h5")


def test_resume_refuses_an_old_ensemble_without_rng_counter(stopped, capsys):
    """Files without the counter: the observable rows must reach the last measured one."""
    out = stopped.parent / "out"
    shutil.copy(stopped.parent / "ensemble_c0_at_4.h5", out / "ensemble_c0.h5")
    with h5py.File(out / "ensemble_c0.h5", "r+") as f:
        del f["rng"].attrs["next_trajectory"]
    refused(stopped, capsys, "older than the checkpoint", "measured up to trajectory 7")


def test_resume_refuses_a_missing_ensemble(stopped, capsys):
    (stopped.parent / "out" / "ensemble_c1.h5").unlink()
    refused(stopped, capsys, "ensemble_c1.h5 is missing")


def test_resume_refuses_an_ensemble_of_another_run(stopped, capsys):
    out = stopped.parent / "out"
    with h5py.File(out / "ensemble_c1.h5", "r+") as f:
        f.attrs["seed"] = 6
    refused(stopped, capsys, "belongs to another run", "seed 6 != 5")


def test_resume_refuses_a_damaged_ensemble_before_cutting_anything(stopped, capsys):
    out = stopped.parent / "out"
    with h5py.File(out / "ensemble_c0.h5", "r+") as f:
        n = int(f.attrs["committed"][0])
        f["configs"][n - 1] = f["configs"][n - 1] * 0.5  # the checksum no longer matches
    with open(out / "ensemble_c1.h5", "r+b") as f:  # HDF5 cannot open it any more
        f.write(b"\0" * 64)
    # the cut that a resume would make must not happen before the refusal
    records = out / "records.jsonl"
    records.write_text(records.read_text() + json.dumps({"trajectory": 8}) + "\n")
    refused(stopped, capsys, "does not match its SciDAC checksum", "ensemble_c1.h5")


def test_resume_refuses_missing_records(stopped, capsys):
    (stopped.parent / "out" / "records.jsonl").unlink()
    refused(stopped, capsys, "the file is missing", "trajectories 0..7 are missing")


def test_resume_refuses_records_with_a_damaged_middle_line(stopped, capsys):
    records = stopped.parent / "out" / "records.jsonl"
    lines = records.read_text().splitlines()
    lines[3] = lines[3][:20]
    records.write_text("\n".join(lines) + "\n")
    refused(stopped, capsys, "line 4 is not valid JSON")


def test_resume_refuses_records_with_a_gap(stopped, capsys):
    records = stopped.parent / "out" / "records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    refused(stopped, capsys, "holds trajectory 3 where 2 was expected")


# ------------------------------------------------------------------ other input
def test_a_checkpoint_as_run_start_is_refused(stopped, capsys):
    ckpt = next((stopped.parent / "out" / "checkpoints").glob("ckpt_*.h5"))
    other = stopped.parent / "other"
    other.mkdir()
    deck = make_deck(other, **{"seed: 5,": f"seed: 5, start: {ckpt},"})
    assert main(["run", str(deck)]) == 2
    err = capsys.readouterr().err
    assert "run.start" in err and "not a trivhmc-ensemble file" in err, err


def test_an_output_directory_that_is_a_file_is_refused(tmp_path, capsys):
    deck = make_deck(tmp_path)
    (tmp_path / "out").write_text("not a directory")
    assert main(["run", str(deck)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "not a directory"


# ------------------------------------------------------------------ MPI
def _mpi_run(nranks: int, deck: Path) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "trivhmc")
    return subprocess.run(
        [mpiexec(), "-n", str(nranks), exe, "run", str(deck), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@pytest.mark.parametrize("nranks", [2, 4])
def test_resume_from_checkpoint_0_and_refusals_on_several_ranks(reference, tmp_path, nranks):
    """On 2 and 4 ranks (domain split, and with 4 ranks two replica groups of one chain
    each): checkpoint 0 resumes to the 1-rank reference bit for bit; an older ensemble of
    chain 1 (written by the second replica group's root) is refused by every rank alike."""
    deck = make_deck(tmp_path, checkpoint_every=100)
    if nranks == 4:
        deck.write_text(
            deck.read_text().replace("chains: 2}", "chains: 1}\nparallel: {replicas: 2}")
        )
    proc = _mpi_run(nranks, deck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = tmp_path / "out" / "checkpoints"
    (ck / "ckpt_00000012.h5").unlink()
    (ck / "LATEST").write_text("ckpt_00000000.h5\n")
    deck.write_text(deck.read_text().replace("checkpoint_every: 100", "checkpoint_every: 4"))
    proc = _mpi_run(nranks, deck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(content(tmp_path / "out"), reference)

    # an ensemble of chain 1 synchronised at 8, before the checkpoint at 12: a gap
    with h5py.File(tmp_path / "out" / "ensemble_c1.h5", "r+") as f:
        f["rng"].attrs["next_trajectory"] = 8
    deck.write_text(deck.read_text().replace("trajectories: 10", "trajectories: 14"))
    before = snapshot(tmp_path / "out")
    proc = _mpi_run(nranks, deck)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("older than the checkpoint") == 1, proc.stderr
    assert "internal error" not in proc.stderr
    assert snapshot(tmp_path / "out") == before
