"""The sampler protocol, action terms with auxiliary fields, nested levels by term name, the
one trivialized force, and theory descriptors (issue 10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_hmc_exact import free_two_point_brute, gamma_mean

from app.deck import THEORY_SECTIONS, loads_deck
from app.errors import InputError
from app.setup import build_integrator, torch_dtype
from kernels.action import ActionTerm
from kernels.flows import phi4_affine_flow, u1_ncp_flow
from kernels.flows.lie import lie_autograd_force
from kernels.flows.priors import prior_for
from kernels.flows.pullback import pullback_force
from kernels.flows.su3 import su3_stout_flow
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis, FlowMetropolisSampler
from kernels.samplers.hmc import HMC
from kernels.samplers.protocol import Sampler, metropolis
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories import REGISTRY, architectures, descriptor
from kernels.theories.phi4 import Phi4
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import lattice_sum, single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG

PURPOSE_TEST_AUX = PURPOSE_USER + 31


# ------------------------------------------------------------------ protocol
def test_metropolis_with_and_without_log_jacobian() -> None:
    dh = torch.tensor([0.5, 0.5, -1.0, float("nan"), 0.2, 0.1], dtype=torch.float64)
    u = torch.tensor([0.5, 0.7, 0.99, 0.1, 0.1, 0.1], dtype=torch.float64)
    plain = metropolis(dh, u)
    # exp(-0.5) = 0.607: accept 0.5, reject 0.7; dH < 0 always accepted; NaN rejected
    assert plain.accepted.tolist() == [True, False, True, False, True, True]
    assert plain.acceptance_probability[2] == 1.0 and plain.acceptance_probability[3] == 0.0
    log_j = torch.tensor([0.0, 0.5, 0.0, 0.0, float("inf"), -5.0], dtype=torch.float64)
    with_j = metropolis(dh, u, log_jacobian=log_j)
    # exp(-0.5 + 0.5) = 1 accepts 0.7; an infinite log|J| is invalid; exp(-5.1) rejects 0.1
    assert with_j.accepted.tolist() == [True, True, True, False, False, False]
    assert torch.equal(with_j.exp_minus_dH[:3], torch.exp(-dh[:3]))
    bad = torch.tensor([True, False, False, False, False, False])
    assert not metropolis(dh, u, bad=bad).accepted[0]


def test_samplers_implement_the_protocol() -> None:
    grid = single_rank_grid((4, 4))
    theory = Phi4(grid, beta=0.3, lam=0.5)
    hmc = HMC(theory, make_integrator(theory, "leapfrog", 4), SiteRNG(1))
    flow = phi4_affine_flow(grid, n_pairs=1, hidden=())
    tt = TransformedTheory(theory, flow)
    trivial = HMC(tt, make_integrator(tt, "leapfrog", 4), SiteRNG(1))
    fm = FlowMetropolisSampler(FlowMetropolis(theory, flow, prior_for(theory), SiteRNG(1)))
    for sampler, name in ((hmc, "hmc"), (trivial, "trivialized_hmc"), (fm, "flow_metropolis")):
        assert isinstance(sampler, Sampler)
        assert sampler.name == name
        phi = theory.hot_start(SiteRNG(2), 0, 3)
        x = sampler.from_physical(phi)
        x, rec = sampler.trajectory(x, 1)
        assert rec.dH.shape == (3,) and rec.accepted.dtype == torch.bool
        assert sampler.to_physical(x).shape == phi.shape
        sampler.load_state_dict(sampler.state_dict())
    assert rec.extra["ess"] > 0  # flow Metropolis reports its ESS as an extra column


# ------------------------------------------------------------------ action terms
class GaussianAuxTerm(ActionTerm):
    """``S_aux = (1/2) sum_x (eta_x - a phi_x)^2`` with ``eta`` drawn at the start of every
    trajectory from its conditional ``N(a phi, 1)``: integrating ``eta`` out gives a constant,
    so the phi distribution is unchanged, but the term adds a force ``-a (eta - a phi)`` that
    is only right if ``eta`` is refreshed at the trajectory's start field."""

    name = "aux"

    def __init__(self, grid, a: float, refresh_at_zero: bool = False) -> None:
        self.grid, self.a, self.refresh_at_zero = grid, a, refresh_at_zero
        self.eta: torch.Tensor | None = None
        self.n_refresh = 0

    def refresh(self, field, rng, counter, chain_offset=0, purpose=None) -> None:
        noise = rng.normal(
            self.grid,
            PURPOSE_TEST_AUX if purpose is None else purpose,
            counter,
            field.shape[0],
            chain_offset=chain_offset,
        ).to(field.dtype)
        mean = torch.zeros_like(field) if self.refresh_at_zero else self.a * field
        self.eta = mean + noise
        self.n_refresh += 1

    def action(self, field):
        return 0.5 * lattice_sum((self.eta - self.a * field) ** 2, self.grid, 1)

    def force(self, field):
        return -self.a * (self.eta - self.a * field)

    def costs(self):
        return {"refreshes": self.n_refresh}

    def reset_costs(self) -> None:
        self.n_refresh = 0


