"""Smoke test of benchmarks/bench_schwinger.py at tiny settings (plain HMC and flow
Metropolis and joint (U, phi) Metropolis, one table row each; the other samplers are
exercised in tests/test_schwinger*.py); the numbers are meaningless at this size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~30 s on a loaded 2-core machine
def test_bench_schwinger_prints_one_row_per_sampler():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_schwinger.py"), "--L", "4"]
    cmd += ["--chains", "2", "--traj", "3", "--therm", "1", "--train-steps", "2"]
    cmd += ["--train-batch", "2", "--samplers", "hmc,flow_metropolis,joint_metropolis"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln.split()[0] for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
    assert rows == ["sampler", "hmc", "flow_metropolis", "joint_metropolis"]
