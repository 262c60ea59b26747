"""Smoke test of benchmarks/bench_nthmc_su3.py at tiny settings: keeps the benchmark runnable
and checks its tables, including the transfer of the trained model through the registry to
the doubled lattice (the card records where it was trained). Not a performance check."""

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
    tiny += " --transfer-L 4 --transfer-batch 1 --transfer-therm 1 --transfer-traj 1"
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
    assert "2x2x2x2: NTHMC trajectory cost" in out
    assert re.search(r"card: trained on lattice \[2, 2, 2, 2\] at \{'beta': 6\.0", out)
    assert "rebuilt on [4, 4, 4, 4] without retraining" in out
    for row in ("| 4x4x4x4: force on 1 held-out", "| 4x4x4x4 sampler (", "| NTHMC beta=6.0 |"):
        assert row in out
    assert "4x4x4x4: NTHMC trajectory cost" in out
    # the identity-flow residual line is (0.3/6) times the plain rms on each lattice
    for plain, ident in zip(
        re.findall(r"\| plain dS/dU at beta 6.0 \| ([0-9.]+) \|", out),
        re.findall(r"\| \(identity flow: [^|]*\| ([0-9.]+) \|", out),
    ):
        assert abs(float(ident) - 0.05 * float(plain)) <= 1e-3
    assert len(re.findall(r"\| \(identity flow: ", out)) == 2
