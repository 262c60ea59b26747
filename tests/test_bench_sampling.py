"""Smoke test of benchmarks/bench_sampling.py: tiny settings, every sampler, save and reload.

Not a performance check (the numbers are meaningless at this size): it keeps the headline
benchmark runnable, checks that the table has one column per sampler, that the exact U(1)
values are printed, and that a flow saved to the registry with ``--save-model`` is reloaded by
``--model`` with its training time taken from the model card.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_sampling", ROOT / "benchmarks" / "bench_sampling.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--quick", "--batch", "2", "--traj", "6", "--therm", "4", "--eval-batch", "8"]


def test_u1_all_samplers_then_reload(bench, tmp_path, capsys):
    models = str(tmp_path / "models")
    bench.main(
        ["--cases", "u1", *TINY, "--train-steps", "3", "--save-model", "tiny", "--models", models]
    )
    out = capsys.readouterr().out
    assert "| | plain HMC | trivialized HMC | flow Metropolis |" in out
    assert re.search(r"\| <plaquette> \(exact 0\.80\d+\) \|", out)
    assert "exact KL" in out
    ref = re.search(r"saved (tiny@[0-9a-f]+)", out).group(1)
    bench.main(["--cases", "u1", *TINY, "--samplers", "fm", "--model", ref, "--models", models])
    out = capsys.readouterr().out
    assert f"flow {ref}" in out
    assert "| | flow Metropolis |" in out
    assert "flow training (one-off): 3 steps" in out


def test_phi4_hmc_only_needs_no_flow(bench, capsys):
    bench.main(["--cases", "phi4", *TINY, "--samplers", "hmc"])
    out = capsys.readouterr().out
    assert "| | plain HMC |" in out
    assert "tau_int(chi)" in out
    assert "training" not in out


def test_bad_model_reference_fails_early(bench, tmp_path):
    from app.registry import RegistryError

    with pytest.raises(RegistryError):
        bench.main(["--cases", "u1", *TINY, "--model", "nope", "--models", str(tmp_path)])


def test_md_stiffness_table(bench, tmp_path, capsys):
    """benchmarks/bench_md_stiffness.py on a registry flow: one row per step count, and plain
    HMC's |dH| falls with the step size (second-order integrator)."""
    models = str(tmp_path / "models")
    bench.main(
        ["--cases", "u1", *TINY, "--train-steps", "2", "--samplers", "hmc", "triv"]
        + ["--steps-triv", "3", "--save-model", "stiff", "--models", models]
    )
    out = capsys.readouterr().out
    assert re.search(r"\| Omelyan steps \(tau = 1\) \| \d+ \| 3 \|", out)  # fixed, not tuned
    ref = re.search(r"saved (stiff@[0-9a-f]+)", out).group(1)
    spec = importlib.util.spec_from_file_location(
        "bench_md_stiffness", ROOT / "benchmarks" / "bench_md_stiffness.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    force = importlib.util.spec_from_file_location(
        "bench_flow_force", ROOT / "benchmarks" / "bench_flow_force.py"
    )
    fmod = importlib.util.module_from_spec(force)
    force.loader.exec_module(fmod)
    fmod.main(["--model", ref, "--models", models, "--batches", "1,3", "--repeat", "2"])
    out = capsys.readouterr().out
    assert len(re.findall(r"^\| [13] \| \S+ \| \S+ \| \S+ \|$", out, re.M)) == 2
    mod.main(
        ["--model", ref, "--models", models, "--steps", "2,16", "--batch", "2"]
        + ["--traj", "1", "--therm", "8"]
    )
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if re.match(r"\| (2|16) \|", line)]
    assert len(rows) == 2
    dh_plain = [float(r[3]) for r in rows]
    assert dh_plain[1] < dh_plain[0] / 4
    assert "trivialized rms" in out
