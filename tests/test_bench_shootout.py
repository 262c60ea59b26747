"""Smoke test of benchmarks/bench_shootout.py at tiny settings (L = 4, a few updates): keeps the
shoot-out runnable, checks that every sampler produces a table row with the columns filled in
(the fermion samplers report CG work, the force-based ones force evaluations, Metropolis none)
and that bad settings are refused. Not a performance check."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_shootout", ROOT / "benchmarks" / "bench_shootout.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_table(bench, capsys):
    rows = bench.main(["--quick"])
    out = capsys.readouterr().out
    assert set(rows) == {"hmc", "nthmc", "l2hmc", "joint"}
    for name, r in rows.items():
        assert f"| {name} |" in out
        assert 0.0 <= r["acc"] <= 1.0
        assert r["cpu_traj"] > 0 and r["cg"] > 0, name
        assert r["Q"].shape == (2, 4) and r["plaq"].shape == (2, 4)
        assert r["cost_train"] >= r["cost"] or not math.isfinite(r["cost"])
    assert rows["hmc"]["train"] == 0.0
    for name in ("nthmc", "l2hmc", "joint"):
        assert rows[name]["train"] > 0.0
    assert rows["hmc"]["n_force"] > 0 and rows["nthmc"]["n_force"] > 0
    assert rows["l2hmc"]["n_force"] > 0 and rows["joint"]["n_force"] == 0


def test_frozen_chain_has_infinite_tau(bench):
    import numpy as np

    tau, err = bench._tau(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert math.isinf(tau) and math.isnan(err)


def test_bad_settings_are_refused(bench):
    with pytest.raises(ValueError, match="even L"):
        bench.main(["--quick", "--L", "5"])
