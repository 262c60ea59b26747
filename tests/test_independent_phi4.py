"""phi^4 action, force and observables against an independent numpy reference
(tests/independent_reference.py) at couplings the other tests do not use: the broken phase
(``beta = 0.6137``, ``lambda = 2.71``), a negative hopping coupling (``beta = -0.283``, free),
a small ``lambda``; lattices 6x10, 8x4, 2x6 (an extent-2 axis: both neighbours are the same
site), 3x5x4 and 4x6x2x8; batch 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from independent_reference import central_difference, phi4_action

from kernels.theories.phi4 import Phi4
from parallel import single_rank_grid


@pytest.mark.parametrize("shape", [(6, 10), (8, 4), (2, 6), (3, 5, 4), (4, 6, 2, 8)])
@pytest.mark.parametrize(("beta", "lam"), [(0.6137, 2.71), (-0.283, 0.0), (0.1191, 0.0371)])
def test_action_force_observables(shape, beta, lam):
    b = 3
    rng = np.random.default_rng(sum(shape) + len(shape))
    phi = 1.3 * rng.standard_normal((b, *shape))
    d = rng.standard_normal(phi.shape)
    th = Phi4(single_rank_grid(shape), beta=beta, lam=lam)
    x = torch.from_numpy(phi)
    s_ref = phi4_action(phi, beta, lam)
    np.testing.assert_allclose(th.action(x).numpy(), s_ref, rtol=1e-13)
    ana = (th.force(x).numpy() * d).reshape(b, -1).sum(1)
    num = central_difference(lambda h: phi4_action(phi + h * d, beta, lam), 1e-3)
    np.testing.assert_allclose(ana, num, rtol=1e-9)
    o = th.observables(x)
    vol, lt = int(np.prod(shape)), shape[-1]
    m = phi.reshape(b, -1).mean(1)
    np.testing.assert_allclose(o["M"].numpy(), m, atol=1e-15)
    np.testing.assert_allclose(o["V_M2"].numpy(), vol * m * m, rtol=1e-13)
    np.testing.assert_allclose(o["action"].numpy(), s_ref / vol, rtol=1e-13)
    slices = phi.reshape(b, -1, lt).sum(1)  # Phi(t): time is the last axis
    c = np.array([[np.dot(s, np.roll(s, -t)) for t in range(lt)] for s in slices]) / vol
    np.testing.assert_allclose(o["two_point"].numpy(), c, rtol=1e-12, atol=1e-14)
