"""Smoke test of benchmarks/bench_l2hmc.py at tiny settings for U(1), the Schwinger model and
SU(3): keeps the benchmark runnable and checks the table rows and the verdict line (and that
the Schwinger rows report CG work). Not a performance check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_l2hmc", ROOT / "benchmarks" / "bench_l2hmc.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("theory", ["u1", "schwinger", "su3"])
def test_tiny_run(bench, capsys, theory):
    tiny = ["--theory", theory, "--L", "2" if theory == "su3" else "4", "--betas", "2"]
    tiny += ["--batch", "2", "--therm", "2", "--traj", "4", "--train-steps", "2"]
    tiny += ["--train-batch", "2", "--layers", "2", "--hidden", "2", "--kappa", "0.2"]
    tiny += ["--q-every", "2", "--q-flow-time", "0.1", "--samplers", "l2hmc", "hmc"]
    bench.main(tiny)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert "l2hmc" in rows and "hmc" in rows and "hmc_tuned" not in rows
    assert rows["l2hmc"][6] == "3"  # nF = layers + 1
    cg = float(rows["l2hmc"][-2])
    assert (cg > 0) == (theory == "schwinger")
    assert "L2HMC training" in out
