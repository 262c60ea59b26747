"""`trivhmc train` with `train.objective: l2hmc`, then `trivhmc run` with `sampler: l2hmc`.

The trained model lands in the registry (card with per-step metrics); an interrupted training
resumes from its checkpoint to the same weights bit for bit; a run resumed from a checkpoint
equals the uninterrupted run bit for bit; 1, 2 and 4 ranks give the same ensemble (accept
decisions equal, dH, log|J| and fields to 1e-12: the sums are exact, but torch's convolution
of a 2x2 local block may round differently in the last bit from that of the whole lattice);
bad decks and wrong models are refused with a message naming the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from mpi_launch import mpiexec

from app.cli import main
from app.deck import loads_deck
from app.errors import InputError

DECK = """\
theory:   {name: u1, beta: 1.5}
lattice:  {shape: [4, 4]}
sampler:  {name: l2hmc, model: tiny, leapfrog_layers: 2}
run:      {seed: 5, thermalization: 2, trajectories: 8, chains: 2, save_every: 4,
           checkpoint_every: 3}
output:   {directory: runs/l2hmc, progress: false}
train:    {objective: l2hmc, options: {n_layers: 2, hidden: [2], step_size: 0.25},
           l2hmc: {plaquette_weight: 0.5, gamma_start: 0.5}, steps: 5, batch: 4, lr: 0.01,
           anneal_steps: 3, model_name: tiny}
"""


def records(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["trajectory"]] = r
    return out


def versions(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "models" / "tiny").iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("l2hmc")
    (d / "deck.yaml").write_text(DECK)
    assert main(["train", str(d / "deck.yaml"), "--no-progress"]) == 0
    (version,) = versions(d)
    card = json.loads((d / "models" / "tiny" / version / "card.json").read_text())
    assert card["theory"] == "u1" and card["lattice"] == [4, 4]
    assert card["architecture"]["builder"] == "kernels.l2hmc.layers:build_l2hmc_model"
    assert card["train_config"]["objective"] == "l2hmc"
    assert len(card["history"]) == 5
    assert {"loss", "acceptance", "dQ_int", "dQ_sin2", "log_jacobian"} <= set(card["history"][0])
    assert not (d / "runs" / "l2hmc" / "l2hmc_train.pt").exists()  # removed once saved
    return d, f"tiny@{version}"


def test_run_and_resume_bitwise(trained):
    d, ref = trained
    deck = str(d / "deck.yaml")
    model = ["--set", f"sampler.model={ref}"]
    assert main(["run", deck, *model, "--set", "output.directory=runs/full"]) == 0
    part = ["--set", "output.directory=runs/parts"]
    assert main(["run", deck, *model, *part, "--set", "run.trajectories=4"]) == 0
    assert main(["run", deck, *model, *part]) == 0
    a, b = records(d / "runs" / "full"), records(d / "runs" / "parts")
    assert sorted(a) == sorted(b) == list(range(10))
    for t in a:
        assert a[t]["dH"] == b[t]["dH"] and a[t]["observables"] == b[t]["observables"], t
    assert any(any(r["accepted"]) for r in a.values())
    for c in (0, 1):
        with (
            h5py.File(d / "runs" / "full" / f"ensemble_c{c}.h5") as f,
            h5py.File(d / "runs" / "parts" / f"ensemble_c{c}.h5") as g,
        ):
            np.testing.assert_array_equal(f["configs"][...], g["configs"][...])


def test_interrupted_training_resumes_bitwise(trained, tmp_path, monkeypatch):
    d, _ = trained
    (tmp_path / "deck.yaml").write_text(DECK.replace("checkpoint_every: 3", "checkpoint_every: 2"))
    from kernels.l2hmc import L2HMCTrainer

    real_step = L2HMCTrainer.step

    def failing_step(self):
        if self.step_count == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self)

    monkeypatch.setattr(L2HMCTrainer, "step", failing_step)
    assert main(["train", str(tmp_path / "deck.yaml"), "--no-progress"]) != 0
    assert (tmp_path / "runs" / "l2hmc" / "l2hmc_train.pt").exists()
    monkeypatch.setattr(L2HMCTrainer, "step", real_step)
    assert main(["train", str(tmp_path / "deck.yaml"), "--no-progress"]) == 0
    (v_ref,), (v_new,) = versions(d), versions(tmp_path)
    ref = torch.load(d / "models" / "tiny" / v_ref / "model.pt", weights_only=True)
    new = torch.load(tmp_path / "models" / "tiny" / v_new / "model.pt", weights_only=True)
    assert ref.keys() == new.keys()
    for k in ref:
        assert torch.equal(ref[k], new[k]), k
    c_ref = json.loads((d / "models" / "tiny" / v_ref / "card.json").read_text())
    c_new = json.loads((tmp_path / "models" / "tiny" / v_new / "card.json").read_text())
    assert [h["loss"] for h in c_ref["history"]] == [h["loss"] for h in c_new["history"]]


def run_ranks(n: int, deck: Path, out: str, ref: str) -> None:
    exe = str(Path(sys.executable).parent / "trivhmc")
    cmd = [mpiexec(), "-n", str(n), exe, "run", str(deck), "--no-progress"]
    cmd += ["--set", f"output.directory={out}", "--set", f"sampler.model={ref}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_same_ensemble_on_1_2_4_ranks(trained):
    d, ref = trained
    for n in (1, 2, 4):
        run_ranks(n, d / "deck.yaml", f"runs/ranks{n}", ref)
    r1 = records(d / "runs" / "ranks1")
    for n in (2, 4):
        rn = records(d / "runs" / f"ranks{n}")
        assert [r1[t]["accepted"] for t in r1] == [rn[t]["accepted"] for t in r1]
        for t in r1:
            for key in ("dH", "log_jacobian"):
                np.testing.assert_allclose(rn[t][key], r1[t][key], rtol=1e-12, atol=1e-13)
        for c in (0, 1):
            with (
                h5py.File(d / "runs" / "ranks1" / f"ensemble_c{c}.h5") as f,
                h5py.File(d / "runs" / f"ranks{n}" / f"ensemble_c{c}.h5") as g,
            ):
                np.testing.assert_allclose(g["configs"][...], f["configs"][...], atol=1e-12)


def test_bad_decks_are_refused(tmp_path):
    with pytest.raises(InputError, match="sampler l2hmc needs model"):
        loads_deck(DECK.replace("model: tiny, ", ""))
    with pytest.raises(InputError, match="does not use an l2hmc model"):
        loads_deck(DECK.replace("name: l2hmc", "name: hmc"))
    with pytest.raises(InputError, match="objective flow needs one"):
        loads_deck(DECK.replace("objective: l2hmc, ", ""))


def test_schwinger_deck_trains_quenched_and_runs_with_fermions(tmp_path, monkeypatch):
    """A Schwinger deck trains a U(1) model on the quenched theory at its beta; the run uses
    it with the pseudofermions (CG work recorded per chain)."""
    monkeypatch.chdir(tmp_path)
    deck = DECK.replace("{name: u1, beta: 1.5}", "{name: schwinger, beta: 2.0, kappa: 0.2}")
    deck = deck.replace("model_name: tiny", "model_name: schw")
    deck = deck.replace("model: tiny", "model: schw")
    (tmp_path / "deck.yaml").write_text(deck.replace("trajectories: 8", "trajectories: 3"))
    assert main(["train", "deck.yaml", "--no-progress"]) == 0
    card = json.loads(next((tmp_path / "models" / "schw").glob("*/card.json")).read_text())
    assert card["theory"] == "u1" and card["couplings"] == {"beta": 2.0}
    assert main(["run", "deck.yaml"]) == 0
    recs = records(tmp_path / "runs" / "l2hmc")
    assert sorted(recs) == [0, 1, 2, 3, 4]
    assert all(n > 5 for n in recs[4]["fermion.cg_iterations"])
    assert recs[4]["n_force"] == 3


SU3_DECK = """\
theory:   {name: su3, beta: 5.0, action: wilson}
lattice:  {shape: [2, 2, 2, 4]}
sampler:  {name: l2hmc, model: su3tiny, leapfrog_layers: 1}
run:      {seed: 3, thermalization: 1, trajectories: 3, chains: 2, save_every: 3,
           checkpoint_every: 3}
