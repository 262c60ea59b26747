"""The independent numpy quenched SU(3) generator and flow of benchmarks/validate_t0.py.

It must be right on its own (it is the reference for trivhmc's t0), so it is checked
against exact results: the Kennedy-Pendleton ``x0`` against the exact mean of its density,
the heatbath + overrelaxation plaquette of a 2D lattice against the exact single-plaquette
integral (2D plaquettes are independent up to ``u^V`` corrections), and its RK3 flow and
clover E against trivhmc's (kernels/wilson_flow.py, a separate implementation).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_su3_hmc import single_plaquette_expectation

from kernels.wilson_flow import energy_density, flow_step_rk3
from parallel import single_rank_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def v():
    spec = importlib.util.spec_from_file_location(
        "validate_t0", ROOT / "benchmarks" / "validate_t0.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("alpha", [0.5, 3.0, 12.0])
def test_kennedy_pendleton_mean(v, alpha):
    # <x0> under sqrt(1 - x0^2) exp(alpha x0): x0 = cos(th), weight sin^2(th) exp(alpha cos th)
    th = np.linspace(0, np.pi, 20001)
    w = np.sin(th) ** 2 * np.exp(alpha * np.cos(th))
    exact = float((np.cos(th) * w).sum() / w.sum())
    var = float((np.cos(th) ** 2 * w).sum() / w.sum()) - exact**2
    n = 40000
    x = v._kp_x0(np.full(n, alpha), np.random.default_rng(3))
    assert np.all(np.abs(x) <= 1)
    assert abs(x.mean() - exact) < 5 * np.sqrt(var / n)


def test_heatbath_2d_plaquette_is_the_single_plaquette_integral(v):
    beta = 3.0
    lat = v.Lattice((4, 4))
    rng = np.random.default_rng(7)
    u = np.broadcast_to(np.eye(3, dtype=complex), (2, lat.volume, 3, 3)).copy()
    for _ in range(20):
        v.sweep(u, lat, beta, rng, 1)
    p = []
    for _ in range(400):
        v.sweep(u, lat, beta, rng, 1)
        p.append(v.plaquette(u, lat))
    p = np.array(p)
    err = p.reshape(40, 10).mean(1).std(ddof=1) / np.sqrt(40)  # binned
    exact = single_plaquette_expectation(beta)
    assert abs(p.mean() - exact) < 4 * err + 1e-4, (p.mean(), exact, err)
    # still in SU(3)
    assert np.allclose(u @ v.dag(u), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(u), 1, atol=1e-12)


def _random_field(v, lat, seed=2, amp=0.4):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(4, lat.volume, 3, 3)) + 1j * rng.normal(size=(4, lat.volume, 3, 3))
    return v._expm_ah(amp * v._ta(m))


def test_numpy_flow_and_clover_e_match_trivhmc(v):
    shape = (4, 2, 4, 2)
    lat = v.Lattice(shape)
    u = _random_field(v, lat)
    grid = single_rank_grid(shape)

    def torch_field(a):
        return torch.from_numpy(a.reshape(1, 4, *shape, 3, 3).copy())

    e_t = float(energy_density(torch_field(u), grid)[0])
    assert v.numpy_clover_e(u, lat) == pytest.approx(e_t, rel=1e-12)
    un = v.numpy_flow_step(u, lat, 0.05)
    with torch.no_grad():
        ut = flow_step_rk3(torch_field(u), grid, 0.05)
    assert np.abs(ut.numpy().reshape(un.shape) - un).max() < 1e-12


def test_numpy_plaquette_matches_trivhmc_plaquette_energy(v):
    from kernels.wilson_flow import plaquette_energy_density

    shape = (2, 4, 2, 4)
    lat = v.Lattice(shape)
    u = _random_field(v, lat, seed=5)
    field = torch.from_numpy(u.reshape(1, 4, *shape, 3, 3).copy())
    e = float(plaquette_energy_density(field, single_rank_grid(shape))[0])
    assert e == pytest.approx(36 * (1 - v.plaquette(u, lat)), rel=1e-12)


def test_tree_level_delta(v):
    # small c: delta -> -pi^2 c^4 / 3 (the zero-mode term); theta3 -> 1
    assert v.tree_level_delta(0.1) == pytest.approx(-(np.pi**2) * 1e-4 / 3, rel=1e-6)


@pytest.mark.slow
def test_validate_t0_tiny_run(v, tmp_path, capsys):
    out = tmp_path / "t0.jsonl"
    v.main(
        "--L 4 --beta 5.3 --therm 10 --sep 2 --ncfg 2 --nor 1 --t-max 1.2 --eps 0.1 --every 1 "
        f"--numpy-check --out {out}".split()
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds == ["meta", "config", "config", "numpy_flow_check"]
    assert rows[3]["abs_diff"] < 1e-9
    assert v.history_difference(rows[1], rows[3]) < 1e-12
    cfg = [r for r in rows if r["kind"] == "config"]
    for r in cfg:
        assert r["e_plaq0_trivhmc"] == pytest.approx(r["e_plaq0_numpy"], rel=1e-10)
    assert "t0" in capsys.readouterr().out


def test_t0_of_the_mean_history_and_jackknife(v):
    t = np.arange(0, 4.01, 0.6)
    y = 0.1 * t + 0.02 * t**2  # crossing 0.3 at t = (-0.1 + sqrt(0.01 + 0.024)) / 0.04
    exact = (-0.1 + np.sqrt(0.01 + 4 * 0.02 * 0.3)) / (2 * 0.02)
    assert v.t0_of_mean(t, y) == pytest.approx(exact, rel=1e-12)
    assert np.isnan(v.t0_of_mean(t, 0.01 * t))
    # jackknife of the mean of linear data equals the standard error of the mean
    x = np.random.default_rng(1).normal(size=(9, 1))
    val, err = v._jackknife(x, lambda m: float(m[0]))
    assert val == pytest.approx(x.mean()) and err == pytest.approx(x.std(ddof=1) / 3)
