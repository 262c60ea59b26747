"""HMC sampler mechanics: non-finite policy, step-size tuning and its checkpoint state,
determinism, records."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC, NonFiniteTrajectoryWarning
from kernels.samplers.stepsize import DualAveraging
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SEED = 4321
BAD = (1, 3)


class NaNForcePhi4(Phi4):
    """phi^4 whose force is NaN at one site (Inf at another) for the chains ``BAD``."""

    def force(self, phi):
        f = super().force(phi).clone()
        f[BAD[0], 2, 3] = float("nan")
        f[BAD[1], 0, 0] = float("inf")
        return f


class InfActionPhi4(Phi4):
    """phi^4 whose action is +Inf for chain 2 at the end of the trajectory only."""

    poisoned = False

    def random_momentum(self, rng, counter, batch, chain_offset=0):
        self.poisoned = False
        return super().random_momentum(rng, counter, batch, chain_offset)

    def evolve_field(self, phi, momentum, eps):
        self.poisoned = True
        return super().evolve_field(phi, momentum, eps)

    def action(self, phi):
        s = super().action(phi)
        if self.poisoned:
            s = s.clone()
            s[2] = float("inf")
        return s


def _run_pair(bad_cls, n_traj=3, batch=6):
    grid = single_rank_grid((6, 4))
    clean, bad = Phi4(grid, 0.4, 0.3), bad_cls(grid, 0.4, 0.3)
    rng = SiteRNG(SEED)
    field = clean.hot_start(rng, 0, batch)
    h_clean = HMC(clean, make_integrator(clean, "omelyan", 4), rng)
    h_bad = HMC(bad, make_integrator(bad, "omelyan", 4), rng)
    fc, fb = field, field
    recs = []
    for counter in range(1, n_traj + 1):
        fc, rc = h_clean.trajectory(fc, counter)
        with pytest.warns(NonFiniteTrajectoryWarning):
            new_fb, rb = h_bad.trajectory(fb, counter)
        recs.append((rc, rb, fb, new_fb))
        fb = new_fb
    return recs, fc, fb, h_bad


def test_nan_force_chains_rejected_counted_others_unaffected():
    recs, fc, fb, hmc = _run_pair(NaNForcePhi4)
    good = [b for b in range(fc.shape[0]) if b not in BAD]
    for rc, rb, old, new in recs:
        assert rb.n_nonfinite == 2
        assert rb.nonfinite.tolist() == [b in BAD for b in range(6)]
        assert not rb.accepted[list(BAD)].any()
        assert torch.equal(rb.acceptance_probability[list(BAD)], torch.zeros(2))
        assert torch.equal(new[list(BAD)], old[list(BAD)])  # kept the old field
        # every other chain: exactly what the clean theory does
        assert torch.equal(rb.dH[good], rc.dH[good])
        assert torch.equal(rb.accepted[good], rc.accepted[good])
        assert rc.n_nonfinite == 0 and not rc.nonfinite.any()
    assert rc.accepted[good].any()
    assert torch.equal(fb[good], fc[good])
    assert torch.isfinite(fb).all()
    assert hmc.n_nonfinite_total == 2 * len(recs)


def test_inf_dh_rejected_and_counted():
    recs, fc, fb, hmc = _run_pair(InfActionPhi4)
    for _, rb, old, new in recs:
        assert rb.nonfinite.tolist() == [b == 2 for b in range(6)]
        assert math.isinf(float(rb.dH[2]))
        assert not bool(rb.accepted[2])
        assert torch.equal(new[2], old[2])
    assert hmc.n_nonfinite_total == len(recs)


def test_integrator_flags_nonfinite_force_per_chain():
    grid = single_rank_grid((6, 4))
    theory = NaNForcePhi4(grid, 0.4, 0.3)
    rng = SiteRNG(SEED)
    res = make_integrator(theory, "leapfrog", 2).integrate(
        theory.hot_start(rng, 0, 5), theory.random_momentum(rng, 1, 5)
    )
    assert res.nonfinite.tolist() == [b in BAD for b in range(5)]


class OnceBadForcePhi4(Phi4):
    """phi^4 whose force is non-finite at one force evaluation only (the ``bad_call``-th of
    the trajectory), for one chain: NaN, +Inf or -Inf at one site."""

    def __init__(self, *a, bad_call: int, value: float, chain: int, **k):
        super().__init__(*a, **k)
        self.bad_call, self.value, self.chain, self.calls = bad_call, value, chain, 0

    def force(self, phi):
        f = super().force(phi)
        self.calls += 1
        if self.calls == self.bad_call:
            f = f.clone()
            f[self.chain, 1, 2] = self.value
        return f


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("bad_call", [1, 3, 5])
@pytest.mark.parametrize("scheme", ["leapfrog", "omelyan"])
def test_integrator_flags_a_force_non_finite_once_mid_trajectory(value, bad_call, scheme):
    """The flag is read off the final momenta: a force that is non-finite once, at the
    start, in the middle or last (leapfrog with 2 steps: 3 forces, omelyan: 5), and finite
    before and after, still flags its chain (and only it)."""
    grid = single_rank_grid((6, 4))
    theory = OnceBadForcePhi4(grid, 0.4, 0.3, bad_call=bad_call, value=value, chain=2)
    rng = SiteRNG(SEED)
    n_forces = {"leapfrog": 3, "omelyan": 5}[scheme]
    if bad_call > n_forces:
        bad_call = theory.bad_call = n_forces
    res = make_integrator(theory, scheme, 2).integrate(
        theory.hot_start(rng, 0, 4), theory.random_momentum(rng, 1, 4)
    )
    assert res.force_evaluations == [n_forces] and theory.calls == n_forces
    assert res.nonfinite.tolist() == [False, False, True, False]


# ------------------------------------------------------------------ tuning
def _phi4_hmc(n_steps, target=None, batch=16):
    theory = Phi4(single_rank_grid((8, 8)), 0.5, 0.5)
    rng = SiteRNG(SEED)
    hmc = HMC(theory, make_integrator(theory, "leapfrog", n_steps), rng, target_acceptance=target)
    return theory, rng, hmc, theory.hot_start(rng, 0, batch)


@pytest.mark.parametrize("n_start", [1, 30])
def test_step_size_tuning_reaches_target(n_start):
    target = 0.75
    theory, rng, hmc, field = _phi4_hmc(n_start, target)
    for counter in range(1, 81):
        field, rec = hmc.trajectory(field, counter, tune=True)
        assert rec.tuning
    hmc.finish_tuning()
    n_tuned = hmc.n_steps
    probs = []
    for counter in range(81, 141):
        field, rec = hmc.trajectory(field, counter)
        assert rec.n_steps == n_tuned and not rec.tuning
        probs.append(rec.acceptance_probability)
    acc = float(torch.stack(probs).mean())
    # the step size is quantised (tau / n_steps): within one step of the target
    assert abs(acc - target) < 0.1, (acc, n_tuned)
    assert 2 <= n_tuned <= 8


def test_tuner_state_restores_exactly():
    theory, rng, hmc, field = _phi4_hmc(1, 0.8)
    for counter in range(1, 11):
        field, _ = hmc.trajectory(field, counter, tune=True)
    state = json.loads(json.dumps(hmc.state_dict()))  # survives a text checkpoint
    _, _, restored, _ = _phi4_hmc(1, 0.8)
    restored.load_state_dict(state)
    assert restored.n_steps == hmc.n_steps
    f1 = f2 = field
    for counter in range(11, 21):
        f1, r1 = hmc.trajectory(f1, counter, tune=True)
        f2, r2 = restored.trajectory(f2, counter, tune=True)
        assert r1.n_steps == r2.n_steps
        assert torch.equal(r1.dH, r2.dH)
    assert torch.equal(f1, f2)
    assert restored.tuner.state_dict() == hmc.tuner.state_dict()
    restored.finish_tuning()
    hmc.finish_tuning()
    assert restored.step_size == hmc.step_size


def test_dual_averaging_moves_the_right_way():
    low, high, nan = (DualAveraging(0.1, target=0.8) for _ in range(3))
    for _ in range(20):
        e_low, e_high, e_nan = low.update(0.0), high.update(1.0), nan.update(float("nan"))
    assert e_high > 0.1 > e_low  # accepting everything: larger steps; nothing: smaller
    assert e_nan == e_low  # a non-finite acceptance counts as 0
    assert high.final_step_size > 0.1 > low.final_step_size
    with pytest.raises(ValueError):
        DualAveraging(0.1, target=1.0)


def test_tune_without_target_is_an_error():
    _, _, hmc, field = _phi4_hmc(3)
    with pytest.raises(ValueError, match="target_acceptance"):
        hmc.trajectory(field, 1, tune=True)


# ------------------------------------------------------------------ determinism, records
def test_same_counter_same_result_other_offset_other_chains():
    theory = U1Gauge(single_rank_grid((4, 6)), 1.5)
    rng = SiteRNG(SEED)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 4), rng)
    field = theory.hot_start(rng, 0, 4)
    a, ra = hmc.trajectory(field, 5)
    b, rb = hmc.trajectory(field, 5)
    assert torch.equal(a, b) and torch.equal(ra.dH, rb.dH)
    c, rc = hmc.trajectory(field, 5, chain_offset=4)
    assert not torch.equal(rc.dH, ra.dH)
    # chains are independent streams: chain 2 of offset 0 is chain 0 of offset 2
    d, rd = hmc.trajectory(field[2:], 5, chain_offset=2)
    assert torch.equal(d, a[2:]) and torch.equal(rd.dH, ra.dH[2:])


def test_record_contents_and_json():
    theory = U1Gauge(single_rank_grid((4, 4)), 1.0)
    rng = SiteRNG(SEED)
    hmc = HMC(theory, make_integrator(theory, "omelyan", 5, 0.5), rng, reversibility_every=2)
    field = theory.hot_start(rng, 0, 3)
    new, rec = hmc.trajectory(field, 4)
    assert rec.step_size == pytest.approx(0.1) and rec.n_steps == 5
    assert rec.trajectory_length == 0.5 and rec.wall_time > 0
    assert rec.force_evaluations == [11]
    assert torch.allclose(rec.exp_minus_dH, torch.exp(-rec.dH))
    assert torch.allclose(rec.action, theory.action(new))
    assert rec.reversibility_field_error is not None  # counter 4 is a multiple of 2
    line = json.dumps(rec.as_dict())
    assert json.loads(line)["counter"] == 4
    _, rec = hmc.trajectory(new, 5)
    assert rec.reversibility_field_error is None


def test_accepted_fields_are_projected_rejected_kept():
    theory = U1Gauge(single_rank_grid((4, 4)), 1.0)
    rng = SiteRNG(SEED)
    start = theory.hot_start(rng, 0, 8) * 3.0  # the same kind of links, angles up to 3 pi
    n_acc = n_rej = 0
    for project in (True, False):
        hmc = HMC(theory, make_integrator(theory, "leapfrog", 2), rng, project=project)
        field = start
        for counter in range(1, 4):
            new, rec = hmc.trajectory(field, counter)
            for b in range(8):
                if rec.accepted[b]:
                    n_acc += 1
                    inside = bool(((new[b] > -math.pi) & (new[b] <= math.pi)).all())
                    if project:
                        assert inside
                    else:  # unwrapped angles stay outside (-pi, pi]
                        assert not inside
                else:
                    n_rej += 1
                    assert torch.equal(new[b], field[b])
            field = new
    assert n_acc and n_rej
