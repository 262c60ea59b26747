"""Smoke test of ``benchmarks/bench_nthmc.py --theory schwinger`` at tiny settings: keeps the
HMC / NTHMC-gauge / NTHMC-full comparison runnable and checks its rows. Not a performance
check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_schwinger_run(capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_nthmc", ROOT / "benchmarks" / "bench_nthmc.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = "--theory schwinger --L 4 --beta 2 --kappa 0.2 --batch 2 --therm 2 --train-configs 2"
    args += " --val 2 --train-steps 2 --train-batch 2 --traj-nthmc 2 --layers 2 --hidden 2"
    mod.main(args.split())
    out = capsys.readouterr().out
    for name in ("hmc", "nthmc_gauge", "nthmc_full"):
        rows = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert len(rows) == 2, (name, out)  # force row and sampling row
    assert "total process CPU time" in out
