"""Gamma method against pyerrors and exact AR(1) results; reading runs; plots."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pyerrors as pe
import pytest
from scipy.signal import lfilter

from app.analysis import analyze, analyze_data, gamma_method, load_run, plot, read_records
from app.errors import InputError


def ar1(n: int, rho: float, seed: int, mean: float = 0.0) -> np.ndarray:
    """x_{i+1} = rho x_i + eta_i, eta ~ N(0, 1), started in equilibrium.
    Exact: rho(t) = rho^t, tau_int = (1 + rho) / (2 (1 - rho)), var = 1 / (1 - rho^2)."""
    rng = np.random.default_rng(seed)
    eta = rng.normal(size=n)
    x0 = eta[0] / math.sqrt(1 - rho**2)
    rest, _ = lfilter([1.0], [1.0, -rho], eta[1:], zi=[rho * x0])
    return np.concatenate(([x0], rest)) + mean


def tau_exact(rho: float) -> float:
    return (1 + rho) / (2 * (1 - rho))


def pyerrors_reference(reps: list[np.ndarray], S: float):
    o = pe.Obs(reps, [f"ens|r{i}" for i in range(len(reps))])
    o.gamma_method(S=S)
    return o


@pytest.mark.parametrize("S", [1.5, 2.0])
@pytest.mark.parametrize(
    "case",
    [
        [(4000, 0.8, 1)],  # one chain, tau_int = 4.5
        [(3000, 0.5, 2), (2000, 0.5, 3), (2600, 0.5, 4)],  # replicas of unequal length
        [(500, 0.0, 5)],  # uncorrelated
        [(2000, -0.4, 6)],  # anticorrelated
    ],
)
def test_matches_pyerrors(case, S):
    reps = [ar1(n, rho, seed, mean=1.5) for n, rho, seed in case]
    ours = gamma_method(reps, S=S)
    ref = pyerrors_reference(reps, S)
    name = "ens"
    assert ours.mean == pytest.approx(ref.value, rel=1e-13)
    assert ours.error == pytest.approx(ref.dvalue, rel=1e-10)
    assert ours.tau_int == pytest.approx(ref.e_tauint[name], rel=1e-10)
    assert ours.tau_int_error == pytest.approx(ref.e_dtauint[name], rel=1e-10, abs=1e-14)
    assert ours.window == ref.e_windowsize[name]
    assert ours.error_of_error == pytest.approx(ref.ddvalue, rel=1e-10)
    assert ours.n == sum(n for n, _, _ in case) and ours.n_replicas == len(case)
    w = ours.window
    assert ours.drho(w)[w] == pytest.approx(ref.e_drho[name][w], rel=1e-10)
    np.testing.assert_allclose(ours.rho, ref.e_rho[name], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n_sigma", [1.0, 2.0])
@pytest.mark.parametrize(
    "case, tau_exp",
    [
        ([(4000, 0.8, 1)], 10.0),
        ([(3000, 0.9, 2), (2000, 0.9, 3), (2600, 0.9, 4)], 25.0),
        ([(500, 0.0, 5)], 3.0),
        ([(12, 0.5, 6)], 2.0),  # so short that the window stops at w_max // 2 - 2
    ],
)
def test_tau_exp_tail_matches_pyerrors(case, tau_exp, n_sigma):
    reps = [ar1(n, rho, seed, mean=0.3) for n, rho, seed in case]
    ours = gamma_method(reps, tau_exp=tau_exp, n_sigma=n_sigma)
    ref = pe.Obs(reps, [f"ens|r{i}" for i in range(len(reps))])
    ref.gamma_method(tau_exp=tau_exp, N_sigma=n_sigma)
    assert ours.window == ref.e_windowsize["ens"]
    assert ours.tau_int == pytest.approx(ref.e_tauint["ens"], rel=1e-10)
    assert ours.tau_int_error == pytest.approx(ref.e_dtauint["ens"], rel=1e-10)
    assert ours.error == pytest.approx(ref.dvalue, rel=1e-10)
    assert ours.error_of_error == pytest.approx(ref.ddvalue, rel=1e-10)


def test_tau_exp_tail_recovers_a_slow_mode():
    """A fast AR(1) plus a weak slow one (the picture of a frozen topological charge): the
    automatic window stops before the slow mode shows and underestimates tau_int 3.5x; the
    tail with the slow mode's exact tau_exp recovers the exact tau_int within its error."""
    a1, a2, c, n = 0.5, 0.995, 0.02, 200_000
    x = ar1(n, a1, 0) + c * ar1(n, a2, 100)
    v1, v2 = 1 / (1 - a1**2), c**2 / (1 - a2**2)
    exact = (v1 * tau_exact(a1) + v2 * tau_exact(a2)) / (v1 + v2)  # 7.28
    auto = gamma_method(x)
    tail = gamma_method(x, tau_exp=-1.0 / math.log(a2))
    assert auto.tau_int < 0.35 * exact
    assert abs(tail.tau_int - exact) < 2.0 * tail.tau_int_error
    assert tail.error == pytest.approx(auto.error * math.sqrt(tail.tau_int / auto.tau_int))
    with pytest.raises(ValueError, match="tau_exp"):
        gamma_method(x, tau_exp=-1.0)
    with pytest.raises(ValueError, match="n_sigma"):
        gamma_method(x, tau_exp=5.0, n_sigma=0.0)
    with pytest.raises(ValueError, match="at least 8"):
        gamma_method(x[:6], tau_exp=5.0)


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ar1_exact_tau_int_and_error(rho):
    n = 200_000
    x = ar1(n, rho, seed=11)
    r = gamma_method(x)
    exact = tau_exact(rho)
    # statistical agreement with the exact value (deterministic seed)
    assert abs(r.tau_int - exact) < 3 * r.tau_int_error
    assert r.tau_int_error < 0.1 * exact
    # error of the mean: sqrt(2 tau var / N) with the exact var and tau
    exact_err = math.sqrt(2 * exact / (1 - rho**2) / n)
    assert r.error == pytest.approx(exact_err, rel=0.1)
    # rho(t) = rho^t within its errors for the first few t
    t = np.arange(1, 6)
    assert np.all(np.abs(r.rho[t] - rho**t) < 4 * r.drho(5)[t])


