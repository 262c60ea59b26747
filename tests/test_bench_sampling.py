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
