"""A broken SU(3) chain (a NaN link) is rejected and leaves the other chains of its batch bit
for bit as they are without it, on every SU(3) path: plain HMC with the eager and the vnode
kernels, and stout-trivialized HMC with the eager and the fused stout layer.

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
from kernels.flows.su3 import su3_stout_flow
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC, NonFiniteTrajectoryWarning
from kernels.samplers.trivialized import TransformedTheory
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
    broken = field.clone()
    broken[BAD, 1, 0, 1, 2, 0, 0, 2] = complex(float("nan"), 0.0)
    good = [b for b in range(3) if b != BAD]
    kb.set_backend(backend)
    su3_fused.set_stout_kernel(stout)
    try:
        f_clean, r_clean = _run(theory, field)
        f_bad, r_bad = _run(theory, broken)
    finally:
        kb.set_backend("eager")
        su3_fused.set_stout_kernel(None)
    for rc, rb in zip(r_clean, r_bad, strict=True):
        assert rb.nonfinite.tolist() == [b == BAD for b in range(3)]
        assert not bool(rb.accepted[BAD])
        assert torch.equal(rb.dH[good], rc.dH[good])
        assert torch.equal(rb.accepted[good], rc.accepted[good])
        assert not rc.nonfinite.any()
    assert torch.equal(f_bad[good], f_clean[good])
    assert torch.equal(f_bad[BAD].nan_to_num(), broken[BAD].nan_to_num())  # kept its field
    assert any(bool(r.accepted[good].any()) for r in r_clean)  # the chains moved