output:   {directory: runs/su3, progress: false}
train:    {objective: l2hmc, options: {n_layers: 1, hidden: [2], step_size: 0.1},
           l2hmc: {charge_weight: 0.0, plaquette_weight: 1.0}, steps: 2, batch: 2, lr: 0.01,
           model_name: su3tiny}
"""


def test_su3_deck_trains_and_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deck.yaml").write_text(SU3_DECK)
    assert main(["train", "deck.yaml", "--no-progress"]) == 0
    card = json.loads(next((tmp_path / "models" / "su3tiny").glob("*/card.json")).read_text())
    assert card["theory"] == "su3" and len(card["history"]) == 2
    assert {"loss", "acceptance", "dP", "log_jacobian"} <= set(card["history"][0])
    assert main(["run", "deck.yaml"]) == 0
    recs = records(tmp_path / "runs" / "su3")
    assert sorted(recs) == [0, 1, 2, 3]
    r = recs[3]
    assert r["n_force"] == 2 and all(abs(x) > 0 for x in r["log_jacobian"])


def test_wrong_layers_and_wrong_models_are_refused(trained, capsys):
    d, ref = trained
    deck = str(d / "deck.yaml")
    model = ["--set", f"sampler.model={ref}", "--set", "output.directory=runs/bad"]
    assert main(["run", deck, *model, "--set", "sampler.leapfrog_layers=3"]) != 0
    assert "leapfrog_layers" in capsys.readouterr().err
    # a flow model is not an L2HMC model
    flow_deck = (
        DECK.replace("{name: l2hmc, model: tiny, leapfrog_layers: 2}", "{name: hmc}")
        .replace("objective: l2hmc, ", "architecture: u1_stout, ")
        .replace("options: {n_layers: 2, hidden: [2], step_size: 0.25},", "options: {},")
        .replace("l2hmc: {plaquette_weight: 0.5, gamma_start: 0.5}, ", "")
        .replace("model_name: tiny", "model_name: aflow")
    )
    (d / "flow.yaml").write_text(flow_deck)
    assert main(["train", str(d / "flow.yaml"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["run", deck, *model, "--set", "sampler.model=aflow"]) != 0
    assert "not an L2HMC model" in capsys.readouterr().err