class Phi4WithAux(Phi4):
    """Free phi^4 plus the auxiliary Gaussian term (two terms: ``action``, ``aux``)."""

    def __init__(self, grid, beta, a, refresh_at_zero=False) -> None:
        super().__init__(grid, beta=beta, lam=0.0)
        self._terms = [_PhysicalPart(self), GaussianAuxTerm(grid, a, refresh_at_zero)]

    def action_terms(self):
        return self._terms

    def action(self, phi):
        return self._terms[0].action(phi) + self._terms[1].action(phi)

    def force(self, phi):
        return self._terms[0].force(phi) + self._terms[1].force(phi)


class _PhysicalPart(ActionTerm):
    name = "action"

    def __init__(self, theory) -> None:
        self.theory = theory

    def action(self, phi):
        return Phi4.action(self.theory, phi)

    def force(self, phi):
        return Phi4.force(self.theory, phi)


def _aux_chain(refresh_at_zero: bool) -> tuple[np.ndarray, float, list]:
    shape, beta = (6, 6), 0.4
    grid = single_rank_grid(shape)
    theory = Phi4WithAux(grid, beta, a=1.5, refresh_at_zero=refresh_at_zero)
    levels = [LevelSpec(("aux",), 3), LevelSpec(("action",), 2, "leapfrog")]
    hmc = HMC(theory, make_integrator(theory, "omelyan", 3, 1.5, levels), SiteRNG(7))
    rng = SiteRNG(7)
    phi = theory.hot_start(rng, 0, 32)
    data, acc, costs = [], [], []
    for counter in range(1, 231):
        phi, rec = hmc.trajectory(phi, counter)
        costs.append(rec.costs)
        if counter > 30:
            data.append(theory.two_point(phi).T.numpy())
            acc.append(rec.acceptance)
    return np.stack(data), float(np.mean(acc)), costs


def test_auxiliary_field_hmc_on_nested_levels_is_exact() -> None:
    shape, beta = (6, 6), 0.4
    exact = free_two_point_brute(shape, beta)
    data, acc, costs = _aux_chain(refresh_at_zero=False)
    assert acc > 0.7
    assert all(c == {"aux.refreshes": 1} for c in costs)  # one heatbath per trajectory
    c0, err = gamma_mean(data[:, 0], "aux_C0")
    assert abs(c0 - exact[0]) < 3.0 * err, (c0, err, exact[0])
    # the check resolves a wrong heatbath (eta drawn around 0, not around a phi)
    wrong, _, _ = _aux_chain(refresh_at_zero=True)
    c0_wrong, err_wrong = gamma_mean(wrong[:, 0], "aux_C0_wrong")
    assert abs(c0_wrong - exact[0]) > 5.0 * err_wrong


