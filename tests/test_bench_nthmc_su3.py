"""Smoke test of benchmarks/bench_nthmc_su3.py at tiny settings: keeps the benchmark runnable
and checks its tables. Not a performance check."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run(capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_nthmc_su3", ROOT / "benchmarks" / "bench_nthmc_su3.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tiny = "--L 2 --therm 2 --traj 1 --train-configs 1 --val 1 --train-steps 1 --batch 1"
    tiny += " --train-batch 1 --layers 2 --hidden 2 --kernel 1 --flow-t 0.1"
    mod.main(tiny.split())
    out = capsys.readouterr().out
    # the identity start: |F_6 - F_5.7|^2 = (0.3/6)^2 |F_6|^2 on the validation configuration
    first = re.search(r"validation \|F~ - F_target\|\^2: ([0-9.e-]+) ->", out)
    plain = re.search(r"\| plain dS/dU at beta 6.0 \| ([0-9.]+) \|", out)
    assert first and plain
    assert abs(float(first.group(1)) - (0.05 * float(plain.group(1))) ** 2) < 1e-3 * float(
        first.group(1)
    )
    for row in ("| HMC beta=6.0 |", "| NTHMC beta=6.0 |", "| HMC beta=5.7 (ref) |"):
        assert row in out
    assert "NTHMC trajectory cost" in out
