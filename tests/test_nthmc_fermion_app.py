"""NTHMC on the Schwinger model from a deck: a plain pseudofermion-HMC run writes HDF5
ensembles, ``trivhmc train`` with ``architecture: schwinger_nthmc, loss: force_norm`` trains on
the full force (gauge + pseudofermion + log-det; the default ``force_norm.fermion_force:
true``), and ``sampler: trivialized_hmc`` runs the stored model; clear errors for losses the
NTHMC flow does not train with."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.errors import InputError

DECK = """\
theory:   {name: schwinger, beta: 2.0, kappa: 0.2}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 4}
run:      {seed: 3, thermalization: 1, trajectories: 4, chains: 2, save_every: 2}
output:   {directory: runs/hmc, formats: [hdf5], progress: false}
train:    {architecture: schwinger_nthmc, options: {hidden: [2], n_layers: 4}, loss: force_norm,
           steps: 2, batch: 2, lr: 0.01,
           configurations: [runs/hmc/ensemble_c0.h5], validation: [runs/hmc/ensemble_c1.h5],
           force_norm: {validate_every: 1}, model_name: schw_nthmc}
"""


def test_train_on_full_force_then_run(tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK)
    assert main(["run", str(deck)]) == 0
    assert main(["train", str(deck), "--no-progress"]) == 0
    folder = tmp_path / "models" / "schw_nthmc"
    (version,) = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    card = json.loads((folder / version / "card.json").read_text())
    assert card["train_config"]["force_norm"]["fermion_force"] is True
    # the differentiable pseudofermion solves ran in every step
    assert all(h["cg_iterations"] > 0 for h in card["history"])
    run = [
        "run",
        str(deck),
        "--set",
        "sampler.name=trivialized_hmc",
        "--set",
        f"sampler.flow={{model: 'schw_nthmc@{version}'}}",
        "--set",
        "output.directory=runs/nthmc",
        "--set",
        "run.trajectories=1",
    ]
    assert main(run) == 0
    recs = [json.loads(x) for x in (tmp_path / "runs/nthmc/records.jsonl").read_text().splitlines()]
    assert recs and all(len(r["dH"]) == 2 for r in recs)


def test_nthmc_schwinger_refuses_other_losses():
    from app.deck import loads_deck
    from app.training import train

    deck = loads_deck(DECK.replace("loss: force_norm", "loss: reverse_kl"))
    with pytest.raises(InputError, match="schwinger_nthmc trains with force_norm"):
        train(deck, progress=False)
    deck = loads_deck(DECK.replace("steps: 2,", "steps: 2, target_beta: 1.5,"))
    with pytest.raises(InputError, match="without target_beta"):
        train(deck, progress=False)
