"""SU(3) NTHMC through the application: a plain-HMC run writes HDF5 ensembles and ILDG and
NERSC files; ``trivhmc train`` with ``architecture: su3_nthmc``, ``loss: force_matching`` and
``target_beta`` reads all three formats (training: HDF5 + ILDG, held-out validation: NERSC),
stores the model with the coupling it was trained at and its target; trivialized HMC runs it
on a doubled lattice. Bad settings are clear deck errors."""

from __future__ import annotations

import json

import h5py
import pytest

from app.cli import main
from app.deck import DeckError, loads_deck

DECK = """\
theory:   {name: su3, beta: 5.0, action: wilson}
lattice:  {shape: [2, 2, 2, 2]}
sampler:  {name: hmc, steps: 4}
run:      {seed: 5, thermalization: 1, trajectories: 4, chains: 2, save_every: 2}
output:   {directory: runs/hmc, formats: [hdf5, ildg, nersc], progress: false}
train:    {architecture: su3_nthmc, options: {n_layers: 2, hidden: [2], kernel_size: 1},
           loss: force_matching, target_beta: 4.0, steps: 3, batch: 2, lr: 0.01,
           lr_schedule: constant, configurations: CONFIGS, validation: VALIDATION,
           force_norm: {validate_every: 1}, model_name: nthmc_su3}
"""


def test_force_matching_from_hdf5_ildg_nersc_then_run_on_2L(tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK.replace("CONFIGS", "[later.h5]").replace("VALIDATION", "[]"))
    assert main(["run", str(deck)]) == 0
    cfgs = tmp_path / "runs" / "hmc" / "configs"
    lime = sorted(p.relative_to(tmp_path) for p in cfgs.glob("*_c1_*.lime"))
    nersc = sorted(p.relative_to(tmp_path) for p in cfgs.glob("*_c1_*.nersc"))
    assert len(lime) == 2 and len(nersc) == 2
    train = f"[runs/hmc/ensemble_c0.h5, {lime[0]}, {lime[1]}]"
    deck.write_text(DECK.replace("CONFIGS", train).replace("VALIDATION", f"[{nersc[1]}]"))
    assert main(["train", str(deck), "--no-progress"]) == 0
    folder = tmp_path / "models" / "nthmc_su3"
    (version,) = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    card = json.loads((folder / version / "card.json").read_text())
    assert card["lattice"] == [2, 2, 2, 2] and card["couplings"]["beta"] == 5.0
    assert card["architecture"]["builder"] == "kernels.flows.nthmc_su3:su3_nthmc_flow"
    assert card["train_config"]["target_beta"] == 4.0
    hist = card["history"]
    assert len(hist) == 3 and all("val_loss" in h for h in hist)
    ref = f"nthmc_su3@{version}"
    run = [
        "run",
        str(deck),
        "--set",
        "sampler.name=trivialized_hmc",
        "--set",
        f"sampler.flow={{model: '{ref}'}}",
        "--set",
        "lattice.shape=[4, 2, 2, 2]",
        "--set",
        "output.directory=runs/nthmc",
        "--set",
        "output.formats=[hdf5]",
        "--set",
        "run.trajectories=2",
    ]
    assert main(run) == 0
    with h5py.File(tmp_path / "runs" / "nthmc" / "ensemble_c0.h5", "r") as f:
        assert f["configs"].shape[1:] == (4, 4, 2, 2, 2, 3, 3)
        assert f.attrs["flow_hash"].startswith(version)


def test_target_beta_deck_errors():
    deck = DECK.replace("CONFIGS", "[a.h5]").replace("VALIDATION", "[]")
    assert loads_deck(deck).train.target_beta == 4.0
    with pytest.raises(DeckError, match="target_beta needs loss force_matching"):
        loads_deck(deck.replace("loss: force_matching", "loss: reverse_kl"))
    with pytest.raises(DeckError, match="target_beta"):
        loads_deck(deck.replace("target_beta: 4.0", "target_beta: -1.0"))