def test_term_forces_are_derivatives_of_their_actions() -> None:
    grid = single_rank_grid((4, 4))
    theory = Phi4WithAux(grid, 0.3, a=0.7)
    phi = theory.hot_start(SiteRNG(3), 0, 2)
    theory.refresh(phi, SiteRNG(3), 5)
    direction = torch.randn_like(phi, generator=torch.Generator().manual_seed(1))
    for term in theory.action_terms():
        h = 1e-5
        num = (term.action(phi + h * direction) - term.action(phi - h * direction)) / (2 * h)
        ana = (term.force(phi) * direction).sum(dim=(1, 2))
        torch.testing.assert_close(ana, num, rtol=1e-7, atol=1e-7)


def test_single_named_level_is_bitwise_the_single_scale_integrator() -> None:
    grid = single_rank_grid((6, 6))
    theory = U1Gauge(grid, beta=2.0)
    theta = theory.hot_start(SiteRNG(4), 0, 3)
    a = HMC(theory, make_integrator(theory, "omelyan", 5, 1.0), SiteRNG(4))
    b = HMC(
        theory,
        make_integrator(theory, "omelyan", 99, 1.0, [LevelSpec(("gauge",), 5)]),
        SiteRNG(4),
    )
    fa, ra = a.trajectory(theta, 3)
    fb, rb = b.trajectory(theta, 3)
    assert torch.equal(fa, fb) and torch.equal(ra.dH, rb.dH)
    assert ra.n_force == rb.n_force == 11  # Omelyan: 2 n + 1


def test_levels_must_name_every_term_once() -> None:
    theory = Phi4WithAux(single_rank_grid((4, 4)), 0.3, a=1.0)
    with pytest.raises(ValueError, match=r"missing \['aux'\]"):
        make_integrator(theory, levels=[LevelSpec(("action",), 2)])
    with pytest.raises(ValueError, match=r"unknown \['fermion'\]"):
        make_integrator(theory, levels=[LevelSpec(("action", "aux", "fermion"), 2)])
    with pytest.raises(ValueError, match=r"repeated \['aux'\]"):
        make_integrator(theory, levels=[LevelSpec(("action", "aux"), 2), LevelSpec(("aux",), 2)])


