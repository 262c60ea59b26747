"""Checkpoint/restart of ``trivhmc run``: a run killed with SIGKILL and resumed (also on a
different number of ranks) yields the same ensemble as an uninterrupted run; resuming with
changed physics is refused; a damaged newest checkpoint falls back to the previous one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi_launch import mpiexec

DECK = """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [8, 8]}
sampler:  {name: hmc, integrator: omelyan, steps: 6, trajectory_length: 1.0,
           target_acceptance: 0.8}
run:      {seed: 11, thermalization: 4, trajectories: 20, save_every: 5,
           checkpoint_every: 4, chains: 2}
output:   {directory: out, formats: [hdf5]}
"""


def trivhmc_cmd(nranks: int, deck: Path, *extra: str) -> list[str]:
    exe = str(Path(sys.executable).parent / "trivhmc")
    return [mpiexec(), "-n", str(nranks), exe, "run", str(deck), "--no-progress", *extra]


def run_to_end(nranks: int, deck: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        trivhmc_cmd(nranks, deck, *extra), capture_output=True, text=True, timeout=300, env=env
    )


def run_and_kill(nranks: int, deck: Path, after_trajectory: int) -> None:
    """Start a run and SIGKILL it (whole process group) once a checkpoint beyond
    ``after_trajectory`` exists, at whatever point the run then is."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        trivhmc_cmd(nranks, deck),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    progress = deck.parent / "out" / "progress.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads(progress.read_text())["trajectory"] >= after_trajectory:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_until_lock_holder_is_gone(deck.parent / "out")


