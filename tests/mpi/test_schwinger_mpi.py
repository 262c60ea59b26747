"""Schwinger model on a distributed lattice equals the single-rank run (1, 2 and 4 ranks).

Grids split t (where the antiperiodic fermion boundary then crosses ranks) and x. Every rank
computes the distributed result on its block and the whole lattice on ``single_rank_grid``
and compares: D and D^+ on a spinor, CG solutions and iteration counts, the pseudofermion
heatbath and fermion forces (with Hasenbusch), one nested-time-scale HMC trajectory (dH,
decisions, field, CG costs), and the condensate / pion correlator.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from kernels.fermions import WilsonDirac, conjugate_gradient
from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.schwinger import Schwinger
from parallel import ProcessGrid, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 8)
TOL = 1e-11
GRIDS = {1: [(1, 1)], 2: [(1, 2), (2, 1)], 4: [(1, 4), (2, 2), (4, 1)]}[SIZE]


def worst(err: float) -> float:
    return MPI.COMM_WORLD.allreduce(float(err), op=MPI.MAX)


def local(x: torch.Tensor, grid: ProcessGrid, first: int = 2) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


def same_counts(what, got, ref):
    """CG dot products are grid-independent (kernels.fermions.cg.grid_independent_sum): the
    iteration counts are identical on every grid."""
    bad = worst(0.0 if torch.equal(got, ref) else 1.0)
    assert bad == 0.0, f"{what}: {got.tolist()} != {ref.tolist()}"


def check(what, got, ref, tol=TOL):
    err = worst((got - ref).abs().max().item())
    assert err <= tol, f"{what}: distributed differs from single rank by {err:.3e}"


@pytest.fixture(params=GRIDS, ids=lambda g: f"grid{list(g)}")
def grids(request):
    grid = ProcessGrid(SHAPE, grid=request.param)
    yield grid, single_rank_grid(SHAPE)
    grid.free()


def fields(batch=2):
    gen = torch.Generator().manual_seed(4)
    theta = 3.0 * (2.0 * torch.rand((batch, 2, *SHAPE), generator=gen) - 1.0)
    psi = torch.randn((batch, 2, *SHAPE), dtype=torch.complex128, generator=gen)
    return theta, psi


def test_dirac_and_cg_match_single_rank(grids):
    grid, ref_grid = grids
    theta, psi = fields()
    for bc in [("periodic", "antiperiodic"), ("periodic", "periodic")]:
        op = WilsonDirac(grid, local(theta, grid), 0.24, bc)
        ref = WilsonDirac(ref_grid, theta, 0.24, bc)
        check(f"D {bc}", op.apply(local(psi, grid)), local(ref.apply(psi), grid))
        check(f"D^+ {bc}", op.apply_dag(local(psi, grid)), local(ref.apply_dag(psi), grid))
        check(f"D_hat {bc}", op.schur(local(psi, grid)), local(ref.schur(psi), grid))
    op = WilsonDirac(grid, local(theta, grid), 0.24)
    ref = WilsonDirac(ref_grid, theta, 0.24)
    res = conjugate_gradient(op.normal, local(psi, grid), grid, tol=1e-10)
    res_ref = conjugate_gradient(ref.normal, psi, ref_grid, tol=1e-10)
    assert bool(res_ref.converged.all())
    same_counts("CG iterations", res.iterations, res_ref.iterations)
    assert torch.equal(res.converged, res_ref.converged)
    check("CG solution", res.x, local(res_ref.x, grid), 0.0)


def test_heatbath_and_forces_match_single_rank(grids):
    grid, ref_grid = grids
    theta, _ = fields()
    th = Schwinger(grid, 1.5, 0.24, hasenbusch=[0.15])
    ref = Schwinger(ref_grid, 1.5, 0.24, hasenbusch=[0.15])
    rng = SiteRNG(99)
    th.refresh(local(theta, grid), rng, 3)
    ref.refresh(theta, rng, 3)
    for t, tr in zip(th.pseudofermion_terms(), ref.pseudofermion_terms()):
        check(f"phi {t.name}", t.phi, local(tr.phi, grid), 1e-9)
    for t, tr in zip(th.action_terms(), ref.action_terms()):
        check(f"S {t.name}", t.action(local(theta, grid)), tr.action(theta), 1e-8)
        check(f"F {t.name}", t.force(local(theta, grid)), local(tr.force(theta), grid), 1e-9)
    for k, v in ref.costs().items():
        same_counts(k, th.costs()[k], v)


def test_one_trajectory_and_observables_match_single_rank(grids):
    grid, ref_grid = grids

    def run(g):
        th = Schwinger(g, 2.0, 0.25, n_noise=2)
        levels = [LevelSpec(("fermion",), 3), LevelSpec(("gauge",), 2)]
        hmc = HMC(th, make_integrator(th, "omelyan", levels=levels), SiteRNG(5))
        theta = th.hot_start(hmc.rng, 0, 3)
        recs = []
        for c in (1, 2):
            theta, rec = hmc.trajectory(theta, c)
            recs.append(rec)
        return th, theta, recs

    th, theta, recs = run(grid)
    ref, theta_ref, recs_ref = run(ref_grid)
    for a, b in zip(recs, recs_ref):
        check("dH", a.dH, b.dH, 1e-9)
        assert torch.equal(a.accepted, b.accepted)
        same_counts("cg", a.costs["fermion.cg_iterations"], b.costs["fermion.cg_iterations"])
    assert any(bool(r.accepted.any()) for r in recs_ref)
    # grid-independent CG dot products: the configurations are the same bit for bit
    check("field", theta, local(theta_ref, grid), 0.0)
    obs, obs_ref = th.observables(theta), ref.observables(theta_ref)
    assert set(obs) == set(obs_ref)
    for k in obs_ref:
        check(f"observable {k}", obs[k], obs_ref[k], 1e-9)
