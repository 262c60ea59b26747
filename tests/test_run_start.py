"""`run.start` from a file: an ILDG file written by another code (Chroma) and a trivhmc HDF5
ensemble; a file for another lattice or theory is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.io.gauge_stats import plaquette
from app.io.ildg import read_ildg

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "configs"
WEAK = CONFIGS / "weak_field.lime"

SU3 = """\
theory:   {{name: su3, beta: 6.0, action: wilson}}
lattice:  {{shape: {shape}}}
sampler:  {{name: hmc, steps: 4, trajectory_length: 0.02}}
run:      {{seed: 1, thermalization: 0, trajectories: 1, save_every: 0, start: {start}}}
output:   {{directory: out, progress: false}}
"""


@pytest.mark.skipif(not WEAK.exists(), reason="../shared/data/configs is not present")
def test_su3_starts_from_a_chroma_ildg_file(tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(SU3.format(shape="[4, 4, 4, 8]", start=str(WEAK)))
    assert main(["run", str(deck)]) == 0
    (rec,) = [json.loads(x) for x in (tmp_path / "out/records.jsonl").read_text().splitlines()]
    links, _ = read_ildg(WEAK)
    start_plaq = plaquette(links).total
    assert start_plaq == pytest.approx(0.9948041322666998, abs=1e-12)
    # a trajectory of length 0.02 moves the plaquette of the file's field only slightly
    assert rec["observables"]["plaquette"][0] == pytest.approx(start_plaq, abs=2e-3)
    assert rec["observables"]["plaquette"][0] != start_plaq


@pytest.mark.skipif(not WEAK.exists(), reason="../shared/data/configs is not present")
def test_start_file_of_another_lattice_is_refused(tmp_path, capsys):
    deck = tmp_path / "deck.yaml"
    deck.write_text(SU3.format(shape="[4, 4, 4, 4]", start=str(WEAK)))
    assert main(["run", str(deck)]) == 2
    assert "run.start" in capsys.readouterr().err


def test_u1_starts_from_its_own_hdf5_ensemble(tmp_path, capsys):
    u1 = """\
theory:   {name: u1, beta: 1.0}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 4}
run:      {seed: 1, thermalization: 0, trajectories: 2, save_every: 2, start: hot}
output:   {directory: first, progress: false}
"""
    (tmp_path / "a.yaml").write_text(u1)
    assert main(["run", str(tmp_path / "a.yaml")]) == 0
    ens = tmp_path / "first" / "ensemble_c0.h5"
    (tmp_path / "b.yaml").write_text(
        u1.replace("start: hot", f"start: {ens}").replace("directory: first", "directory: second")
    )
    assert main(["run", str(tmp_path / "b.yaml")]) == 0
    phi4 = u1.replace("{name: u1, beta: 1.0}", "{name: phi4, beta: 0.2, lambda: 0.1}")
    (tmp_path / "c.yaml").write_text(
        phi4.replace("start: hot", f"start: {ens}").replace("directory: first", "directory: third")
    )
    assert main(["run", str(tmp_path / "c.yaml")]) == 2
    assert "'u1' ensemble" in capsys.readouterr().err