def test_ar1_replicas_combine():
    reps = [ar1(20_000, 0.7, seed=s) for s in (21, 22, 23, 24)]
    r = gamma_method(reps)
    assert r.n_replicas == 4 and r.n == 80_000
    assert abs(r.tau_int - tau_exact(0.7)) < 3 * r.tau_int_error
    assert abs(r.mean) < 4 * r.error
    # 2D array input = list of rows
    assert gamma_method(np.stack(reps)).error == pytest.approx(r.error, rel=1e-14)


def test_edge_cases():
    c = gamma_method(np.full(100, 3.0))
    assert (c.mean, c.error, c.tau_int, c.window) == (3.0, 0.0, 0.5, 0)
    # frozen replicas at different values (a sampler that never moved): error unknown, not 0
    frozen = gamma_method([np.full(50, 1.0), np.full(50, 2.0)])
    assert frozen.mean == 1.5
    assert math.isnan(frozen.error) and math.isnan(frozen.tau_int)
    x = ar1(1000, 0.0, seed=3)
    s0 = gamma_method(x, S=0)
    assert s0.error == pytest.approx(np.std(x, ddof=1) / math.sqrt(len(x)), rel=1e-12)
    assert s0.tau_int == 0.5
    short = gamma_method([1.0, 2.0, 4.0])
    assert short.mean == pytest.approx(7 / 3)
    assert short.error == pytest.approx(np.std([1, 2, 4], ddof=1) / math.sqrt(3))
    with pytest.raises(ValueError):
        gamma_method([1.0, float("nan"), 2.0, 3.0, 4.0])
    with pytest.raises(ValueError):
        gamma_method([])


