"""The `trivhmc` command line through `main([...])`: subcommands and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import app.commands.train as train_cmd
from app.cli import COMMANDS, main
from app.errors import InputError, NotAvailableError
from app.progress import STATUS_INCOMPLETE, write_progress

REPO = Path(__file__).resolve().parent.parent

DECK = """\
theory: {name: u1, beta: 2.0}
lattice: {shape: [8, 8]}
run: {seed: 3, thermalization: 10, trajectories: 40}
output: {directory: out}
"""


@pytest.fixture
def deck(tmp_path) -> Path:
    p = tmp_path / "deck.yaml"
    p.write_text(DECK)
    return p


def test_help_version_usage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["--version"]) == 0
    assert "trivhmc" in capsys.readouterr().out
    assert main([]) == 2  # no command
    assert main(["frobnicate"]) == 2
    assert main(["validate"]) == 2  # missing deck
    assert main(["analyze", "--help"]) == 0
    assert "--skip" in capsys.readouterr().out


def test_validate(deck, capsys):
    assert main(["validate", str(deck)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "u1 (beta=2.0) on 8x8" in out and "10 + 40 trajectories" in out
    assert main(["validate", str(deck), "--ranks", "4"]) == 0
    assert "process grid [2, 2]" in capsys.readouterr().out
    assert main(["validate", str(deck), "--ranks", "3"]) == 4  # LayoutError
    assert "on 3 rank(s)" in capsys.readouterr().err
    assert main(["validate", str(deck), "--print", "--set", "run.seed=11"]) == 0
    out = capsys.readouterr().out
    assert "seed: 11" in out and "integrator: omelyan" in out
    assert main(["validate", str(deck), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["trajectories"] == 40


def test_validate_ranks_must_be_positive_and_apply_to_print(deck, capsys):
    """`--ranks 0` was a layout error naming "1 ranks"; `--print`/`--json` ignored --ranks."""
    for bad in ("0", "-4"):
        assert main(["validate", str(deck), "--ranks", bad]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"trivhmc validate: error: --ranks must be >= 1 (got {bad})"
    for fmt in ("--print", "--json"):
        assert main(["validate", str(deck), fmt, "--ranks", "3"]) == 4
        captured = capsys.readouterr()
        assert captured.out == "" and "on 3 rank(s)" in captured.err
        assert main(["validate", str(deck), fmt, "--ranks", "4"]) == 0
        assert "trajectories" in capsys.readouterr().out


def test_validate_missing_flow_model_is_exit_7(tmp_path, monkeypatch, capsys):
    """A flow model that is not in the registry was "valid" (the run then exited 7); one
    that the deck's own train section stores is a warning to train it first."""
    monkeypatch.delenv("TRIVHMC_MODELS", raising=False)
    deck = tmp_path / "phi4_trivialized.yaml"
    deck.write_text((REPO / "inputs" / "phi4_trivialized.yaml").read_text())
    for extra in ([], ["--print"], ["--json"]):
        assert main(["validate", str(deck), "--set", "sampler.flow.model=nosuch", *extra]) == 7
        captured = capsys.readouterr()
        assert captured.out == "" and "no model 'nosuch' in the registry" in captured.err
    assert main(["validate", str(deck)]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out
    assert "warning: sampler.flow.model: no model 'phi4_l12'" in captured.err
    assert "phi4_l12" in captured.err and "trivhmc train" in captured.err


L2HMC_DECK = """\
theory:  {name: u1, beta: 1.5}
lattice: {shape: [4, 4]}
sampler: {name: l2hmc, model: tiny, leapfrog_layers: 2}
run:     {seed: 5, thermalization: 2, trajectories: 4, chains: 2}
output:  {directory: out, progress: false}
train:   {objective: l2hmc, options: {n_layers: 2, hidden: [2], step_size: 0.25},
          steps: 1, batch: 2, model_name: tiny}
"""


def test_validate_and_run_check_the_l2hmc_model(tmp_path, monkeypatch, capsys):
    """An l2hmc deck's sampler.model was not checked: validate said "valid" and the job's run
    failed in the queue (exit 2). It is checked like a flow model: exit 7 naming the model and
    the registry (train.registry, else $TRIVHMC_MODELS, else models/ next to the deck), a
    warning in validate when the deck's own l2hmc train section stores it."""
    monkeypatch.delenv("TRIVHMC_MODELS", raising=False)
    deck = tmp_path / "deck.yaml"
    deck.write_text(L2HMC_DECK)
    registry = tmp_path / "models"
    missing = f"sampler.model: no model 'nosuch' in the registry {registry}"
    for extra in ([], ["--print"], ["--json"]):
        assert main(["validate", str(deck), "--set", "sampler.model=nosuch", *extra]) == 7
        captured = capsys.readouterr()
        assert captured.out == "" and missing in captured.err
        assert "train.model_name is 'nosuch'" in captured.err
    # `trivhmc run` stops with the same message before it writes anything
    assert main(["run", str(deck), "--set", "sampler.model=nosuch"]) == 7
    assert missing in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deck.yaml"]
    # pinned to a version: the train section cannot make that one
    assert main(["validate", str(deck), "--set", "sampler.model=tiny@abc"]) == 7
    assert "sampler.model" in capsys.readouterr().err
    # a flow train section makes a flow, not this L2HMC model
    flow_train = "train={architecture: u1_stout, model_name: tiny}"
    assert main(["validate", str(deck), "--set", flow_train]) == 7
    assert "train.objective is l2hmc" in capsys.readouterr().err
    # without a train section the registry is $TRIVHMC_MODELS, else models/ next to the deck
    bare = tmp_path / "bare.yaml"
    bare.write_text(L2HMC_DECK.split("train:")[0])
    assert main(["validate", str(bare)]) == 7
    err = capsys.readouterr().err
    assert f"sampler.model: no model 'tiny' in the registry {registry}" in err
    assert "$TRIVHMC_MODELS" in err
    # the deck's own train section stores it: a warning to train it first
    assert main(["validate", str(deck)]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out
    assert f"warning: sampler.model: no model 'tiny' in the registry {registry} yet" in (
        captured.err
    )
    assert f"trivhmc train {deck}" in captured.err
    # present: no warning, also pinned, also found through $TRIVHMC_MODELS
    assert main(["train", str(deck), "--no-progress"]) == 0
    (version,) = [p.name for p in (registry / "tiny").iterdir() if not p.name.startswith(".")]
    capsys.readouterr()
    for cmd in (
        ["validate", str(deck)],
        ["validate", str(deck), "--set", f"sampler.model=tiny@{version[:8]}"],
    ):
        assert main(cmd) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and "valid" in captured.out
    assert main(["validate", str(bare)]) == 0  # models/ next to the deck
    monkeypatch.setenv("TRIVHMC_MODELS", str(registry))
    monkeypatch.chdir(tmp_path.parent)
    other = tmp_path / "elsewhere" / "bare.yaml"
    other.parent.mkdir()
    other.write_text(bare.read_text())
    assert main(["validate", str(other)]) == 0
    assert capsys.readouterr().err == ""


def test_ctrl_c_during_start_up_is_one_line(deck, tmp_path):
    """Ctrl-C while `import torch` runs (seconds at start-up) printed a KeyboardInterrupt
    traceback: app.cli imported parallel (and torch) at its top, outside the handler. A
    stand-in torch that sends SIGINT to its own process makes the moment exact."""
    stub = tmp_path / "stub" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n"
    )
    exe = Path(sys.executable).parent / "trivhmc"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub")}
    proc = subprocess.run(
        [str(exe), "measure", str(deck)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "trivhmc measure: interrupted\n"
    # the console entry point itself imports nothing heavy
    code = "import sys, app.cli; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_validate_bad_deck_exit_2_one_message(deck, capsys):
    deck.write_text(DECK.replace("beta: 2.0", "beta: 2.0, betta: 1"))
    assert main(["validate", str(deck)]) == 2
    err = capsys.readouterr().err
    expected = "line 1: theory.betta: unknown key 'betta' for theory u1; did you mean 'beta'?"
    assert f"{deck}, {expected}" in err
    assert "Traceback" not in err
    assert main(["validate", str(deck.parent / "missing.yaml")]) == 2
    assert "cannot read deck" in capsys.readouterr().err
    assert main(["validate", str(deck), "--set", "run.sead=1"]) == 2
    assert "--set run.sead=1" in capsys.readouterr().err


def test_every_input_deck_via_cli(capsys):
    for p in sorted((REPO / "inputs").glob("*.yaml")):
        assert main(["validate", str(p)]) == 0, capsys.readouterr().err


def test_jobscript(deck, tmp_path, capsys):
    assert (
        main(["jobscript", "--system", "local", str(deck), "--ranks-per-node", "2", "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and "NRANKS=2 " in out
    assert not (tmp_path / "deck.local.sh").exists()
    args = ["jobscript", "--system", "polaris", str(deck), "--nodes", "1", "--account", "X"]
    assert main(args + ["--set", "parallel.device=cuda"]) == 0
    script = tmp_path / "deck.polaris.pbs"
    assert script.exists() and os.access(script, os.X_OK)
    text = script.read_text()
    assert "#PBS -l select=1:system=polaris" in text and f"SCRIPT={script}" in text
    assert "SETS=(--set parallel.device=cuda)" in text
    assert "submit with: qsub" in capsys.readouterr().out
    out_path = tmp_path / "sub" / "job.slurm"
    (tmp_path / "sub").mkdir()  # an --output directory must exist (test_jobscript_output_path)
    # a CPU deck for a GPU system: an error naming the fix, a warning with --force
    assert main(["jobscript", "--system", "frontier", str(deck), "-o", str(out_path)]) == 2
    assert "--force" in capsys.readouterr().err and not out_path.exists()
    cmd = ["jobscript", "--system", "frontier", str(deck), "-o", str(out_path), "--force"]
    assert main(cmd) == 0
    assert "#SBATCH -N 1" in out_path.read_text()
    err = capsys.readouterr().err
    assert "warning: the deck runs on parallel.device=cpu" in err
    # a rank count the deck's grid does not fit -> exit 4 (LayoutError) with the reason
    deck.write_text(DECK.replace("lattice:", "parallel: {grid: [2, 2]}\nlattice:"))
    assert main(["jobscript", "--system", "aurora", str(deck), "--nodes", "1", "--dry-run"]) == 4
    assert "needs 4" in capsys.readouterr().err
    assert (
        main(["jobscript", "--system", "aurora", str(deck), "--walltime", "1h", "--dry-run"]) == 2
    )
    assert main(["jobscript", "--system", "summit", str(deck)]) == 2  # argparse choices


def test_analyze(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for t in range(60):
        x = 0.7 + 0.01 * ((t * 7) % 5 - 2)
        lines.append(
            json.dumps(
                {
                    "trajectory": t,
                    "thermalization": t < 10,
                    "dH": [0.1],
                    "accepted": [t % 4 != 0],
                    "exp_minus_dH": [0.9],
                    "step_size": 0.1,
                    "n_steps": 10,
                    "wall_time": 0.01,
                    "observables": {"plaquette": [x]},
                }
            )
        )
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["analyze", str(run)]) == 0
    out = capsys.readouterr().out
    assert "plaquette" in out and "acceptance:   0.7600" in out
    assert main(["analyze", str(run), "--json", "--skip", "10"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert set(j) >= {"observables", "acceptance", "exp_minus_dH"}
    assert set(j["observables"]["plaquette"]) >= {"mean", "error", "tau_int", "tau_int_error"}
    assert j["trajectories"] == 40 and j["acceptance"] == pytest.approx(0.75)
    assert j["exp_minus_dH"] == pytest.approx(0.9)
    assert (
        main(["analyze", str(run), "--plot", str(tmp_path / "png"), "--observable", "plaquette"])
        == 0
    )
    assert (tmp_path / "png" / "plaquette.png").exists()
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert main(["analyze", str(run), "--observable", "nope"]) == 2
    assert "unknown observable" in capsys.readouterr().err


def test_run_status_exit_codes(deck, tmp_path, capsys):
    assert main(["run", "--status", str(deck)]) == STATUS_INCOMPLETE == 3
    assert json.loads(capsys.readouterr().out) == {
        "done": 0,
        "total": 50,
        "complete": False,
        "directory": str(tmp_path / "out"),
    }
    write_progress(tmp_path / "out", 20, 50)
    assert main(["run", "--status", str(deck)]) == 3
    assert json.loads(capsys.readouterr().out)["done"] == 20
    write_progress(tmp_path / "out", 50, 50)
    assert main(["run", "--status", str(deck)]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True
    # more trajectories in the deck: incomplete again
    assert main(["run", "--status", str(deck), "--set", "run.trajectories=100"]) == 3
    (tmp_path / "out" / "progress.json").write_text("{broken")
    assert main(["run", "--status", str(deck)]) == 2


def test_exit_code_mapping(monkeypatch, deck, capsys):
    """0 ok, 2 bad input (message, no traceback), 1 anything else (traceback with --debug)."""

    def raising(exc):
        def f(args):
            raise exc

        return f

    monkeypatch.setattr(train_cmd, "main", raising(InputError("bad file x.lime")))
    assert main(["train", str(deck)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "trivhmc train: error: bad file x.lime"
    monkeypatch.setattr(train_cmd, "main", raising(NotAvailableError("not yet available")))
    assert main(["train", str(deck)]) == 1
    assert "not yet available" in capsys.readouterr().err
    monkeypatch.setattr(train_cmd, "main", raising(RuntimeError("boom")))
    assert main(["train", str(deck)]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "--debug" in err
    assert "Traceback" not in err
    assert main(["--debug", "train", str(deck)]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setattr(train_cmd, "main", lambda args: 0)
    assert main(["train", str(deck)]) == 0
