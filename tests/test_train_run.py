"""`trivhmc train` then `trivhmc run` with the trained flow: trivialized HMC and flow
Metropolis run from a deck, resume bit for bit, and refuse a model of another theory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.analysis import gamma_method
from app.cli import main
from kernels.theories.u1_exact import mean_plaquette

DECK = """\
theory:   {name: phi4, beta: 0.4, lambda: 0.5}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 6}
run:      {seed: 5, thermalization: 2, trajectories: 10, chains: 2, save_every: 4,
           checkpoint_every: 3}
output:   {directory: runs/hmc, progress: false}
train:    {architecture: phi4_affine, options: {n_pairs: 1, hidden: [2]}, steps: 8, batch: 8,
           lr: 0.01, model_name: tiny}
"""


def records(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["trajectory"]] = r
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    (d / "deck.yaml").write_text(DECK)
    assert main(["train", str(d / "deck.yaml"), "--no-progress"]) == 0
    (version,) = [p.name for p in (d / "models" / "tiny").iterdir() if not p.name.startswith(".")]
    card = json.loads((d / "models" / "tiny" / version / "card.json").read_text())
    assert card["theory"] == "phi4" and card["lattice"] == [4, 4]
    assert len(card["history"]) == 8
    return d, f"tiny@{version}"


@pytest.mark.parametrize("sampler", ["trivialized_hmc", "flow_metropolis"])
def test_flow_samplers_run_and_resume_bitwise(trained, sampler):
    d, ref = trained
    deck = str(d / "deck.yaml")
    common = ["--set", f"sampler.name={sampler}", "--set", f"sampler.flow={{model: '{ref}'}}"]
    full = ["--set", f"output.directory=runs/{sampler}_full"]
    assert main(["run", deck, *common, *full]) == 0
    part = ["--set", f"output.directory=runs/{sampler}_parts"]
    assert main(["run", deck, *common, *part, "--set", "run.trajectories=4"]) == 0
    assert main(["run", deck, *common, *part]) == 0
    a, b = records(d / "runs" / f"{sampler}_full"), records(d / "runs" / f"{sampler}_parts")
    assert sorted(a) == sorted(b) == list(range(12))
    for t in a:
        assert a[t]["dH"] == b[t]["dH"] and a[t]["observables"] == b[t]["observables"], t
    assert any(any(r["accepted"]) for r in a.values())


def test_changed_flow_is_refused(trained):
    d, ref = trained
    deck = str(d / "deck.yaml")
    args = ["--set", "sampler.name=trivialized_hmc", "--set", "output.directory=runs/swap"]
    assert (
        main(
            [
                "run",
                deck,
                *args,
                "--set",
                f"sampler.flow={{model: '{ref}'}}",
                "--set",
                "run.trajectories=2",
            ]
        )
        == 0
    )
    # retrain under the same name: a new version with other weights
    assert main(["train", deck, "--no-progress", "--set", "train.steps=2"]) == 0
    versions = sorted(
        p.name for p in (d / "models" / "tiny").iterdir() if not p.name.startswith(".")
    )
    other = next(v for v in versions if f"tiny@{v}" != ref)
    assert main(["run", deck, *args, "--set", f"sampler.flow={{model: 'tiny@{other}'}}"]) == 2


def test_model_of_another_theory_is_refused(trained, tmp_path, capsys):
    d, ref = trained
    (tmp_path / "deck.yaml").write_text(
        DECK.replace("{name: phi4, beta: 0.4, lambda: 0.5}", "{name: u1, beta: 1.0}").replace(
            "train:    {architecture: phi4_affine", "train:    {architecture: u1_ncp"
        )
    )
    code = main(
        [
            "run",
            str(tmp_path / "deck.yaml"),
            "--set",
            "sampler.name=trivialized_hmc",
            "--set",
            f"sampler.flow={{model: '{ref}', registry: '{d / 'models'}'}}",
        ]
    )
    assert code == 2
    assert "phi4" in capsys.readouterr().err


def test_train_architecture_must_fit_the_theory(tmp_path, capsys):
    (tmp_path / "deck.yaml").write_text(DECK.replace("phi4_affine", "u1_ncp"))
    assert main(["validate", str(tmp_path / "deck.yaml")]) == 2
    assert "train.architecture" in capsys.readouterr().err


def test_u1_sweep_deck_starts_from_the_single_plaquette_map(tmp_path):
    """`architecture: u1_sweep` is initialised by init_marginal before training: with zero
    training steps the saved flow already has a small exact KL (kernels.theories.u1_exact)."""
    import math

    from app.registry import load_model
    from kernels.flows.train import TrainConfig, Trainer
    from kernels.theories.u1 import U1Gauge
    from kernels.theories.u1_exact import log_partition_function
    from parallel import single_rank_grid
    from parallel.rng import SiteRNG

    deck = (
        DECK.replace("{name: phi4, beta: 0.4, lambda: 0.5}", "{name: u1, beta: 2.0}")
        .replace(
            "{architecture: phi4_affine, options: {n_pairs: 1, hidden: [2]}, steps: 8,",
            "{architecture: u1_sweep, options: {n_mix: 4}, steps: 0,",
        )
        .replace("model_name: tiny", "model_name: sweep")
    )
    (tmp_path / "deck.yaml").write_text(deck)
    assert main(["train", str(tmp_path / "deck.yaml"), "--no-progress"]) == 0
    grid = single_rank_grid((4, 4))
    theory = U1Gauge(grid, beta=2.0)
    flow, card = load_model("sweep", grid, theory, root=tmp_path / "models")
    assert card["architecture"]["builder"] == "kernels.flows.u1_sweep:u1_sweep_flow"
    ev = Trainer(flow, theory, TrainConfig(steps=0, batch=8), rng=SiteRNG(3))
    kl = log_partition_function(2.0, (4, 4)) - float(ev.log_weights(512).mean())
    assert kl < math.log(2.28) + 15 * 0.02  # ~ log I_0(2) for the constrained plaquette


def test_u1_flow_metropolis_example_deck(tmp_path, monkeypatch):
    """inputs/u1_flow_metropolis.yaml as shipped (lattice, chains and length reduced): train
    (single-plaquette init of the sweep flow) and run; the plaquette agrees with the exact
    finite-volume value (character expansion) and the charge moves."""
    deck = str(Path(__file__).resolve().parents[1] / "inputs" / "u1_flow_metropolis.yaml")
    small = ["--set", "lattice.shape=[8, 8]", "--set", "run.chains=8"]
    small += ["--set", f"output.directory={tmp_path / 'run'}", "--set", "output.progress=false"]
    small += ["--set", "run.thermalization=10", "--set", "run.trajectories=150"]
    monkeypatch.setenv("TRIVHMC_MODELS", str(tmp_path / "models"))
    assert main(["train", deck, *small, "--no-progress"]) == 0
    assert main(["run", deck, *small]) == 0
    recs = [r for r in records(tmp_path / "run").values() if not r["thermalization"]]
    assert len(recs) == 150
    plaq = np.array([r["observables"]["plaquette"] for r in recs]).T  # (chains, updates)
    q = np.array([r["observables"]["Q_int"] for r in recs]).T
    g = gamma_method(plaq)
    exact = mean_plaquette(6.0, (8, 8))
    assert abs(g.mean - exact) < 4 * g.error + 1e-4, (g.mean, g.error, exact)
    assert np.mean([np.any(np.diff(c) != 0) for c in q]) > 0.5  # topology is not frozen
    assert np.mean([any(r["accepted"]) for r in recs]) > 0.5
