"""Smoke test of benchmarks/bench_shootout_u1.py (``--quick``: L = 8 from models trained at
L = 4): every sampler gives a row, the models are loaded from the registry at another lattice
and coupling than the card records (transfer, checked against the card), and a second run
reuses the registry instead of retraining. Not a performance check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_shootout_u1", ROOT / "benchmarks" / "bench_shootout_u1.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_all_samplers_transfer_and_reuse(bench, tmp_path, capsys):
    models = str(tmp_path / "models")
    rows = bench.main(["--quick", "--models", models])
    out = capsys.readouterr().out
    assert list(rows) == list(bench.SAMPLERS)
    for name in bench.SAMPLERS:
        assert out.count(f"| {name} | ") == 1
    # the card says where each model was trained; the case runs elsewhere
    assert out.count("trained at L=4 beta=2 (u1shoot-") == 4  # nthmc, triv, fm, l2hmc
    assert "run at L=8 beta=3" in out
    assert "not transferred" in out  # fm_sweep is built per lattice
    assert "exact <Q^2> = 0.7078" in out  # character expansion, L = 8, beta = 3
    for r in rows.values():
        assert 0.0 <= r["acc"] <= 1.0 and r["cpu_traj"] > 0
    assert rows["hmc"]["n_force"] > 0 and rows["fm"]["n_force"] == 0
    assert rows["nthmc"]["train"] > 0
    # second run: the registry holds the same models, nothing is retrained
    bench.main(["--quick", "--models", models, "--samplers", "hmc", "l2hmc"])
    out = capsys.readouterr().out
    assert "# l2hmc: reusing u1shoot-l2hmc@" in out and "training at" not in out


def test_bad_lattice_is_refused(bench):
    with pytest.raises(ValueError, match="multiples of 4"):
        bench.main(["--quick", "--L", "6"])


def test_unresolved_tau_is_flagged(bench):
    """A nearly frozen charge (one jump per chain) is flagged as not resolving tau_int(Q);
    independent charges are resolved (tau_int ~ 0.5, as many changes as samples)."""
    import numpy as np

    rng = np.random.default_rng(1)
    n = 400
    frozen = np.zeros((4, n))
    frozen[:, n // 2 :] = 1.0
    plaq = rng.normal(size=(4, n))
    res = {"Q": frozen, "plaq": plaq, "chains": 4, "traj": n, "cpu": 1.0}
    out = bench.analyse(res, 0.0)
    assert out["changes"] == 4 and not out["resolved"]
    res["Q"] = rng.integers(-3, 4, size=(4, n)).astype(float)
    out = bench.analyse(res, 0.0)
    assert out["resolved"] and out["tau_Q"] < 1.0


def test_lag_one_tau_on_ar1(bench):
    """AR(1) with coefficient rho and unit variance: tau_1 = 1 / (1 - rho) = 10 from the
    exact variance, and the Gamma method's tau_int = (1 + rho) / (2 (1 - rho)) = 9.5."""
    import numpy as np

    rho, chains, n = 0.9, 8, 8000
    rng = np.random.default_rng(7)
    x = np.empty((chains, n))
    x[:, 0] = rng.normal(size=chains)
    noise = rng.normal(size=(chains, n)) * np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    res = {"Q": x, "plaq": x, "chains": chains, "traj": n, "cpu": 1.0}
    out = bench.analyse(res, 0.0, q2_exact=1.0)
    assert abs(out["tau_1"] - 10.0) < 0.5
    assert abs(out["tau_Q"] - 9.5) < 3 * out["tau_Q_err"]
    # costs use the larger of the two estimates
    tau = max(out["tau_Q"], out["tau_1"])
    assert out["tau"] == tau and out["cost"] == 2 * tau * out["cpu_traj"]