# ---------------------------------------------------------------------------- run files
def write_records(path, chains=2, n_therm=5, n_prod=400, measure_every=1, seed=0):
    """records.jsonl as app/run.py writes it (docs/run-output.md), from AR(1) series."""
    rng = np.random.default_rng(seed)
    plaq = np.stack([ar1(n_prod, 0.6, seed + c, mean=0.7) for c in range(chains)], axis=1)
    dH = rng.normal(0.01, 0.15, size=(n_therm + n_prod, chains))
    acc = rng.random((n_therm + n_prod, chains)) < 0.8
    lines = []
    for t in range(n_therm + n_prod):
        therm = t < n_therm
        rec = {
            "trajectory": t,
            "thermalization": therm,
            "dH": dH[t].tolist(),
            "accepted": acc[t].tolist(),
            "exp_minus_dH": np.exp(-dH[t]).tolist(),
            "step_size": 0.1,
            "n_steps": 10,
            "wall_time": 0.01,
            "n_nonfinite": 0,
        }
        p = t - n_therm
        if therm:
            rec["observables"] = {"plaquette": [0.0] * chains, "q_0": [9.0] * chains}
        elif p % measure_every == 0:
            rec["observables"] = {"plaquette": plaq[p].tolist(), "q_0": plaq[p].tolist()}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    prod = slice(n_therm, None)
    return plaq[::measure_every], dH[prod], acc[prod]


def test_records_analysis_equals_direct(tmp_path):
    plaq, dH, acc = write_records(tmp_path / "records.jsonl")
    a = analyze(tmp_path)
    assert a.n_trajectories == 400 and a.n_chains == 2
    direct = gamma_method([plaq[:, 0], plaq[:, 1]])
    assert a.observables["plaquette"].mean == pytest.approx(direct.mean, rel=1e-14)
    assert a.observables["plaquette"].error == pytest.approx(direct.error, rel=1e-12)
    assert a.observables["plaquette"].tau_int == pytest.approx(direct.tau_int, rel=1e-12)
    assert a.acceptance == pytest.approx(acc.mean(), rel=1e-14)
    assert a.exp_minus_dH.mean == pytest.approx(np.exp(-dH).mean(), rel=1e-12)
    j = a.as_json()
    assert set(j["observables"]["plaquette"]) >= {"mean", "error", "tau_int", "tau_int_error"}
    assert j["acceptance"] == a.acceptance and j["exp_minus_dH"] == a.exp_minus_dH.mean
    json.dumps(j, allow_nan=False)
    # --skip drops production trajectories (and their measurements)
    s = analyze(tmp_path, skip=100)
    assert s.n_trajectories == 300
    assert s.observables["plaquette"].n == 600
    assert s.observables["plaquette"].mean == pytest.approx(plaq[100:].mean(), rel=1e-13)
    assert s.acceptance == pytest.approx(acc[100:].mean(), rel=1e-14)
    only = analyze(tmp_path, names=["q_0"])
    assert list(only.observables) == ["q_0"]
    with pytest.raises(InputError, match="unknown observable"):
        analyze(tmp_path, names=["nope"])


def test_records_sparse_measurements(tmp_path):
    plaq, _, _ = write_records(tmp_path / "records.jsonl", chains=1, measure_every=4)
    a = analyze(tmp_path / "records.jsonl", skip=40)
    assert a.n_trajectories == 360
    assert a.observables["plaquette"].n == len(plaq) - 10


def test_records_resume_and_truncation(tmp_path):
    path = tmp_path / "records.jsonl"
    write_records(path, chains=1, n_prod=50)
    lines = path.read_text().splitlines()
    # a resumed run repeats trajectory 30 with other numbers: the last record counts
    rec = json.loads(lines[5 + 30])
    rec["observables"]["plaquette"] = [123.0]
    text = "\n".join(lines + [json.dumps(rec)]) + "\n" + lines[6][:25]  # cut last line
    path.write_text(text)
    with pytest.warns(UserWarning, match="truncated"):
        run = read_records(path)
    assert run.observables["plaquette"].shape == (50, 1)
    assert run.observables["plaquette"][30, 0] == 123.0
    path.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(InputError, match="records.jsonl:4"):
        read_records(path)


