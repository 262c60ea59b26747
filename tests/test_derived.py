"""Derived quantities of `trivhmc analyze` (app/derived.py): errors against pyerrors'
derived observables (an independent implementation) and a blocked jackknife; natural
ordering, binning, --volume and plots through the CLI."""

from __future__ import annotations

import json
import math
import warnings

import autograd.numpy as anp
import numpy as np
import pyerrors as pe
import pytest
from scipy.signal import lfilter

from app.analysis import RunData, analyze_data
from app.cli import main
from app.derived import derived_gamma, derived_quantities, natural_key


def ar1(n: int, rho: float, seed: int, mean: float = 0.0, sigma: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    eta = rng.normal(size=n) * sigma
    x0 = eta[0] / math.sqrt(1 - rho**2)
    rest, _ = lfilter([1.0], [1.0, -rho], eta[1:], zi=[rho * x0])
    return np.concatenate(([x0], rest)) + mean


def pe_obs(reps: list[np.ndarray]) -> pe.Obs:
    return pe.Obs([np.asarray(r, float) for r in reps], [f"ens|r{i}" for i in range(len(reps))])


S = 2.0


def check(ours, ref: pe.Obs) -> None:
    ref.gamma_method(S=S)
    assert ours.mean == pytest.approx(ref.value, rel=1e-12)
    assert ours.error == pytest.approx(ref.dvalue, rel=1e-6)
    assert ours.tau_int == pytest.approx(ref.e_tauint["ens"], rel=1e-6)


def test_binder_and_chi_against_pyerrors():
    # magnetisation-like series on two replicas of unequal length
    m = [ar1(3000, 0.7, 1, mean=0.4, sigma=0.1), ar1(2200, 0.7, 2, mean=0.4, sigma=0.1)]
    volume = 64
    series = {"M": np.array([np.concatenate([m[0]]), np.full(3000, np.nan)])}
    series["M"][1, :2200] = m[1]  # NaN: not measured (shorter replica)
    got = derived_quantities(series, volume, S=S)
    m2, m4, am = pe_obs([x**2 for x in m]), pe_obs([x**4 for x in m]), pe_obs([abs(x) for x in m])
    check(got["binder"].result, 1 - m4 / (3 * m2**2))
    check(got["chi"].result, volume * (m2 - am**2))
    # the mean is the formula at the means, not the mean of a per-configuration formula
    allm = np.concatenate(m)
    expect = 1 - np.mean(allm**4) / (3 * np.mean(allm**2) ** 2)
    assert got["binder"].result.mean == pytest.approx(expect, rel=1e-13)


def test_effective_mass_and_chi_t_against_pyerrors():
    # a correlator cosh(m (t - T/2)) with correlated noise on every time slice
    lt, mass = 8, 0.5
    noise = ar1(4000, 0.6, 3, sigma=0.02)
    corr = {
        f"C_{t}": math.cosh(mass * (t - lt / 2)) * (1 + noise + 0.01 * ar1(4000, 0.3, 10 + t))
        for t in range(lt)
    }
    q = np.round(ar1(4000, 0.9, 4, sigma=0.6))
    series = {k: v[None, :] for k, v in corr.items()} | {"Q_int": q[None, :]}
    got = derived_quantities(series, volume=100, S=S)
    for t in range(1, lt // 2):
        obs = [pe_obs([corr[f"C_{s}"]]) for s in (t - 1, t, t + 1)]
        ref = pe.derived_observable(lambda x, **kw: anp.arccosh((x[0] + x[2]) / (2 * x[1])), obs)
        check(got[f"m_eff[C][{t}]"].result, ref)
        assert got[f"m_eff[C][{t}]"].result.mean == pytest.approx(mass, abs=0.02)
    check(got["chi_t"].result, pe_obs([q**2]) / 100)


def test_error_agrees_with_a_blocked_jackknife():
    """Independent of the Gamma method: jackknife over blocks much longer than tau_int."""
    m = ar1(40000, 0.8, 7, mean=0.3, sigma=0.1)  # tau_int = 4.5
    got = derived_gamma(lambda a: 1 - a[1] / (3 * a[0] ** 2), [[m**2], [m**4]], S=1.5)
    nb = 40
    blocks = np.array_split(np.arange(len(m)), nb)
    m2, m4 = m**2, m**4

    def f(idx):
        return 1 - m4[idx].mean() / (3 * m2[idx].mean() ** 2)

    jk = np.array(
        [f(np.concatenate([b for j, b in enumerate(blocks) if j != i])) for i in range(nb)]
    )
    err_jk = math.sqrt((nb - 1) / nb * np.sum((jk - jk.mean()) ** 2))
    # the jackknife error of 40 blocks is itself uncertain by ~1/sqrt(2 * 39) = 11 %
    assert got.error == pytest.approx(err_jk, rel=0.35)
    assert got.tau_int > 1.5  # correlated: a naive error would be far too small


def test_binning_keeps_the_error_and_reduces_tau():
    m = ar1(8000, 0.8, 8, mean=0.3, sigma=0.1)
    run = RunData(source="x", observables={"M": m[:, None]})
    plain = analyze_data(run, S=1.5)
    binned = analyze_data(run, S=1.5, bin_size=20)
    for key in ("M",):
        a, b = plain.observables[key], binned.observables[key]
        assert b.n == 400 and b.tau_int < a.tau_int
        assert b.error == pytest.approx(a.error, rel=0.25)
    assert binned.derived["binder"].result.error == pytest.approx(
        plain.derived["binder"].result.error, rel=0.3
    )


def test_natural_key():
    names = ["C_10", "C_2", "C_1", "C_0", "D", "C_11"]
    assert sorted(names, key=natural_key) == ["C_0", "C_1", "C_2", "C_10", "C_11", "D"]


def test_cli_order_bin_volume_plot(tmp_path, capsys):
    rng = np.random.default_rng(5)
    lines = []
    for t in range(200):
        c = {
            f"two_point_{i}": [float(math.cosh(0.7 * (i - 6)) + 0.05 * rng.normal())]
            for i in range(12)
        }
        q = float(rng.integers(-2, 3))
        lines.append(
            json.dumps(
                {
                    "trajectory": t,
                    "thermalization": False,
                    "dH": [0.0],
                    "accepted": [True],
                    "exp_minus_dH": [1.0],
                    "observables": {**c, "Q_int": [q], "M": [0.1 * q + 0.3]},
                }
            )
        )
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["analyze", str(tmp_path), "--volume", "144", "--bin", "2", "--skip", "10"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith("two_point_")]
    assert rows == [f"two_point_{i}" for i in range(12)]
    assert "bins of 2" in out and "chi_t" in out and "m_eff[two_point][5]" in out
    assert main(["analyze", str(tmp_path), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert "chi_t" not in j["derived"]  # no volume: not computed
    assert j["derived"]["m_eff[two_point][1]"]["mean"] == pytest.approx(0.7, abs=0.05)
    assert main(["analyze", str(tmp_path), "--bin", "0"]) == 2
    assert main(["analyze", str(tmp_path), "--plot", str(tmp_path / "png"), "--volume", "9"]) == 0
    assert (tmp_path / "png" / "correlator_two_point.png").exists()
    assert (tmp_path / "png" / "derived.png").exists()


def test_cli_tau_exp_tail(tmp_path, capsys):
    """``--tau-exp`` reaches every observable and derived quantity: each equals pyerrors'
    tail analysis of the same series (primary and projected)."""
    rng = np.random.default_rng(9)
    q = np.cumsum(rng.normal(size=400)) * 0.05 + rng.normal(size=400)  # a slow drift + noise
    _records(tmp_path, 400, {"Q_int": lambda t: q[t]})
    assert main(["analyze", str(tmp_path), "--json", "--volume", "64", "--tau-exp", "30"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["tau_exp"] == 30.0
    ref = pe_obs([q])
    ref.gamma_method(tau_exp=30.0)
    assert j["observables"]["Q_int"]["tau_int"] == pytest.approx(ref.e_tauint["ens"], rel=1e-10)
    chi = pe.derived_observable(lambda a, **kw: a[0] / 64, [pe_obs([q**2])])
    chi.gamma_method(tau_exp=30.0)
    assert j["derived"]["chi_t"]["error"] == pytest.approx(chi.dvalue, rel=1e-8)
    assert main(["analyze", str(tmp_path), "--tau-exp", "30"]) == 0
    assert "tau_exp = 30" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path), "--tau-exp", "-1"]) == 2
    assert "--tau-exp" in capsys.readouterr().err


def _records(tmp_path, n, obs) -> None:
    recs = [
        {
            "trajectory": t,
            "thermalization": False,
            "dH": [0.0],
            "accepted": [True],
            "exp_minus_dH": [1.0],
            "observables": {k: [float(v(t))] for k, v in obs.items()},
        }
        for t in range(n)
    ]
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def test_skip_all_trajectories_is_an_input_error(tmp_path, capsys):
    """--skip N >= the production trajectories: one message naming their number, exit 2
    (was a ZeroDivisionError in derived_gamma)."""
    rng = np.random.default_rng(1)
    _records(tmp_path, 10, {"M": lambda t: rng.normal(), "Q_int": lambda t: t % 3 - 1})
    for skip in ("10", "11"):
        assert main(["analyze", str(tmp_path), "--skip", skip, "--volume", "16"]) == 2
        err = capsys.readouterr().err
        assert "10 production trajectories" in err and "internal error" not in err
    assert main(["analyze", str(tmp_path), "--skip", "9", "--volume", "16", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["derived"]["chi_t"]["error"] is None and j["derived"]["binder"]["error"] is None
    assert j["derived"]["chi_t"]["mean"] is not None


def test_derived_of_constant_observables_no_warnings(tmp_path, capsys):
    """Constant inputs: derived quantities that are defined are exact (error 0, tau_int 1/2),
    those that are not (0/0, log 0, arccosh of 0/0) are NaN; numpy warns about neither."""
    obs = {"M": lambda t: 0.0, "Q_int": lambda t: 1.0, "W_R1_T1": lambda t: 0.0}
    obs |= {"W_R1_T2": lambda t: 0.0, **{f"C_{i}": (lambda t: 0.0) for i in range(6)}}
    _records(tmp_path, 40, obs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["analyze", str(tmp_path), "--volume", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    d = json.loads(captured.out)["derived"]
    assert (d["chi_t"]["mean"], d["chi_t"]["error"], d["chi_t"]["tau_int"]) == (0.25, 0.0, 0.5)
    for name in ("binder", "V_eff[1][1]", "m_eff[C][1]"):
        assert d[name]["mean"] is None and d[name]["error"] is None, name
    with pytest.raises(ValueError, match="no measurements"):
        derived_gamma(lambda a: a[0], [[np.zeros(0)]])