# ------------------------------------------------------------------ the trivialized force
def _autograd_trivialized_force(tt: TransformedTheory, v: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = v.detach().requires_grad_(True)
        u, logdet = tt.flow(x)
        (g,) = torch.autograd.grad((tt.theory.action(u) - logdet).sum(), x)
    return g


def test_pullback_equals_autograd_through_the_action_real_fields() -> None:
    grid = single_rank_grid((4, 4))
    torch.manual_seed(0)
    for theory, flow in (
        (Phi4(grid, beta=0.4, lam=0.6), phi4_affine_flow(grid, n_pairs=1, hidden=(4,))),
        (U1Gauge(grid, beta=1.5), u1_ncp_flow(grid, n_layers=2, hidden=(), n_mix=1)),
    ):
        flow = flow.double()
        for p in flow.parameters():
            torch.nn.init.normal_(p, std=0.3)
        tt = TransformedTheory(theory, flow)
        v = theory.hot_start(SiteRNG(5), 0, 2)
        torch.testing.assert_close(tt.force(v), _autograd_trivialized_force(tt, v))
        # per-term forces add up to the whole force (one pullback per level)
        names = [t.name for t in tt.action_terms()]
        assert names[-1] == "logdet"
        parts = tt.term_force(names[:-1])(v) + tt.term_force(["logdet"])(v)
        torch.testing.assert_close(parts, tt.force(v))


def test_pullback_equals_lie_autograd_for_su3() -> None:
    grid = single_rank_grid((2, 2, 2, 2))
    theory = SU3Gauge(grid, beta=5.5, action="wilson", dtype=torch.complex128)
    torch.manual_seed(1)
    flow = su3_stout_flow(grid, n_layers=2, hidden=(), init_scale=1.0)
    tt = TransformedTheory(theory, flow)
    v = theory.hot_start(SiteRNG(6), 0, 1)
    expected = lie_autograd_force(tt.action, v)
    torch.testing.assert_close(tt.force(v), expected, rtol=1e-9, atol=1e-10)
    # and the double-backward form keeps the graph to the flow parameters
    f = pullback_force(flow, theory, v, theory.force, create_graph=True)
    (f.abs() ** 2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


# ------------------------------------------------------------------ descriptors and decks
DECK = """
theory: {name: u1, beta: 2.0}
lattice: {shape: [4, 4]}
sampler: {name: hmc, levels: [{terms: [gauge], steps: 3, integrator: leapfrog}]}
run: {seed: 1, trajectories: 2, thermalization: 0}
output: {directory: runs/x}
"""


def test_every_registered_theory_has_its_deck_section_and_dtype() -> None:
    assert set(THEORY_SECTIONS) == set(REGISTRY)
    for name, desc in REGISTRY.items():
        section = THEORY_SECTIONS[name]
        keys = {f.alias or n for n, f in section.model_fields.items()} - {"name"}
        assert keys == {c.key for c in desc.couplings}
        complex_field = torch_dtype(name, "float64").is_complex
        assert complex_field == (desc.field_kind == "complex")
    assert architectures()["u1_sweep"][0] == "u1"
    assert descriptor("su3").file_formats == ("hdf5", "ildg", "nersc")
    with pytest.raises(ValueError, match="unknown theory 'u2'"):
        descriptor("u2")


def test_deck_levels_build_the_nested_integrator() -> None:
    deck = loads_deck(DECK)
    assert deck.sampler.outer_steps == 3 and math.isclose(deck.sampler.step_size, 1 / 3)
    theory = U1Gauge(single_rank_grid((4, 4)), beta=2.0)
    integ = build_integrator(deck, theory)
    assert integ.n_steps == 3 and integ.scheme_of(0) == "leapfrog"
    bad = loads_deck(DECK.replace("terms: [gauge]", "terms: [fermion]"))
    with pytest.raises(InputError, match="sampler.levels: .*unknown \\['fermion'\\]"):
        build_integrator(bad, theory)
    with pytest.raises(InputError, match="remove sampler.steps"):
        loads_deck(DECK.replace("name: hmc,", "name: hmc, steps: 4,"))


def test_a_descriptor_becomes_a_strict_deck_section() -> None:
    from pydantic import ValidationError

    from app.deck import _theory_section
    from kernels.theories.descriptor import Coupling, TheoryDescriptor

    desc = TheoryDescriptor(
        name="toy",
        factory="kernels.theories.u1:U1Gauge",
        dims=2,
        summary="A toy theory.",
        couplings=(
            Coupling("beta", float, "beta", gt=0),
            Coupling("kappas", list, "extra masses", default=[], gt=0),
            Coupling("lambda", float, "quartic", default=0.5, ge=0, arg="lam"),
        ),
    )
    section = _theory_section(desc)
    t = section.model_validate({"name": "toy", "beta": 2, "kappas": [0.1, 0.2]})
    assert t.couplings == {"beta": 2.0, "kappas": [0.1, 0.2], "lambda": 0.5}
    assert desc.constructor_kwargs(t.couplings) == {"beta": 2.0, "kappas": [0.1, 0.2], "lam": 0.5}
    assert section.model_validate({"name": "toy", "beta": 1.0}).couplings["kappas"] == []
    for bad in ({"beta": -1.0}, {"beta": 1.0, "kappas": [-0.1]}, {"beta": 1.0, "x": 1}):
        with pytest.raises(ValidationError):
            section.model_validate({"name": "toy", **bad})
    assert section.__doc__ == "A toy theory."


def test_deck_selects_the_kernel_backend() -> None:
    from app.setup import select_kernels
    from kernels.backends import get_backend, set_backend

    try:
        select_kernels(loads_deck(DECK.replace("lattice:", "parallel: {kernels: soa}\nlattice:")))
        assert get_backend().name == "soa"
    finally:
        set_backend("eager")
    with pytest.raises(InputError, match="parallel.kernels"):
        loads_deck(DECK.replace("lattice:", "parallel: {kernels: fast}\nlattice:"))
