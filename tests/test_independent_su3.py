"""SU(3) gauge action, force and observables against an independent dense reference
(tests/independent_reference.py: every plaquette and 1x2 rectangle written out as its product
of links, numerical derivatives), at couplings and on lattices the other tests do not use:
a non-cubic 4x6x2x8 lattice (an extent-2 axis, where a rectangle wraps onto itself), a batch
of 2 different chains, ``beta = 5.43``, ``c1`` of Wilson, Luscher-Weisz, Iwasaki, DBW2
(-1.4088) and an odd positive value, every kernel backend; and HMC exactness (``dH ~ eps^2``
for leapfrog/Omelyan, ``eps^4`` for Forest-Ruth, reversibility) for improved actions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from independent_reference import (
    rand_algebra,
    rand_su3,
    retr,
    su3_action,
    su3_directional_derivative,
    su3_loops,
)

import kernels.backends as kb
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SHAPE = (4, 6, 2, 8)
BETA = 5.43
C1 = {"wilson": 0.0, "symanzik": -1.0 / 12.0, "iwasaki": -0.331, "dbw2": -1.4088, "odd": 0.137}
FAST = [n for n in kb.available_backends() if n not in ("eager", "compiled")]
#: every c1 on eager; Wilson (fused where a backend fuses) and Iwasaki (delegated to eager)
#: on the other backends
CASES = [("eager", k) for k in C1] + [(b, k) for b in FAST for k in ("wilson", "iwasaki")]


#: every test here may switch the kernel backend (conftest.py ``restore_backend``)
pytestmark = pytest.mark.usefixtures("restore_backend")


@pytest.fixture(scope="module")
def fields():
    """Two chains (one Haar-random, one near the identity) and two random directions."""
    rng = np.random.default_rng(20240607)
    u = np.stack(
        [rand_su3(rng, (4, *SHAPE)), rand_su3(rng, (4, *SHAPE), scale=0.3)]
    )  # (2, 4, *SHAPE, 3, 3)
    xs = [rand_algebra(rng, u.shape[:-2]) for _ in range(2)]
    return u, xs


@pytest.mark.parametrize(("backend", "name"), CASES, ids=[f"{b}-{k}" for b, k in CASES])
def test_action_and_force_match_the_dense_reference(fields, backend, name):
    u, xs = fields
    c1 = C1[name]
    kb.set_backend(backend)
    th = SU3Gauge(single_rank_grid(SHAPE), BETA, c1=c1)
    ut = torch.from_numpy(u)
    s_ref = su3_action(u, BETA, c1)
    np.testing.assert_allclose(th.action(ut).numpy(), s_ref, rtol=1e-13)
    f = th.force(ut).numpy()
    # traceless anti-Hermitian
    scale = np.abs(f).max()
    assert np.abs(f + np.conj(np.swapaxes(f, -1, -2))).max() < 1e-14 * scale
    assert np.abs(np.trace(f, axis1=-2, axis2=-1)).max() < 1e-14 * scale
    # d/dt S(exp(tX) U) = -2 sum Re Tr(X F)
    for x in xs if backend == "eager" else xs[:1]:
        ana = -2 * np.einsum("...ij,...ji->...", x, f).real.reshape(2, -1).sum(1)
        num = su3_directional_derivative(u, x, BETA, c1)
        np.testing.assert_allclose(ana, num, rtol=1e-7)


def test_observables_match_the_dense_reference(fields):
    u, _ = fields
    th = SU3Gauge(single_rank_grid(SHAPE), BETA)
    o = th.observables(torch.from_numpy(u))
    plaq, rect = su3_loops(u)
    vol = int(np.prod(SHAPE))

    def mean(loops):
        return sum(v.reshape(2, -1).sum(1) for v in loops) / (3 * vol * len(loops))

    line = np.broadcast_to(np.eye(3), u[:, 3, ..., 0, :, :].shape).copy()
    for t in range(SHAPE[3]):
        line = line @ u[:, 3, :, :, :, t]
    poly = np.trace(line, axis1=-2, axis2=-1).reshape(2, -1).mean(1) / 3
    expect = {
        "plaquette": mean(list(plaq.values())),
        "plaquette_spatial": mean([v for k, v in plaq.items() if k[1] != 3]),
        "plaquette_temporal": mean([v for k, v in plaq.items() if k[1] == 3]),
        "rectangle": mean(list(rect.values())),
        "link_trace": retr(u).reshape(2, -1).mean(1) / 3,
        "polyakov_re": poly.real,
        "polyakov_im": poly.imag,
        "polyakov_abs": np.abs(poly),
    }
    for k, v in expect.items():
        np.testing.assert_allclose(o[k].numpy(), v, rtol=0, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("c1", [-1.0 / 12.0, -0.331], ids=["symanzik", "iwasaki"])
def test_hmc_dh_scaling_and_reversibility_for_improved_actions(c1):
    """``|dH|`` falls by 4 per halving of the step (leapfrog, Omelyan) and by 16
    (Forest-Ruth) in the asymptotic regime; a trajectory run back returns to the start."""
    shape = (2, 4, 2, 6)
    rng = np.random.default_rng(7)
    u0 = torch.from_numpy(rand_su3(rng, (2, 4, *shape), scale=0.35))
    th = SU3Gauge(single_rank_grid(shape), 5.91, c1=c1)
    for scheme, order, steps in (("leapfrog", 2, (8, 16)), ("omelyan", 2, (4, 8)),
                                 ("forest_ruth", 4, (4, 8))):  # fmt: skip
        dh = []
        for n in steps:
            hmc = HMC(th, make_integrator(th, scheme, n, 0.5), SiteRNG(3), project=False)
            _, rec = hmc.trajectory(u0, counter=1, check_reversibility=n == steps[0])
            dh.append(rec.dH.abs().numpy())
            if n == steps[0]:
                assert float(rec.reversibility_field_error.max()) < 1e-12
                h0 = float(th.action(u0).abs().max())
                assert float(rec.reversibility_dH_error.max()) < 1e-13 * h0
        ratio = dh[0] / dh[1]
        assert np.all(np.abs(ratio / 2.0**order - 1) < 0.15), (scheme, dh, ratio)
