"""On-the-fly measurements committed to the HDF5 ensemble per trajectory (app/measure.py).

A crash between the two phases of an append leaves the committed rows readable and the tail
is cut by the next append; a ``trivhmc run`` killed with SIGKILL keeps every measurement it
committed (equal to the JSON lines it wrote), and the resumed run ends with exactly one row
per measured trajectory, equal to those of an uninterrupted run.
"""

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

import app.measure as am
from app.errors import InputError
from app.measure import append_group_rows, read_group, truncate_group, write_hdf5_group


def _row(t: int, x: float, flow: bool = True, extra: dict | None = None) -> tuple[int, dict]:
    rec = {"observables": {"a": [x, -x], "b": [2 * x, 0.0], **(extra or {})}}
    if flow:
        ts = [0.0, 0.1, 0.2]
        rec["flow"] = {
            "t": ts,
            "t2E": [[x * s for s in ts], [0.0] * 3],
            "tdt2E": [[x + s for s in ts], [1.0] * 3],
        }
    return t, rec


@pytest.fixture
def ens(tmp_path):
    p = tmp_path / "ensemble_c0.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "test"
    return p


def test_rows_append_and_read_back(ens):
    append_group_rows(ens, [_row(2, 1.0)], chain=1)
    append_group_rows(ens, [_row(5, 3.0, extra={"c": [7.0, 8.0]})], chain=1)
    g = read_group(ens)
    assert g["trajectory"].tolist() == [2, 5]
    assert g["a"].tolist() == [-1.0, -3.0]
    assert np.isnan(g["c"][0]) and g["c"][1] == 8.0  # a column first seen later
    assert g["flow_t"].tolist() == [0.0, 0.1, 0.2]
    assert g["tdt2E"].tolist() == [[1.0] * 3, [1.0] * 3]
    append_group_rows(ens, [_row(8, 4.0)], chain=0)
    assert np.isnan(read_group(ens)["c"][2])
    assert read_group(ens)["t2E"][2].tolist() == pytest.approx([0.0, 0.4, 0.8])


def test_crash_between_the_phases_keeps_the_committed_rows(ens, monkeypatch):
    append_group_rows(ens, [_row(2, 1.0)])
    calls = []

    def crash_after_phase_one(f):
        calls.append(1)
        f.flush()
        raise KeyboardInterrupt("simulated kill after the rows, before the marker")

    monkeypatch.setattr(am, "_fsync", crash_after_phase_one)
    with pytest.raises(KeyboardInterrupt):
        append_group_rows(ens, [_row(5, 9.0)])
    monkeypatch.undo()
    with h5py.File(ens, "r") as f:  # the rows are on disk, the marker is not
        assert f["measurements/trajectory"].shape == (2,)
        assert f["measurements"].attrs["committed"] == 1
    g = read_group(ens)
    assert g["trajectory"].tolist() == [2] and g["a"].tolist() == [1.0]
    append_group_rows(ens, [_row(5, 3.0)])  # the next append cuts the torn tail first
    g = read_group(ens)
    assert g["trajectory"].tolist() == [2, 5] and g["a"].tolist() == [1.0, 3.0]
    with h5py.File(ens, "r") as f:
        assert f["measurements/t2E"].shape == (2, 3)


def test_truncate_for_resume(ens):
    append_group_rows(ens, [_row(t, float(t)) for t in (2, 5, 8)])
    truncate_group(ens, 5)  # resume from the checkpoint at trajectory 5: 5 is redone
    g = read_group(ens)
    assert g["trajectory"].tolist() == [2] and g["t2E"].shape == (1, 3)
    truncate_group(ens.parent / "ensemble_c0.h5", 0)
    assert read_group(ens)["trajectory"].tolist() == []
    truncate_group(ens, 3, group="absent")  # no group: nothing to do


def test_changed_flow_times_are_refused_and_offline_has_its_own_group(ens):
    append_group_rows(ens, [_row(2, 1.0)])
    t, rec = _row(5, 1.0)
    rec["flow"]["t"] = [0.0, 0.2, 0.4]
    with pytest.raises(InputError, match="Keep measure.flow as it was"):
        append_group_rows(ens, [(t, rec)])
    assert read_group(ens)["trajectory"].tolist() == [2]
    write_hdf5_group(ens, [_row(3, 5.0), _row(7, 6.0)])
    write_hdf5_group(ens, [_row(3, 5.0)])  # replaced, the on-the-fly group untouched
    assert read_group(ens, am.OFFLINE_GROUP)["trajectory"].tolist() == [3]
    assert read_group(ens)["trajectory"].tolist() == [2]


