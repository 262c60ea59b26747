"""The NTHMC time-scale split from a deck: ``sampler.levels`` with ``flow_correction`` (outer)
and ``<term>_plain`` (inner) runs trivialized HMC on
:class:`kernels.samplers.nthmc.FlowSplitTheory`; the split's forces are those of its action
(small dH at small steps, large steps give larger dH), and wrong split names are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main

DECK = """\
theory:   {name: schwinger, beta: 2.0, kappa: 0.2}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, levels: [{terms: [fermion], steps: 3}, {terms: [gauge], steps: 2}]}
run:      {seed: 5, thermalization: 1, trajectories: 4, chains: 2, save_every: 2}
output:   {directory: runs/hmc, formats: [hdf5], progress: false}
train:    {architecture: schwinger_nthmc, options: {hidden: [2], n_layers: 4}, loss: force_norm,
           steps: 2, batch: 2, lr: 0.05,
           configurations: [runs/hmc/ensemble_c0.h5], validation: [runs/hmc/ensemble_c1.h5],
           force_norm: {validate_every: 1}, model_name: schw_split}
"""


def _run(deck, version, out, levels):
    args = [
        "run",
        str(deck),
        "--set",
        "sampler.name=trivialized_hmc",
        "--set",
        f"sampler.flow={{model: 'schw_split@{version}'}}",
        "--set",
        f"output.directory={out}",
        "--set",
        "run.trajectories=3",
        "--set",
        f"sampler.levels={levels}",
    ]
    return main(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    deck = d / "deck.yaml"
    deck.write_text(DECK)
    assert main(["run", str(deck)]) == 0
    assert main(["train", str(deck), "--no-progress"]) == 0
    (version,) = [p.name for p in (d / "models" / "schw_split").iterdir() if p.name[0] != "."]
    return deck, version


def _dh(path):
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return np.array([r["dH"] for r in recs if not r["thermalization"]]).ravel()


def test_split_levels_run_and_conserve_energy(trained, capsys):
    deck, version = trained
    root = deck.parent
    fine = "[{terms: [flow_correction], steps: 8}, {terms: [gauge_plain], steps: 2}]"
    coarse = "[{terms: [flow_correction], steps: 2}, {terms: [gauge_plain], steps: 1}]"
    assert _run(deck, version, "runs/fine", fine) == 0
    assert _run(deck, version, "runs/coarse", coarse) == 0
    dh_fine, dh_coarse = (
        _dh(root / "runs/fine/records.jsonl"),
        _dh(root / "runs/coarse/records.jsonl"),
    )
    # a force that is not the split action's gradient would not conserve H at small steps
    assert np.abs(dh_fine).max() < 0.05
    assert np.abs(dh_coarse).mean() > 4 * np.abs(dh_fine).mean()
    capsys.readouterr()


def test_wrong_split_names_are_refused(trained, capsys):
    deck, version = trained
    bad = "[{terms: [flow_correction], steps: 2}, {terms: [photon_plain], steps: 2}]"
    assert _run(deck, version, "runs/bad", bad) == 2
    err = capsys.readouterr().err
    assert "sampler.levels" in err and "photon" in err
