"""Smoke test of benchmarks/bench_nthmc.py at tiny settings (single and two time scales):
keeps the benchmark runnable and checks the table rows, the exact values and the verdict line.
Not a performance check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_nthmc", ROOT / "benchmarks" / "bench_nthmc.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("extra", [[], ["--mts-inner", "2"]])
def test_tiny_run(bench, capsys, extra):
    tiny = [
        "--quick",
        "--batch",
        "2",
        "--therm",
        "4",
        "--traj",
        "6",
        "--traj-nthmc",
        "2",
        "--train-steps",
        "2",
        "--train-configs",
        "2",
        "--val",
        "2",
        "--tune-traj",
        "2",
    ]
    bench.main(tiny + extra)
    out = capsys.readouterr().out
    assert "# exact: plaquette 0.80999" in out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("hmc ", "nthmc "))]
    assert rows == ["hmc", "nthmc"]
    assert "NTHMC/HMC: wall per trajectory" in out
    assert ("break-even" in out) and ("training" in out)
