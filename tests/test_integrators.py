"""Integrators: reversibility, order of the energy error, <exp(-dH)> = 1, nested time scales.

Order of the energy error over a trajectory of fixed length ``tau`` with step ``h``:
leapfrog and Omelyan 2MN are both symmetric *second-order* schemes, ``dH = O(h^2)`` (2MN with a
~10x smaller coefficient; its ``O(h^2)`` term is minimised, not removed), and at equilibrium
``<dH> = <dH^2>/2 = O(h^4)``. The fourth-order Forest-Ruth scheme gives ``dH = O(h^4)`` and
shows that the fit below does detect the order. Fits use the rms of ``dH`` over chains with
the same fields and momenta at every ``h``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kernels.integrators import OMELYAN_LAMBDA, Integrator, Level, make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.phi4 import Phi4
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SEED = 20240611


def _phi4() -> Phi4:
    return Phi4(single_rank_grid((8, 8)), beta=0.5, lam=0.5)


def _u1() -> U1Gauge:
    return U1Gauge(single_rank_grid((6, 6)), beta=2.0)


def _su3() -> SU3Gauge:
    return SU3Gauge(single_rank_grid((2, 2, 2, 2)), beta=5.7)


THEORIES = {"phi4": _phi4, "u1": _u1, "su3": _su3}
#: per theory: chains, thermalisation trajectories, step counts of the order fits
SETUP = {
    "phi4": (16, 30, (8, 16, 32, 64)),
    "u1": (16, 30, (8, 16, 32, 64)),
    "su3": (4, 8, (4, 8, 16)),
}


def split_forces(theory):
    """Two force terms that add up to the theory's force (for multiple time scales)."""
    if isinstance(theory, Phi4):

        def local(phi):  # the on-site part, the stiff one
            return 2.0 * phi + 4.0 * theory.lam * phi * (phi * phi - 1.0)

        def hop(phi):
            return theory.force(phi) - local(phi)

        return hop, local
    return (lambda x: 0.3 * theory.force(x)), (lambda x: 0.7 * theory.force(x))


@pytest.fixture(scope="module", params=sorted(THEORIES))
def equilibrium(request):
    """A thermalised batch of 16 chains, fresh momenta and the start energy."""
    theory = THEORIES[request.param]()
    batch, n_therm, steps = SETUP[request.param]
    rng = SiteRNG(SEED)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 6, 1.0), rng)
    field = theory.hot_start(rng, 0, batch)
    for counter in range(1, n_therm + 1):
        field, _ = hmc.trajectory(field, counter)
    momentum = theory.random_momentum(rng, 10_000, batch)
    return theory, field, momentum, steps


def energy(theory, field, momentum):
    return theory.kinetic(momentum) + theory.action(field)


def rms_dh(theory, integrator, field, momentum):
    res = integrator.integrate(field, momentum)
    dh = energy(theory, res.field, res.momentum) - energy(theory, field, momentum)
    return float(dh.pow(2).mean().sqrt())


def fitted_order(theory, make, field, momentum, steps):
    """Slope of log rms(dH) against log h, and the rms values."""
    rms = np.array([rms_dh(theory, make(n), field, momentum) for n in steps])
    h = 1.0 / np.array(steps, dtype=float)
    return np.polyfit(np.log(h), np.log(rms), 1)[0], rms


def nested(theory, scheme, n_outer, n_inner=2):
    outer, inner = split_forces(theory)
    return Integrator(theory, [Level(outer, n_outer), Level(inner, n_inner)], scheme=scheme)


# ------------------------------------------------------------------ reversibility
@pytest.mark.parametrize("scheme", ["leapfrog", "omelyan", "forest_ruth", "nested"])
def test_reversibility(equilibrium, scheme):
    theory, field, momentum, steps = equilibrium
    if scheme == "nested":
        integ = nested(theory, "omelyan", 5, 3)
    else:
        integ = make_integrator(theory, scheme, 10, 1.0)
    fwd = integ.integrate(field, momentum)
    assert float((fwd.field - field).abs().max()) > 0.1  # it moved
    back = integ.integrate(fwd.field, -fwd.momentum)
    assert float((back.field - field).abs().max()) < 1e-10
    assert float((back.momentum + momentum).abs().max()) < 1e-10
    # inputs untouched
    assert not bool(torch.equal(fwd.momentum, momentum))
    h0 = energy(theory, field, momentum)
    assert float((energy(theory, back.field, back.momentum) - h0).abs().max()) < 1e-10


