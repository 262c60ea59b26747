"""`measure:` deck section and `trivhmc measure`: on the fly and offline give the same numbers
for the same configuration; loops/Polyakov agree with the theory's own observables; HDF5
group, ILDG file lists, resume, errors, analyze of the output, 1 vs 2 ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from app.cli import main
from tests.mpi_launch import mpiexec

ROOT = Path(__file__).resolve().parent.parent

DECK = """\
theory: {name: su3, beta: 5.7, action: wilson}
lattice: {shape: [4, 4, 4, 4]}
sampler: {steps: 5}
run: {seed: 2, thermalization: 2, trajectories: 6, save_every: 2, checkpoint_every: 4}
output: {directory: out, progress: false, formats: [hdf5, ildg]}
measure:
  every: 3
  flow: {t_max: 0.6, eps: 0.05, charge_times: [0.3, 0.6]}
  wilson_loops: {r_max: 2, t_max: 2}
  polyakov: true
"""


def lines(path: Path) -> dict[int, dict]:
    out = {}
    for x in path.read_text().splitlines():
        rec = json.loads(x)
        out[rec["trajectory"]] = rec
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    (d / "deck.yaml").write_text(DECK)
    assert main(["run", str(d / "deck.yaml")]) == 0
    return d


def test_on_the_fly_and_offline_agree(run_dir, capsys):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    fly = lines(out / "measurements.jsonl")
    assert sorted(fly) == [2, 5]  # production trajectories 0 and 3 (0-based records)
    assert main(["measure", str(deck)]) == 0
    assert "3 configuration(s) measured" in capsys.readouterr().out
    off = lines(out / "measurements_offline.jsonl")
    assert sorted(off) == [3, 5, 7]  # saved after production trajectories 2, 4, 6
    a, b = fly[5]["observables"], off[5]["observables"]
    assert set(a) == set(b) >= {"t0", "w0", "Q@t=0.3", "Q@t=0.6", "W_R2_T2", "polyakov_abs"}
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-14), k
    assert fly[5]["flow"]["t2E"][0] == pytest.approx(off[5]["flow"]["t2E"][0], rel=1e-12)
    assert len(off[5]["flow"]["t"]) == 13 and off[5]["lattice"] == [4, 4, 4, 4]
    # independent code paths: the theory's observables in records.jsonl
    rec = {r["trajectory"]: r for r in map(json.loads, (out / "records.jsonl").open())}
    obs = rec[5]["observables"]
    assert a["W_R1_T1"][0] == pytest.approx(obs["plaquette_temporal"][0], rel=1e-12)
    assert a["polyakov_re"][0] == pytest.approx(obs["polyakov_re"][0], abs=1e-14)
    # t^2 E grows along the flow; t0 lies inside the flowed range where it is finite
    t2e = np.array(off[5]["flow"]["t2E"][0])
    assert np.all(np.diff(t2e) > 0)
    # the ensemble file got its own groups: offline one row per saved configuration, on the
    # fly one row per measured trajectory (written as they happened)
    with h5py.File(out / "ensemble_c0.h5", "r") as f:
        g = f["measurements_offline"]
        assert list(g["trajectory"][:]) == [3, 5, 7]
        assert g["W_R2_T2"][1] == pytest.approx(b["W_R2_T2"][0], rel=1e-14)
        assert g["t2E"].shape == (3, 13) and g["flow_t"].shape == (13,)
        g = f["measurements"]
        assert list(g["trajectory"][:]) == [2, 5] and g.attrs["committed"] == 2
        assert g["W_R2_T2"][1] == a["W_R2_T2"][0] and g["t0"][0] == fly[2]["observables"]["t0"][0]
        assert g["t2E"][1].tolist() == fly[5]["flow"]["t2E"][0]


def test_ildg_files_and_analyze(run_dir, capsys, tmp_path):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    files = sorted(str(p) for p in (out / "configs").glob("*.lime"))
    assert [Path(f).name for f in files] == [
        "out_c0_000004.lime",
        "out_c0_000006.lime",
        "out_c0_000008.lime",
    ]
    target = tmp_path / "ildg.jsonl"
    assert main(["measure", str(deck), *files, "-o", str(target)]) == 0
    capsys.readouterr()
    got = [json.loads(x) for x in target.read_text().splitlines()]
    assert [g["file"] for g in got] == files
    assert [g["trajectory"] for g in got] == [3, 5, 7]  # named like trivhmc's: count - 1
    off = lines(out / "measurements_offline.jsonl")
    for g, t in zip(got, [3, 5, 7]):  # file n holds record trajectory n - 1
        assert g["observables"]["W_R1_T2"] == pytest.approx(
            off[t]["observables"]["W_R1_T2"], rel=1e-12
        )
    assert main(["analyze", str(out / "measurements_offline.jsonl"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["volume"] == 256
    w11 = j["observables"]["W_R1_T1"]["mean"]
    w12 = j["observables"]["W_R1_T2"]["mean"]
    assert j["derived"]["V_eff[1][1]"]["mean"] == pytest.approx(np.log(w11 / w12), rel=1e-12)
    assert "chi_t@t=0.6" in j["derived"]
    png = tmp_path / "png"
    assert main(["analyze", str(out / "measurements_offline.jsonl"), "--plot", str(png)]) == 0
    assert (png / "flow.png").exists() and (png / "derived.png").exists()


def test_resume_drops_measurements_after_the_checkpoint(run_dir, capsys):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    before = lines(out / "measurements.jsonl")
    with open(out / "measurements.jsonl", "a") as f:
        f.write(json.dumps({"trajectory": 8, "observables": {}}) + "\n")  # after a kill
    assert main(["run", str(deck), "--set", "run.trajectories=9"]) == 0
    capsys.readouterr()
    after = lines(out / "measurements.jsonl")
    assert sorted(after) == [2, 5, 8] and after[5] == before[5]
    assert len((out / "measurements.jsonl").read_text().splitlines()) == 3


def test_measure_errors(tmp_path, capsys):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK.split("measure:")[0])
    assert main(["measure", str(deck)]) == 2
    assert "no `measure:` section" in capsys.readouterr().err
    deck.write_text(DECK)
    assert main(["measure", str(deck)]) == 2
    assert "no saved configurations" in capsys.readouterr().err
    bad = DECK.replace("charge_times: [0.3, 0.6]", "charge_times: [0.33]").replace(
        "r_max: 2", "r_max: 5"
    )
    deck.write_text(bad)
    assert main(["validate", str(deck)]) == 2
    err = capsys.readouterr().err
    assert "measure.flow.charge_times[0]: 0.33 is not a multiple of eps" in err
    assert "loops up to 5 x 2 do not fit" in err
    phi = "theory: {name: phi4, beta: 0.2, lambda: 0.1}\nlattice: {shape: [4, 4]}\n"
    deck.write_text(phi + DECK.split("\n", 2)[2])
    assert main(["validate", str(deck)]) == 2
    assert "measure.flow: flow needs theory su3, not phi4" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["parallel.grid=[1,1,1,2]", "parallel.replicas=2"])
def test_offline_on_two_ranks_equals_one(run_dir, tmp_path, layout):
    deck, out = run_dir / "deck.yaml", run_dir / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    target = tmp_path / "two.jsonl"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "app.cli", "measure", str(deck)]
    cmd += [str(out / "ensemble_c0.h5"), "-o", str(target), "--set", layout]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    two = lines(target)
    one = lines(out / "measurements_offline.jsonl")
    assert set(one) <= set(two)  # the resume test may have saved one more
    for t in one:
        for k, v in one[t]["observables"].items():
            assert two[t]["observables"][k] == pytest.approx(v, rel=1e-12, abs=1e-14), k


def test_phi4_correlators_on_the_fly(tmp_path, capsys):
    deck = tmp_path / "deck.yaml"
    deck.write_text(
        "theory: {name: phi4, beta: 0.2, lambda: 0.1}\nlattice: {shape: [4, 6]}\n"
        "run: {seed: 1, thermalization: 2, trajectories: 6, chains: 2}\n"
        "output: {directory: out, progress: false}\n"
        "measure: {every: 2, correlators: true}\n"
    )
    assert main(["run", str(deck)]) == 0
    capsys.readouterr()
    got = lines(tmp_path / "out" / "measurements.jsonl")
    rec = {r["trajectory"]: r for r in map(json.loads, (tmp_path / "out" / "records.jsonl").open())}
    assert sorted(got) == [2, 4, 6]
    for k in range(2):  # each chain's ensemble file got its column
        with h5py.File(tmp_path / "out" / f"ensemble_c{k}.h5", "r") as f:
            g = f["measurements"]
            assert list(g["trajectory"][:]) == [2, 4, 6]
            assert g["two_point_3"][:].tolist() == [
                got[t]["observables"]["two_point_3"][k] for t in (2, 4, 6)
            ]
    for t, m in got.items():
        names = [f"two_point_{i}" for i in range(6)]
        assert list(m["observables"]) == names
        for n in names:  # the theory's own correlator, both chains
            assert m["observables"][n] == pytest.approx(rec[t]["observables"][n], rel=1e-14)