def _wait_until_lock_holder_is_gone(out: Path, timeout_s: float = 60.0) -> None:
    """The launcher is dead; its ranks may take a moment longer on a loaded machine (a rank
    inside an fsync is killed when the call returns). A resume starts after they are gone."""
    from app.lock import LOCK_NAME, _pid_alive

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            pid = json.loads((out / LOCK_NAME).read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return
        if not _pid_alive(int(pid)):
            return
        time.sleep(0.05)


def final_state(run_dir: Path) -> dict:
    out = run_dir / "out"
    with h5py.File(out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()) as f:
        fields = f["fields"][...]
        traj = int(f.attrs["trajectory"])
    ens = {}
    for c in (0, 1):
        with h5py.File(out / f"ensemble_c{c}.h5") as f:
            ens[c] = (
                f["configs"][...],
                f["config_trajectory"][...],
                {k: f["observables"][k][...] for k in f["observables"]},
            )
    recs = {}
    for line in (out / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[r["trajectory"]] = r
    return {"fields": fields, "trajectory": traj, "ensembles": ens, "records": recs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("uninterrupted")
    (d / "deck.yaml").write_text(DECK)
    proc = run_to_end(2, d / "deck.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_state(d)


def assert_same_ensemble(got: dict, ref: dict) -> None:
    """Same fields, ensembles and records, bit for bit: the global sums are exact
    (parallel/reduce.py), so this holds on any process grid, resume on another rank count
    included. Only the wall-clock fields of the records may differ."""
    assert got["trajectory"] == ref["trajectory"] == 24
    np.testing.assert_array_equal(got["fields"], ref["fields"])  # bit for bit
    for c in (0, 1):
        cfg, ctraj, obs = got["ensembles"][c]
        rcfg, rtraj, robs = ref["ensembles"][c]
        np.testing.assert_array_equal(ctraj, rtraj)
        np.testing.assert_array_equal(cfg, rcfg)
        assert set(obs) == set(robs)
        for k in robs:
            np.testing.assert_array_equal(obs[k], robs[k])
    assert sorted(got["records"]) == list(range(24))
    for t, r in ref["records"].items():
        g = got["records"][t]
        same = {k: v for k, v in g.items() if "time" not in k}
        assert same == {k: v for k, v in r.items() if "time" not in k}, t


def test_kill_and_resume_same_ranks_is_bitwise_identical(reference, tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK)
    run_and_kill(2, deck, after_trajectory=9)
    run_and_kill(2, deck, after_trajectory=17)
    proc = run_to_end(2, deck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_ensemble(final_state(tmp_path), reference)


def test_kill_and_resume_on_other_rank_counts(reference, tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK)
    run_and_kill(1, deck, after_trajectory=13)
    proc = run_to_end(4, deck, "--set", "run.trajectories=8")  # stops early at 12
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_to_end(1, deck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_ensemble(final_state(tmp_path), reference)


def test_changed_physics_is_refused_and_nothing_is_lost(reference, tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK.replace("trajectories: 20", "trajectories: 4"))
    assert run_to_end(1, deck).returncode == 0
    before = (tmp_path / "out" / "records.jsonl").read_bytes()
    proc = run_to_end(1, deck, "--set", "theory.beta=2.5")
    assert proc.returncode == 2
    assert "beta" in proc.stderr and "refusing to resume" in proc.stderr
    assert (tmp_path / "out" / "records.jsonl").read_bytes() == before


def test_damaged_newest_checkpoint_falls_back(reference, tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK.replace("trajectories: 20", "trajectories: 8"))
    assert run_to_end(1, deck).returncode == 0
    ck = tmp_path / "out" / "checkpoints"
    newest = ck / (ck / "LATEST").read_text().strip()
    with h5py.File(newest, "r+") as f:  # flip bits in the stored field
        f["fields"][0, 0, 0, 0] += 1.0
    deck.write_text(DECK)  # extend the run to the reference length
    proc = run_to_end(1, deck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping damaged checkpoint" in proc.stderr
    assert_same_ensemble(final_state(tmp_path), reference)


def test_replica_groups_give_the_same_chains_on_any_rank_count(tmp_path):
    """2 replica groups x 2 chains: 4 ranks (2 per lattice) equal 2 ranks (1 per lattice)."""
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK.replace("trajectories: 20", "trajectories: 10"))
    for n in (2, 4):
        proc = run_to_end(
            n, deck, "--set", "parallel.replicas=2", "--set", f"output.directory=out{n}"
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    for c in range(4):  # global chain c = replica * 2 + b
        with (
            h5py.File(tmp_path / f"out2/ensemble_c{c}.h5") as a,
            h5py.File(tmp_path / f"out4/ensemble_c{c}.h5") as b,
        ):
            np.testing.assert_array_equal(a["configs"][...], b["configs"][...])
    r2 = [json.loads(x) for x in (tmp_path / "out2/records.jsonl").read_text().splitlines()]
    r4 = [json.loads(x) for x in (tmp_path / "out4/records.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in r2] == [r["accepted"] for r in r4]
    assert all(len(r["dH"]) == 4 for r in r4)
    # the two replica groups run different chains
    with (
        h5py.File(tmp_path / "out4/ensemble_c0.h5") as a,
        h5py.File(tmp_path / "out4/ensemble_c2.h5") as b,
    ):
        assert not np.array_equal(a["configs"][...], b["configs"][...])


def test_max_runtime_checkpoints_and_stops_cleanly(tmp_path):
    """A run that reaches run.max_runtime writes a checkpoint, exits 0, and --status says 3."""
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK.replace("trajectories: 20", "trajectories: 100000"))
    proc = run_to_end(1, deck, "--set", "run.max_runtime=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped (max_runtime)" in proc.stdout
    done = json.loads((tmp_path / "out" / "progress.json").read_text())["trajectory"]
    assert 0 < done < 100004
    exe = str(Path(sys.executable).parent / "trivhmc")
    status = subprocess.run([exe, "run", "--status", str(deck)], capture_output=True, text=True)
    assert status.returncode == 3 and json.loads(status.stdout)["done"] == done


def test_sigterm_checkpoints_stops_with_143_and_resumes_bit_for_bit(tmp_path):
    """SIGTERM to the launcher's process group (a scheduler's wall-time warning): the run
    finishes the trajectory in progress, writes a checkpoint covering every record, releases
    its lock and exits 143; resumed, it equals an uninterrupted run of the same length."""
    long = DECK.replace("trajectories: 20", "trajectories: 100000")
    deck = tmp_path / "deck.yaml"
    deck.write_text(long.replace("checkpoint_every: 4", "checkpoint_every: 100000"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        trivhmc_cmd(2, deck),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    records = tmp_path / "out" / "records.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM after a checkpoint" in stdout
    out = tmp_path / "out"
    done = json.loads((out / "progress.json").read_text())["trajectory"]
    assert done == records.read_text().count("\n") >= 6
    assert (out / "checkpoints" / "LATEST").read_text().strip() == f"ckpt_{done:08d}.h5"
    assert not (out / ".trivhmc.lock").exists()

    # resume to done + 3 trajectories; compare with a run that was never stopped
    extra = ("--set", f"run.trajectories={done + 3 - 4}")
    deck.write_text(long)
    proc = run_to_end(1, deck, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "deck.yaml").write_text(long)
    proc = run_to_end(1, tmp_path / "ref" / "deck.yaml", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, ref = final_state(tmp_path), final_state(tmp_path / "ref")
    np.testing.assert_array_equal(got["fields"], ref["fields"])
    assert got["trajectory"] == ref["trajectory"] == done + 3
    for c in (0, 1):
        for a, b in zip(got["ensembles"][c][:2], ref["ensembles"][c][:2], strict=True):
            np.testing.assert_array_equal(a, b)
    strip = lambda r: {k: v for k, v in r.items() if "time" not in k}  # noqa: E731
    assert {t: strip(r) for t, r in got["records"].items()} == {
        t: strip(r) for t, r in ref["records"].items()
    }
