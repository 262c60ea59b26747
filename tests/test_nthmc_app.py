"""NTHMC end to end through the application: a plain-HMC run writes HDF5 ensembles,
``trivhmc train`` with ``loss: force_norm`` trains a ``u1_nthmc`` model on them (held-out
validation from another chain's file) and stores it in the registry with the lattice and
coupling it was trained at; ``sampler: trivialized_hmc`` runs it on twice the lattice and at
a larger beta without retraining."""

from __future__ import annotations

import json

import h5py
import pytest

from app.cli import main
from app.deck import DeckError, loads_deck

DECK = """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 6}
run:      {seed: 3, thermalization: 2, trajectories: 6, chains: 3, save_every: 2}
output:   {directory: runs/hmc, formats: [hdf5], progress: false}
train:    {architecture: u1_nthmc, options: {hidden: [2]}, loss: force_norm, steps: 4,
           batch: 2, lr: 0.01, lr_schedule: constant,
           configurations: [runs/hmc/ensemble_c0.h5, runs/hmc/ensemble_c1.h5],
           validation: [runs/hmc/ensemble_c2.h5],
           force_norm: {objective: force_linf, kappa: 1.5, validate_every: 2},
           model_name: nthmc4}
"""


def test_train_force_norm_then_run_at_2L_and_larger_beta(tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK)
    assert main(["run", str(deck)]) == 0
    assert main(["train", str(deck), "--no-progress"]) == 0
    folder = tmp_path / "models" / "nthmc4"
    (version,) = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    card = json.loads((folder / version / "card.json").read_text())
    assert card["lattice"] == [4, 4] and card["couplings"]["beta"] == 2.0  # where trained
    assert card["architecture"]["builder"] == "kernels.flows.nthmc_u1:u1_nthmc_flow"
    assert card["train_config"]["loss"] == "force_norm"
    assert card["train_config"]["force_norm"]["objective"] == "force_linf"
    assert len(card["history"]) == 4 and "val_loss" in card["history"][1]
    ref = f"nthmc4@{version}"
    run = [
        "run",
        str(deck),
        "--set",
        "sampler.name=trivialized_hmc",
        "--set",
        f"sampler.flow={{model: '{ref}'}}",
        "--set",
        "lattice.shape=[8, 8]",
        "--set",
        "theory.beta=3.0",
        "--set",
        "output.directory=runs/nthmc",
        "--set",
        "run.trajectories=3",
    ]
    assert main(run) == 0
    lines = (tmp_path / "runs" / "nthmc" / "records.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 5 and all(len(r["dH"]) == 3 for r in recs)
    with h5py.File(tmp_path / "runs" / "nthmc" / "ensemble_c0.h5", "r") as f:
        assert f["configs"].shape[1:] == (2, 8, 8)
        assert f.attrs["sampler_name"] == "trivialized_hmc"
        assert f.attrs["flow_hash"].startswith(version)


def test_force_norm_needs_configurations_and_valid_settings():
    base = DECK.replace("configurations: [runs/hmc/ensemble_c0.h5, runs/hmc/ensemble_c1.h5],", "")
    with pytest.raises(DeckError, match="force_norm needs configurations"):
        loads_deck(base)
    with pytest.raises(DeckError, match="objective"):
        loads_deck(DECK.replace("objective: force_linf", "objective: kl"))
