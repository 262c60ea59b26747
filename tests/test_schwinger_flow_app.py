"""Schwinger flows from a deck (app/schwinger_flows.py): `trivhmc train` of the joint (U, phi)
flow and of a gauge flow (exact marginal), then `trivhmc run` with flow Metropolis (joint and
marginal) and trivialized HMC (pseudofermions), each resumed bit for bit; clear errors for the
combinations that do not exist; inputs/schwinger_flow.yaml is a valid deck."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.deck import load_deck
from app.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

DECK = """\
theory:   {name: schwinger, beta: 1.0, kappa: 0.2, cg_tol: 1.0e-10, n_noise: 1}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 3}
run:      {seed: 5, thermalization: 1, trajectories: 5, chains: 2, save_every: 2,
           checkpoint_every: 2}
output:   {directory: runs/hmc, progress: false}
train:    {architecture: schwinger_joint, steps: 3, batch: 4, lr: 0.01, model_name: joint,
           options: {gauge: {builder: "kernels.flows.u1:u1_ncp_flow",
                             kwargs: {n_layers: 2, hidden: [2]}},
                     pf_layers: 2, pf_hidden: 2, init_kappa: 0.2}}
"""

GAUGE = [
    "--set",
    "train.architecture=schwinger_ncp",
    "--set",
    "train.options={n_layers: 2, hidden: [2]}",
    "--set",
    "train.model_name=gauge",
]


def records(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["trajectory"]] = r
    return out


def only_version(d: Path, name: str) -> str:
    (version,) = [p.name for p in (d / "models" / name).iterdir() if not p.name.startswith(".")]
    return f"{name}@{version}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("schwinger_train")
    (d / "deck.yaml").write_text(DECK)
    assert main(["train", str(d / "deck.yaml"), "--no-progress"]) == 0
    assert main(["train", str(d / "deck.yaml"), "--no-progress", *GAUGE]) == 0
    joint, gauge = only_version(d, "joint"), only_version(d, "gauge")
    for ref in (joint, gauge):
        name, version = ref.split("@")
        card = json.loads((d / "models" / name / version / "card.json").read_text())
        assert card["theory"] == "schwinger" and len(card["history"]) == 3
    return d, joint, gauge


@pytest.mark.parametrize(
    "sampler,model", [("flow_metropolis", 1), ("flow_metropolis", 2), ("trivialized_hmc", 2)]
)
def test_schwinger_flow_samplers_run_and_resume_bitwise(trained, sampler, model):
    d, ref = trained[0], trained[model]
    deck = str(d / "deck.yaml")
    common = ["--set", f"sampler.name={sampler}", "--set", f"sampler.flow={{model: '{ref}'}}"]
    tag = f"{sampler}_{model}"
    assert main(["run", deck, *common, "--set", f"output.directory=runs/{tag}_full"]) == 0
    part = ["--set", f"output.directory=runs/{tag}_parts"]
    assert main(["run", deck, *common, *part, "--set", "run.trajectories=2"]) == 0
    assert main(["run", deck, *common, *part]) == 0
    a, b = records(d / "runs" / f"{tag}_full"), records(d / "runs" / f"{tag}_parts")
    assert sorted(a) == sorted(b) == list(range(6))
    for t in a:
        assert a[t]["dH"] == b[t]["dH"] and a[t]["observables"] == b[t]["observables"], t
    assert any(any(r["accepted"]) for r in a.values())
    assert all("pbp" in r["observables"] for r in a.values())


def test_impossible_schwinger_flow_combinations_are_refused(trained, capsys):
    d, joint, _ = trained
    deck = str(d / "deck.yaml")
    args = [
        "--set",
        "sampler.name=trivialized_hmc",
        "--set",
        f"sampler.flow={{model: '{joint}'}}",
        "--set",
        "output.directory=runs/bad",
    ]
    assert main(["run", deck, *args]) != 0
    assert "trivialized_hmc needs a gauge flow" in capsys.readouterr().err
    fm = [*GAUGE, "--set", "train.loss=force_matching", "--set", "train.configurations=[x.h5]"]
    assert main(["train", deck, "--no-progress", *fm]) != 0
    assert "Schwinger flows train with reverse_kl" in capsys.readouterr().err


def test_schwinger_flow_input_deck_is_valid():
    deck = load_deck(ROOT / "inputs" / "schwinger_flow.yaml")
    assert deck.theory.name == "schwinger" and deck.train.architecture == "schwinger_joint"
    assert deck.sampler.name == "flow_metropolis"
    assert deck.sampler.flow.model == deck.train.model_name
    with pytest.raises(InputError):
        from app.schwinger_flows import check_loss

        check_loss("force_norm")