DECK = """\
theory: {name: su3, beta: 5.7, action: wilson}
lattice: {shape: [4, 4, 2, 2]}
sampler: {steps: 3}
run: {seed: 3, thermalization: 1, trajectories: 24, save_every: 0, checkpoint_every: 6}
output: {directory: out, progress: false, formats: [hdf5]}
measure:
  every: 1
  flow: {t_max: 0.15, eps: 0.05, scales: false, charge_times: [0.1]}
  polyakov: true
"""


def _trivhmc(deck: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "trivhmc"), "run", str(deck), "--no-progress"]


def _jsonl(path: Path) -> dict[int, dict]:
    return {r["trajectory"]: r for r in map(json.loads, path.read_text().splitlines())}


def _check_group_equals_lines(g: dict, lines: dict[int, dict], n: int) -> None:
    """The first ``n`` rows of the group ``g`` are the JSON lines, bit for bit."""
    assert g["trajectory"][:n].tolist() == sorted(lines)[:n]
    for i, t in enumerate(g["trajectory"][:n].tolist()):
        obs = lines[t]["observables"]
        assert g["Q@t=0.1"][i] == obs["Q@t=0.1"][0]
        assert g["polyakov_re"][i] == obs["polyakov_re"][0]
        assert g["t2E"][i].tolist() == lines[t]["flow"]["t2E"][0]


def test_killed_run_keeps_its_measurements_and_resume_completes_them(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "deck.yaml").write_text(DECK)
    done = subprocess.run(_trivhmc(ref / "deck.yaml"), env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "killed"
    run.mkdir()
    (run / "deck.yaml").write_text(DECK)
    proc = subprocess.Popen(
        _trivhmc(run / "deck.yaml"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    jl = run / "out" / am.MEASUREMENTS
    deadline = time.time() + 240
    try:  # kill after the first checkpoint (6) while measurements keep coming
        while time.time() < deadline and proc.poll() is None:
            if jl.exists() and len(jl.read_text().splitlines()) >= 9:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    ens = run / "out" / "ensemble_c0.h5"
    # every committed row is there and equal to its JSON line; a line is written after its
    # row's commit, so the group may hold one row more than the lines
    kept = _jsonl(jl)
    g = read_group(ens)
    n = len(kept)
    assert n >= 9 and len(g["trajectory"]) in (n, n + 1)
    _check_group_equals_lines(g, kept, n)
    resumed = subprocess.run(_trivhmc(run / "deck.yaml"), env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = read_group(ens)
    assert final["trajectory"].tolist() == list(range(1, 25))
    _check_group_equals_lines(final, _jsonl(jl), 24)
    want = read_group(ref / "out" / "ensemble_c0.h5")
    assert set(final) == set(want)
    for k in want:
        np.testing.assert_array_equal(final[k], want[k])


MPI_DECK = """\
theory: {name: su3, beta: 5.7, action: wilson}
lattice: {shape: [4, 4, 2, 4]}
sampler: {steps: 3}
run: {seed: 5, thermalization: 1, trajectories: 4, chains: 2, save_every: 0}
output: {directory: out, progress: false, formats: [hdf5]}
measure:
  every: 2
  flow: {t_max: 0.15, eps: 0.05, scales: false, charge_times: [0.1]}
  wilson_loops: {r_max: 1, t_max: 2}
  polyakov: true
"""


@pytest.fixture(scope="module")
def one_rank_groups(tmp_path_factory):
    d = tmp_path_factory.mktemp("one")
    (d / "deck.yaml").write_text(MPI_DECK)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(_trivhmc(d / "deck.yaml"), env=env, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return [read_group(d / "out" / f"ensemble_c{c}.h5") for c in (0, 1)]


@pytest.mark.parametrize(
    "nranks, layout",
    [(2, "parallel.grid=[1,1,1,2]"), (4, "parallel.grid=[1,1,1,2]"), (2, "parallel.replicas=2")],
)
def test_groups_do_not_depend_on_the_process_layout(one_rank_groups, tmp_path, nranks, layout):
    """The SU(3) run (periodic, no fermions) split over the time axis (2 ranks), over time
    and replicas (4 ranks: 2 groups of 2) and over replicas: every chain's group is bit for
    bit the single-rank one (Wilson loops included: exact lattice sums)."""
    from tests.mpi_launch import mpiexec

    (tmp_path / "deck.yaml").write_text(MPI_DECK)
    sets = ["--set", layout] + (["--set", "parallel.replicas=2"] if nranks == 4 else [])
    cmd = [mpiexec(), "-n", str(nranks), *_trivhmc(tmp_path / "deck.yaml"), *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for c in (0, 1):
        got = read_group(tmp_path / "out" / f"ensemble_c{c}.h5")
        want = one_rank_groups[c]
        assert got["trajectory"].tolist() == [1, 3]
        assert set(got) == set(want) and len(want) > 6
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