def test_reversibility_check_in_hmc(equilibrium):
    theory, field, _, _ = equilibrium
    hmc = HMC(theory, make_integrator(theory, "omelyan", 6, 1.0), SiteRNG(SEED))
    _, rec = hmc.trajectory(field, 77, check_reversibility=True)
    assert rec.reversibility_field_error.shape == (field.shape[0],)
    assert float(rec.reversibility_field_error.max()) < 1e-10
    assert float(rec.reversibility_dH_error.max()) < 1e-10
    _, rec = hmc.trajectory(field, 78)
    assert rec.reversibility_field_error is None


# ------------------------------------------------------------------ order
def test_leapfrog_and_omelyan_are_second_order(equilibrium):
    theory, field, momentum, steps = equilibrium
    slope_lf, rms_lf = fitted_order(
        theory, lambda n: make_integrator(theory, "leapfrog", n), field, momentum, steps
    )
    slope_om, rms_om = fitted_order(
        theory, lambda n: make_integrator(theory, "omelyan", n), field, momentum, steps
    )
    assert abs(slope_lf - 2.0) < 0.3, (slope_lf, rms_lf)
    assert abs(slope_om - 2.0) < 0.3, (slope_om, rms_om)
    # 2MN: the h^2 error coefficient is minimised, several times below leapfrog's
    assert np.all(rms_om < rms_lf / 4.0), (rms_om, rms_lf)


def test_forest_ruth_is_fourth_order(equilibrium):
    theory, field, momentum, steps = equilibrium
    slope, rms = fitted_order(
        theory, lambda n: make_integrator(theory, "forest_ruth", n), field, momentum, steps
    )
    assert abs(slope - 4.0) < 0.5, (slope, rms)


@pytest.mark.parametrize("scheme, order", [("leapfrog", 2), ("omelyan", 2), ("forest_ruth", 4)])
def test_nested_levels_keep_the_order(equilibrium, scheme, order):
    theory, field, momentum, steps = equilibrium
    if isinstance(theory, SU3Gauge) and scheme == "forest_ruth":
        pytest.skip("costly for SU(3) (9 inner drifts per outer step); phi4 and U(1) cover it")
    slope, rms = fitted_order(theory, lambda n: nested(theory, scheme, n), field, momentum, steps)
    assert abs(slope - order) < (0.3 if order == 2 else 0.5), (slope, rms)


# ------------------------------------------------------------------ nested time scales
def test_all_forces_on_one_level_equal_the_single_scale(equilibrium):
    theory, field, momentum, steps = equilibrium
    outer, inner = split_forces(theory)
    for scheme in ("leapfrog", "omelyan"):
        single = make_integrator(theory, scheme, 7).integrate(field, momentum)
        summed = Integrator(theory, [Level([outer, inner], 7)], scheme=scheme)
        res = summed.integrate(field, momentum)
        assert float((res.field - single.field).abs().max()) < 1e-12
        assert float((res.momentum - single.momentum).abs().max()) < 1e-12
    # leapfrog with one inner step per drift is algebraically the single-scale leapfrog
    single = make_integrator(theory, "leapfrog", 7).integrate(field, momentum)
    res = nested(theory, "leapfrog", 7, 1).integrate(field, momentum)
    assert float((res.field - single.field).abs().max()) < 1e-12
    assert float((res.momentum - single.momentum).abs().max()) < 1e-12


def test_force_evaluation_counts(equilibrium):
    theory, field, momentum, steps = equilibrium
    n0, n1 = 3, 2
    assert make_integrator(theory, "leapfrog", 5).integrate(field, momentum).force_evaluations == [
        6
    ]
    assert make_integrator(theory, "omelyan", 5).integrate(field, momentum).force_evaluations == [
        11
    ]
    # outer omelyan: 2 n0 + 1; inner: 2 drifts per outer step, n1 omelyan steps each, and
    # the inner force is reused across the outer kicks: 2 (2 n0 n1) + 1
    counts = nested(theory, "omelyan", n0, n1).integrate(field, momentum).force_evaluations
    assert counts == [2 * n0 + 1, 2 * (2 * n0 * n1) + 1]


