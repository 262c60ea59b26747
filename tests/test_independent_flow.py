"""Wilson flow against an independent implementation (tests/independent_reference.py): the
flow generator from torch autograd through an own copy of the action, Luscher's RK3 with an
eigendecomposition exponential, the clover leaves written out as paths. Non-cubic 4x6x2x4
lattice, batch 2, Wilson and Luscher-Weisz (c1 = -1/12) flows, every kernel backend
(``vnode``'s resident flow included): links after three steps, E_clover, E_plaq and the
clover charge at every step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from independent_reference import clover_observables, flow_rk3, rand_su3

import kernels.backends as kb
from kernels.wilson_flow import t0_from_flow, w0_from_flow, wilson_flow
from parallel import single_rank_grid

SHAPE = (4, 6, 2, 4)
EPS, STEPS = 0.04, 3
BACKENDS = [n for n in kb.available_backends() if n != "compiled"]


#: every test here may switch the kernel backend (conftest.py ``restore_backend``)
pytestmark = pytest.mark.usefixtures("restore_backend")


@pytest.fixture(scope="module", params=[0.0, -1.0 / 12.0], ids=["wilson", "symanzik"])
def reference(request):
    c1 = request.param
    u = rand_su3(np.random.default_rng(31), (2, 4, *SHAPE), scale=0.6)
    path = [u]
    for _ in range(STEPS):
        path.append(flow_rk3(path[-1], EPS, c1))
    return c1, path, [clover_observables(v) for v in path]


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_steps_energies_and_charge(reference, backend):
    c1, path, obs = reference
    kb.set_backend(backend)
    res = wilson_flow(
        torch.from_numpy(path[0]), single_rank_grid(SHAPE), STEPS * EPS, EPS, topology=True, c1=c1
    )
    np.testing.assert_allclose(res.field.numpy(), path[-1], rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.t, EPS * np.arange(STEPS + 1), atol=1e-15)
    for i, (e, ep, q) in enumerate(obs):
        np.testing.assert_allclose(res.e_clover[i], e, rtol=1e-13)
        np.testing.assert_allclose(res.e_plaq[i], ep, rtol=1e-13)
        np.testing.assert_allclose(res.q[i], q, rtol=0, atol=1e-13)
    assert np.all(np.diff(res.e_plaq, axis=0) < 0)  # the flow smooths


def test_t0_and_w0_on_a_known_curve():
    """``t^2 E = a t^2 + b t``: ``t0`` solves ``a t^2 + b t = 0.3``, ``W = t (2 a t + b)``;
    linear interpolation on a grid of 0.01 is good to ~1e-5."""
    t = np.arange(101) * 0.01
    y = np.stack([0.5 * t**2 + 0.1 * t, 0.7 * t**2], axis=1)
    np.testing.assert_allclose(
        t0_from_flow(t, y), [-0.1 + np.sqrt(0.01 + 0.6), np.sqrt(0.3 / 0.7)], atol=2e-5
    )
    np.testing.assert_allclose(w0_from_flow(t, y), [np.sqrt(0.5), (0.3 / 1.4) ** 0.25], atol=2e-5)
