"""Smoke test of benchmarks/bench_shootout.py at tiny settings (L = 4, a few updates): keeps the
shoot-out runnable, checks that every sampler produces a table row with the columns filled in
(the fermion samplers report CG work, the force-based ones force evaluations, Metropolis none)
and that bad settings are refused; the condensate estimator it uses is checked against the
dense ``(1/V) Re tr D^{-1}``, the tunnelling count against a hand-made series. Not a
performance check."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

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
        assert r["pbp"].shape == (2, 4) and np.all(np.isfinite(r["pbp"]))
        assert 0 <= r["tunnel"] <= 2 * 3 and r["Q2"] >= 0.0
        assert f"| {name} | " in out.split("| sampler | plaquette")[1]
    assert rows["hmc"]["train"] == 0.0
    for name in ("nthmc", "l2hmc", "joint"):
        assert rows[name]["train"] > 0.0
    assert rows["hmc"]["n_force"] > 0 and rows["nthmc"]["n_force"] > 0
    assert rows["l2hmc"]["n_force"] > 0 and rows["joint"]["n_force"] == 0
    for name in ("hmc", "nthmc"):  # outer-level force diagnostics of the MD samplers
        assert rows[name]["F_max"] >= rows[name]["F_rms"] > 0.0


def test_condensate_against_dense_trace(bench):
    """The benchmark's stochastic condensate against the exact ``(1/V) Re tr D^{-1}`` (dense
    inverse of the brute-force Wilson-Dirac matrix) on 4x4, within 5 standard deviations of the
    noise estimate; fresh noise per counter, the same noise for the same counter."""
    from schwinger_reference import condensate, dense_dirac

    from kernels.theories.schwinger import Schwinger
    from parallel import single_rank_grid

    shape, kappa, n_noise = (4, 4), 0.24, 32
    th = Schwinger(single_rank_grid(shape), 2.0, kappa, cg_tol=1e-12)
    gen = np.random.default_rng(3)
    theta = torch.from_numpy(gen.uniform(-np.pi, np.pi, size=(2, 2, *shape)))
    meas = bench.Condensate(th, 2, n_noise, seed=11)
    est = meas(theta, 5)
    exact = condensate(theta.numpy(), kappa)
    dinv = np.linalg.inv(dense_dirac(theta.numpy(), kappa))
    # one real Gaussian-noise estimate has variance (sum_ij |Dinv_ij|^2 - sum_i |Dinv_ii|^2) / V^2
    off = (np.abs(dinv) ** 2).sum(axis=(1, 2)) - (np.abs(np.diagonal(dinv, 0, 1, 2)) ** 2).sum(1)
    sd = np.sqrt(off) / 16 / np.sqrt(n_noise)
    assert np.all(np.abs(est - exact) < 5 * sd), (est, exact, sd)
    assert np.all(est != exact)  # an estimate, not the exact trace
    np.testing.assert_array_equal(meas(theta, 5), est)
    assert np.all(meas(theta, 6) != est)
    with pytest.raises(ValueError, match="pbp-every"):
        bench.Condensate(th, 0, 4, seed=1)


def test_tunnellings_and_frozen_cost(bench):
    q = np.array([[0.0, 0.02, 0.98, 1.0, -1.01], [2.0, 2.0, 2.0, 2.0, 2.0]])
    assert bench.tunnellings(q) == 2  # 0 -> 1 -> -1 in chain 0, chain 1 frozen
    res = {"Q": np.zeros((2, 5)), "plaq": np.ones((2, 5)), "cpu": 10.0}
    r = bench.analyse(res, 2, 5, 1.0)
    assert math.isinf(r["tau_Q"]) and r["tunnel"] == 0 and r["tunnel_rate"] == 0.0
    assert r["cost_lb"] == pytest.approx(5 * 1.0)  # tau_int >= n_traj / 2, 1 s per traj


def test_frozen_chain_has_infinite_tau(bench):
    tau, err = bench._tau(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert math.isinf(tau) and math.isnan(err)


def test_bad_settings_are_refused(bench):
    with pytest.raises(ValueError, match="even L"):
        bench.main(["--quick", "--L", "5"])