def test_hdf5_ensembles(tmp_path):
    """The layout of app/io/hdf5.py: observables/<name> (n_rows,), NaN where missing."""
    series = []
    for c in range(2):
        x = ar1(300, 0.5, seed=40 + c, mean=0.3)
        series.append(x)
        with h5py.File(tmp_path / f"ensemble_c{c}.h5", "w") as f:
            g = f.create_group("observables")
            g["trajectory"] = np.arange(300)
            g["plaquette"] = x
            m = x.copy()
            m[7] = np.nan
            g["magnetisation"] = m
            g["dH"] = np.full(300, 0.1)
            g["accepted"] = np.ones(300)
            g["exp_minus_dH"] = np.full(300, math.exp(-0.1))
    one = analyze(tmp_path / "ensemble_c0.h5")
    assert one.observables["plaquette"].mean == pytest.approx(series[0].mean(), rel=1e-13)
    assert one.observables["magnetisation"].n == 299
    assert "trajectory" not in one.observables
    assert one.acceptance == 1.0 and one.exp_minus_dH.mean == pytest.approx(math.exp(-0.1))
    both = analyze(tmp_path)  # a run directory without records.jsonl
    assert both.n_chains == 2
    ref = gamma_method(series)
    assert both.observables["plaquette"].error == pytest.approx(ref.error, rel=1e-12)


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_run(tmp_path / "missing")
    with pytest.raises(InputError, match="neither"):
        load_run(tmp_path)


def test_plots(tmp_path):
    write_records(tmp_path / "records.jsonl", chains=2, n_prod=200)
    run = load_run(tmp_path)
    a = analyze_data(run)
    files = plot(run, a, tmp_path / "plots")
    names = sorted(p.name for p in files)
    assert names == ["exp_minus_dH.png", "plaquette.png", "q_0.png"]
    for p in files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


# ---------------------------------------------------------------------------- edge cases
def test_one_measurement_per_chain_has_no_error():
    """One value per chain: no fluctuation is measured, so the error is undefined (NaN),
    never 0, whether the chains agree or not."""
    for data in ([[0.3], [0.7]], [[0.5], [0.5]], [[2.0]]):
        r = gamma_method(data)
        assert r.mean == pytest.approx(np.mean(data))
        assert math.isnan(r.error) and math.isnan(r.tau_int)


def test_constant_observable_is_exact_without_warnings():
    """A constant observable has error 0 and tau_int 1/2 (pyerrors' convention for
    Gamma(0) = 0) for every length and value, also when rounding makes its replicum mean differ
    from the value (0.1 x 6: Gamma(0) ~ 1e-34, which used to give tau_int ~ 2)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (0.1, 1 / 3, 0.7, 123.456, 0.0):
            for n in (2, 3, 6, 13, 100, 257):
                r = gamma_method(np.full(n, value))
                assert (r.mean, r.error, r.tau_int) == (value, 0.0, 0.5), (value, n)
                two = gamma_method([np.full(n, value), np.full(n + 1, value)])
                assert (two.error, two.tau_int) == (0.0, 0.5)


def test_skip_beyond_the_run_is_an_input_error(tmp_path, capsys):
    from app.cli import main

    write_records(tmp_path / "records.jsonl", chains=2, n_prod=20)
    for skip in (20, 21, 1000):
        with pytest.raises(InputError, match="has 20 production trajectories"):
            analyze(tmp_path, skip=skip)
        assert main(["analyze", str(tmp_path), "--skip", str(skip)]) == 2
        assert "--skip" in capsys.readouterr().err
    # one trajectory left per chain: the errors are undefined, not 0 (JSON null)
    assert main(["analyze", str(tmp_path), "--skip", "19", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["observables"]["plaquette"]["error"] is None
    assert j["observables"]["plaquette"]["mean"] is not None
    a = analyze(tmp_path, skip=18)
    assert a.observables["plaquette"].error > 0