def test_inner_level_reduces_the_error_of_a_stiff_force():
    """phi^4 with a strong on-site term: moving it to an inner level with 4 sub-steps cuts
    the energy error at the same outer step (the reason for multiple time scales)."""
    theory = Phi4(single_rank_grid((8, 8)), beta=0.3, lam=3.0)
    rng = SiteRNG(SEED)
    field = theory.hot_start(rng, 0, 16) * 0.5
    hmc = HMC(theory, make_integrator(theory, "omelyan", 20, 1.0), rng)
    for counter in range(1, 21):
        field, _ = hmc.trajectory(field, counter)
    momentum = theory.random_momentum(rng, 999, 16)
    one = rms_dh(theory, make_integrator(theory, "omelyan", 4), field, momentum)
    two = rms_dh(theory, nested(theory, "omelyan", 4, 4), field, momentum)
    assert two < one / 4.0, (one, two)


def test_omelyan_constant():
    assert OMELYAN_LAMBDA == pytest.approx(0.1931833, abs=1e-12)
    with pytest.raises(ValueError):
        Level(lambda x: x, 0)
    with pytest.raises(ValueError):
        Integrator(_phi4(), [Level(lambda x: x, 2)], scheme="verlet")


# ------------------------------------------------------------------ <exp(-dH)> = 1
@pytest.mark.parametrize("name", ["phi4", "u1"])
def test_exp_minus_dh_averages_to_one(name):
    """At equilibrium ``<exp(-dH)> = 1`` exactly (area preservation + reversibility). Run
    HMC with a coarse leapfrog (acceptance ~ 70-85%) on 64 chains; chains are independent,
    so the error is the spread of per-chain means."""
    theory = THEORIES[name]()
    rng = SiteRNG(SEED + 1)
    batch = 64
    steps = {"phi4": 4, "u1": 4}[name]
    hmc = HMC(theory, make_integrator(theory, "leapfrog", steps, 1.0), rng)
    field = theory.hot_start(rng, 0, batch)
    for counter in range(1, 31):
        field, _ = hmc.trajectory(field, counter)
    e, dh = [], []
    for counter in range(31, 91):
        field, rec = hmc.trajectory(field, counter)
        e.append(rec.exp_minus_dH)
        dh.append(rec.dH)
    e = torch.stack(e).numpy()  # (T, B)
    dh = torch.stack(dh).numpy()
    acc = np.minimum(1.0, e).mean()
    assert 0.6 < acc < 0.95, acc
    chain_means = e.mean(axis=0)
    mean, err = chain_means.mean(), chain_means.std(ddof=1) / math.sqrt(batch)
    assert abs(mean - 1.0) < 3.0 * err, (mean, err)
    # the test has power: <dH> > 0 is resolved, and the error is a few percent at most
    dh_means = dh.mean(axis=0)
    assert dh_means.mean() > 3.0 * dh_means.std(ddof=1) / math.sqrt(batch)
    assert err < 0.03


def test_merged_kicks_of_the_fused_path():
    """The fused force-and-kick path (a resident layout with ``kick``) merges the two kicks
    that meet at a step boundary: the same drifts, one kick per force evaluation, the kick
    sizes summing to the trajectory's."""
    from kernels.integrators import _merged_kicks, _step_ops

    lam = OMELYAN_LAMBDA
    ops = _merged_kicks(_step_ops("omelyan", lam), 3)
    assert [op for op, _ in ops] == ["kick", "drift"] * 6 + ["kick"]
    kicks = [c for op, c in ops if op == "kick"]
    assert kicks == pytest.approx(
        [lam, 1 - 2 * lam, 2 * lam, 1 - 2 * lam, 2 * lam, 1 - 2 * lam, lam]
    )
    assert [c for op, c in ops if op == "drift"] == [0.5] * 6
    assert _merged_kicks(_step_ops("leapfrog", lam), 2) == [
        ("kick", 0.5),
        ("drift", 1.0),
        ("kick", 1.0),
        ("drift", 1.0),
        ("kick", 0.5),
    ]
    fr = _merged_kicks(_step_ops("forest_ruth", lam), 2)
    assert sum(c for op, c in fr if op == "kick") == pytest.approx(2.0)
    assert len([op for op, _ in fr if op == "kick"]) == 2 * 3 + 1
