"""Distributed results against the independent global references of
tests/independent_reference.py (run under mpiexec with 1, 2 and 4 ranks): every rank builds
the global field and the reference with numpy, hands its block to the application and
compares with its slice of the reference. The process grids split the antiperiodic time
axis and leave local extents of 1 and 2 on split axes (a rectangle then spans three ranks).

SU(3) (4x6x2x8, Wilson and Iwasaki, eager and vnode): action, force along random
directions against numerical derivatives of the dense action, one RK3 Wilson-flow step and
the clover observables. Schwinger (8x4, one Hasenbusch mass): ``D`` and ``D^+`` on a spinor,
each pseudofermion action and force against the dense matrix. U(1) (6x10): action, force.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from independent_reference import (
    central_difference,
    clover_observables,
    dense_dirac,
    flow_rk3,
    from_dense,
    pseudofermion_action,
    rand_algebra,
    rand_su3,
    su3_action,
    su3_directional_derivative,
    to_dense,
    u1_action,
)
from mpi4py import MPI

import kernels.backends as kb
from kernels.theories.schwinger import Schwinger
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from kernels.wilson_flow import wilson_flow
from parallel import ProcessGrid

COMM = MPI.COMM_WORLD
SIZE = COMM.Get_size()
GRIDS_4D = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (1, 1, 2, 1)],
    4: [(2, 1, 1, 2), (1, 2, 2, 1), (1, 1, 1, 4)],
}.get(SIZE, [])
GRIDS_2D = {1: [(1, 1)], 2: [(1, 2), (2, 1)], 4: [(1, 4), (2, 2), (4, 1)]}.get(SIZE, [])
SU3_SHAPE = (4, 6, 2, 8)


#: every test here may switch the kernel backend (conftest.py ``restore_backend``)
pytestmark = pytest.mark.usefixtures("restore_backend")


def _grid(shape, g):
    grid = ProcessGrid(shape, grid=g)
    yield grid
    grid.free()


@pytest.fixture(params=GRIDS_4D, ids=lambda g: f"grid{list(g)}")
def grid4(request):
    yield from _grid(SU3_SHAPE, request.param)


@pytest.fixture(params=GRIDS_2D, ids=lambda g: f"grid{list(g)}")
def grid2(request):
    yield from _grid((8, 4), request.param)


def _local(a: np.ndarray, grid: ProcessGrid, first: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a[(slice(None),) * first + grid.local_slices()]))


def _global(local_sum: np.ndarray) -> np.ndarray:
    return COMM.allreduce(local_sum, op=MPI.SUM)


def _all_ok(err: float, tol: float, what: str) -> None:
    err = COMM.allreduce(err, op=MPI.MAX)
    assert err <= tol, f"{what}: {err:.3e} > {tol:.1e}"


@pytest.mark.parametrize("backend", ["eager", "vnode"])
@pytest.mark.parametrize("c1", [0.0, -0.331], ids=["wilson", "iwasaki"])
def test_su3_action_force(grid4, backend, c1):
    if backend not in kb.available_backends():
        pytest.skip(f"{backend} not available")
    kb.set_backend(backend)
    rng = np.random.default_rng(17)
    u = np.stack([rand_su3(rng, (4, *SU3_SHAPE)), rand_su3(rng, (4, *SU3_SHAPE), scale=0.3)])
    x = rand_algebra(rng, u.shape[:-2])
    th = SU3Gauge(grid4, 5.43, c1=c1)
    ut = _local(u, grid4, 2)
    s_ref = su3_action(u, 5.43, c1)
    _all_ok(float(np.abs(th.action(ut).numpy() / s_ref - 1).max()), 1e-13, "action")
    f = th.force(ut).numpy()
    xl = _local(x, grid4, 2).numpy()
    ana = _global(-2 * np.einsum("...ij,...ji->...", xl, f).real.reshape(2, -1).sum(1))
    num = su3_directional_derivative(u, x, 5.43, c1)
    _all_ok(float(np.abs(ana / num - 1).max()), 1e-7, "force . X")


@pytest.mark.parametrize("backend", ["eager", "vnode"])
def test_su3_flow_step_and_clover(backend):
    if backend not in kb.available_backends():
        pytest.skip(f"{backend} not available")
    kb.set_backend(backend)
    shape = (4, 6, 2, 4)
    u = rand_su3(np.random.default_rng(31), (2, 4, *shape), scale=0.6)
    ref = flow_rk3(u, 0.05)
    obs = [clover_observables(v) for v in (u, ref)]
    for g in GRIDS_4D:
        if any(n % p for n, p in zip(shape, g)):
            continue
        for grid in _grid(shape, g):
            res = wilson_flow(_local(u, grid, 2), grid, 0.05, 0.05, topology=True)
            err = float(np.abs(res.field.numpy() - _local(ref, grid, 2).numpy()).max())
            _all_ok(err, 1e-13, f"flowed links {g}")
            for i, (e, ep, q) in enumerate(obs):
                np.testing.assert_allclose(res.e_clover[i], e, rtol=1e-13)
                np.testing.assert_allclose(res.e_plaq[i], ep, rtol=1e-13)
                np.testing.assert_allclose(res.q[i], q, rtol=0, atol=1e-13)


def test_schwinger_operator_and_pseudofermion_forces(grid2):
    shape, kappa, beta, hb = (8, 4), 0.2731, 0.83, (0.19,)
    rng = np.random.default_rng(23)
    theta = rng.uniform(-np.pi, np.pi, (2, 2, *shape))
    psi = rng.standard_normal((2, 2, *shape)) + 1j * rng.standard_normal((2, 2, *shape))
    d = rng.standard_normal(theta.shape)
    th = Schwinger(grid2, beta, kappa, hasenbusch=hb, cg_tol=1e-13)
    tt = _local(theta, grid2, 2)
    op = th.dirac(tt)
    sl = (slice(None),) + grid2.local_slices()
    for b in range(2):
        mat = dense_dirac(theta[b], kappa)
        for got, ref in (
            (op.apply(_local(psi, grid2, 2))[b], mat @ to_dense(psi[b])),
            (op.apply_dag(_local(psi, grid2, 2))[b], mat.conj().T @ to_dense(psi[b])),
        ):
            err = float(np.abs(got.numpy() - from_dense(ref, *shape)[sl]).max())
            _all_ok(err, 1e-12, "D / D^+ on a spinor")
    kappas, lower = [*hb, kappa], [None, *hb]
    for j, term in enumerate(th.pseudofermion_terms()):
        phi = rng.standard_normal((2, 2, *shape)) + 1j * rng.standard_normal((2, 2, *shape))
        term.phi = _local(phi, grid2, 2)
        term._cache = None

        def s_ref(t, j=j, phi=phi):
            return np.array(
                [pseudofermion_action(t[b], phi[b], kappas[j], lower[j]) for b in (0, 1)]
            )

        _all_ok(float(np.abs(term.action(tt).numpy() / s_ref(theta) - 1).max()), 1e-10, "S_F")
        ana = _global((term.force(tt).numpy() * _local(d, grid2, 2).numpy()).reshape(2, -1).sum(1))
        num = central_difference(lambda h, s=s_ref: s(theta + h * d), 1e-3)
        _all_ok(float(np.abs(ana / num - 1).max()), 1e-7, f"{term.name} force . d")


def test_u1_action_force():
    shape, beta = (6, 10), 1.913
    rng = np.random.default_rng(3)
    theta = rng.uniform(-np.pi, np.pi, (3, 2, *shape))
    d = rng.standard_normal(theta.shape)
    num = central_difference(lambda h: u1_action(theta + h * d, beta), 1e-3)
    for g in GRIDS_2D:
        if any(n % p for n, p in zip(shape, g)):
            continue
        for grid in _grid(shape, g):
            th = U1Gauge(grid, beta)
            x = _local(theta, grid, 2)
            s = th.action(x).numpy()
            _all_ok(float(np.abs(s / u1_action(theta, beta) - 1).max()), 1e-13, "U(1) action")
            ana = _global((th.force(x).numpy() * _local(d, grid, 2).numpy()).reshape(3, -1).sum(1))
            _all_ok(float(np.abs(ana / num - 1).max()), 1e-8, "U(1) force . d")
