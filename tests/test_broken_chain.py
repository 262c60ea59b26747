"""A broken chain (a NaN in its field) is rejected and leaves the other chains of its batch bit
for bit as they are without it: on every SU(3) path (plain HMC with the eager and the vnode
kernels, stout-trivialized HMC with the eager and the fused stout layer), and for one flow
of each other theory.

docs/hmc.md promises this (non-finite policy); tests/test_hmc.py checks it for phi^4 with an
injected NaN force. Here the NaN is in the field, so it goes through everything a chain's
batch shares: batched products, exact sums, the exponential's scaling (the eager stout
log-det took its series length from the largest norm of the whole batch, and a NaN norm made
every chain's series the identity, session 19), the vnode blocks and the fused lanes.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import kernels.backends as kb
from kernels.flows import su3_fused
from kernels.flows.base import build_flow
from kernels.flows.su3 import su3_stout_flow
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC, NonFiniteTrajectoryWarning
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories import REGISTRY, make_theory
from kernels.theories.su3 import SU3Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SHAPE = (4, 2, 4, 2)
BAD = 1


def _theory(flowed: bool):
    grid = single_rank_grid(SHAPE)
    th = SU3Gauge(grid, 5.6)
    if not flowed:
        return th
    torch.manual_seed(3)
    flow = su3_stout_flow(grid, n_layers=2, hidden=(4,), rho_max=0.3)
    flow.requires_grad_(False)
    return TransformedTheory(th, flow)


def _run(theory, field):
    hmc = HMC(theory, make_integrator(theory, "omelyan", 2, 0.4), SiteRNG(9))
    recs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteTrajectoryWarning)
        for counter in range(1, 3):
            field, rec = hmc.trajectory(field, counter)
            recs.append(rec)
    return field, recs


@pytest.mark.parametrize(
    "backend, flowed, stout",
    [
        ("eager", False, None),
        ("vnode", False, None),
        ("eager", True, "eager"),
        ("eager", True, "auto"),
    ],
)
def test_a_nan_chain_leaves_the_others_alone(backend, flowed, stout):
    if backend == "vnode":
        pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    if stout == "auto" and not su3_fused.fused_available():
        pytest.skip("numba missing: no fused stout layer")
    theory = _theory(flowed)
    field = SU3Gauge(theory.grid, 5.6).hot_start(SiteRNG(4), 0, 3)
    su3_fused.set_stout_kernel(stout)
    try:
        _check(theory, field, backend, (BAD, 1, 0, 1, 2, 0, 0, 2))
    finally:
        su3_fused.set_stout_kernel(None)


def _check(theory, field, backend, where=None):
    """Two trajectories of the batch ``field`` and of the same batch with a NaN at ``where``
    (default: the first entry of chain ``BAD``): the broken chain is flagged, rejected and
    keeps its field; the others' records and fields are bit for bit the clean run's."""
    broken = field.clone()
    broken[where or (BAD,) + (0,) * (field.dim() - 1)] = float("nan")
    good = [b for b in range(field.shape[0]) if b != BAD]
    kb.set_backend(backend)
    try:
        f_clean, r_clean = _run(theory, field)
        f_bad, r_bad = _run(theory, broken)
    finally:
        kb.set_backend("eager")
    for rc, rb in zip(r_clean, r_bad, strict=True):
        assert rb.nonfinite.tolist() == [b == BAD for b in range(field.shape[0])]
        assert not bool(rb.accepted[BAD]) and not rc.nonfinite.any()
        assert torch.equal(rb.dH[good], rc.dH[good])
        assert torch.equal(rb.accepted[good], rc.accepted[good])
    assert torch.equal(f_bad[good], f_clean[good])
    assert torch.equal(f_bad[BAD].nan_to_num(), broken[BAD].nan_to_num())  # kept its field
    assert any(bool(r.accepted[good].any()) for r in r_clean)  # the chains moved


@pytest.mark.parametrize(
    "name, couplings, arch, backend",
    [
        ("phi4", {"beta": 0.5, "lam": 0.5}, "phi4_affine", "eager"),
        ("u1", {"beta": 2.0}, None, "vnode"),
        ("u1", {"beta": 2.0}, "u1_sweep", "eager"),
        ("u1", {"beta": 2.0}, "u1_nthmc", "eager"),
        ("schwinger", {"beta": 2.0, "kappa": 0.2}, "schwinger_stout", "eager"),
    ],
)
def test_a_nan_chain_leaves_the_others_alone_other_theories(name, couplings, arch, backend):
    if backend == "vnode":
        pytest.importorskip("kernels.backends.vnode", exc_type=ImportError)
    grid = single_rank_grid((8, 8))
    base = make_theory(name, grid, **couplings)
    theory = base
    if arch is not None:
        torch.manual_seed(0)
        flow = build_flow({"builder": REGISTRY[name].architectures[arch], "kwargs": {}}, grid)
        flow.requires_grad_(False)
        theory = TransformedTheory(base, flow)
    field = base.hot_start(SiteRNG(4), 0, 3)
    if name != "phi4":
        field = 0.3 * field  # links near 1: the chains accept
    _check(theory, field, backend)


def test_flow_metropolis_flags_a_broken_current_state():
    """Flow independence Metropolis with a NaN in one chain's current field: that chain's
    ``dH`` is NaN, it is flagged non-finite and never moves; the others' records and fields
    are bit for bit the clean run's."""
    from kernels.flows.phi4 import phi4_affine_flow
    from kernels.flows.priors import prior_for
    from kernels.samplers.flow_metropolis import FlowMetropolis, FlowMetropolisSampler

    theory = make_theory("phi4", single_rank_grid((4, 4)), beta=0.3, lam=0.5)
    torch.manual_seed(1)
    flow = phi4_affine_flow(theory.grid, n_pairs=1, hidden=())
    field = theory.hot_start(SiteRNG(2), 0, 3)
    broken = field.clone()
    broken[BAD, 0, 0] = float("nan")
    runs = []
    for start in (field, broken):
        fm = FlowMetropolisSampler(FlowMetropolis(theory, flow, prior_for(theory), SiteRNG(1)))
        x, recs = start, []
        for counter in range(1, 4):
            x, rec = fm.trajectory(x, counter)
            recs.append(rec)
        runs.append((x, recs))
    (x_clean, r_clean), (x_bad, r_bad) = runs
    good = [0, 2]
    for rc, rb in zip(r_clean, r_bad, strict=True):
        assert rb.nonfinite.tolist() == [False, True, False] and not rc.nonfinite.any()
        assert not bool(rb.accepted[BAD])
        assert torch.equal(rb.dH[good], rc.dH[good])
        assert torch.equal(rb.accepted[good], rc.accepted[good])
    assert torch.equal(x_bad[good], x_clean[good])
    assert any(bool(r.accepted[good].any()) for r in r_clean)  # the chains moved
