"""SU(3) on a distributed 4D lattice equals the single-rank result (run under mpiexec).

Every rank draws the same global fields with the site-keyed RNG on ``single_rank_grid``
(the reference) and on the distributed grid (its local block), then compares actions,
forces, kinetic energy, MD drift, gauge transformation by a distributed ``g``, every
observable (Polyakov loop included: its ordered product crosses ranks along t), the Wilson
flow E(t) and the clover charge, and one HMC trajectory, to 1e-12 relative.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from kernels.groups import haar_su_n
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge, gauge_transform
from kernels.wilson_flow import wilson_flow
from parallel import ProcessGrid, global_sum, single_rank_grid
from parallel.rng import PURPOSE_USER, SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
SHAPE = (4, 4, 4, 4)
GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],
    4: [(1, 1, 1, 4), (2, 2, 1, 1), (1, 1, 2, 2)],
}.get(SIZE, [(0, 0, 0, 0)])
TOL = 1e-12


def check(what: str, got: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> None:
    """Assert ``got == ref`` to TOL relative to max(scale, |ref|), on every rank at once."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    scale = max(scale, ref.abs().max().item())
    err = (got - ref).abs().max().item() / scale
    err = MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)
    assert err <= TOL, f"{what}: distributed differs from single rank by {err:.3e}"


def local(x: torch.Tensor, grid: ProcessGrid, first: int = 2) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


@pytest.fixture(params=GRIDS, ids=lambda g: f"grid{list(g)}")
def grids(request):
    g = request.param
    grid = ProcessGrid(SHAPE, grid=None if g == (0, 0, 0, 0) else g)
    yield grid, single_rank_grid(SHAPE)
    grid.free()


def _gauge(grid, seed=5):
    return haar_su_n(SiteRNG(seed).normal(grid, PURPOSE_USER, 0, 2, trail=(3, 3, 2)))


@pytest.mark.parametrize("action", ["wilson", "iwasaki"])  # symanzik: same code, other c1
def test_action_force_observables(grids, action):
    grid, ref_grid = grids
    dist, ref = SU3Gauge(grid, 5.7, action=action), SU3Gauge(ref_grid, 5.7, action=action)
    rng = SiteRNG(2024)
    u_ref = ref.hot_start(rng, 0, 2)
    u = dist.hot_start(rng, 0, 2)
    check("hot start", u, local(u_ref, grid))
    check("action", dist.action(u), ref.action(u_ref))
    check("force", dist.force(u), local(ref.force(u_ref), grid))
    p_ref = ref.random_momentum(rng, 1, 2)
    p = dist.random_momentum(rng, 1, 2)
    check("momentum", p, local(p_ref, grid))
    check("kinetic", dist.kinetic(p), ref.kinetic(p_ref))
    check("drift", dist.evolve_field(u, p, 0.2), local(ref.evolve_field(u_ref, p_ref, 0.2), grid))
    od, orf = dist.observables(u), ref.observables(u_ref)
    assert od.keys() == orf.keys()
    for k in orf:
        check(f"observable {k}", od[k], orf[k])
    # a distributed random gauge transformation: same transformed field, invariant action
    g_ref, g = _gauge(ref_grid), _gauge(grid)
    ug_ref = gauge_transform(u_ref, g_ref, ref_grid)
    ug = gauge_transform(u, g, grid)
    check("gauge transform", ug, local(ug_ref, grid))
    check("gauge-transformed action", dist.action(ug), ref.action(u_ref))
    check("gauge-transformed Polyakov", dist.observables(ug)["polyakov_re"], orf["polyakov_re"])
    # autograd through the distributed action: d/dt S(exp(tX) U) = -2 sum Re Tr(X F); t is
    # a parameter replicated on every rank, so its gradient is the sum of the rank parts
    t = torch.zeros((), requires_grad=True)
    (gt,) = torch.autograd.grad(dist.action(torch.linalg.matrix_exp(t * p) @ u).sum(), t)
    gt = global_sum(gt, grid)
    ana = -2 * torch.einsum("...ij,...ji->", p_ref, ref.force(u_ref)).real
    check("autograd directional derivative", gt, ana)


def test_polyakov_loop_exact_value(grids):
    """Constant diagonal temporal links, then a distributed random gauge transformation:
    the links become non-commuting matrices that differ on every site, the loop stays
    ``(1/3) sum_c exp(i L_t alpha_c)``; a factor missing or out of order breaks it."""
    grid, _ = grids
    th = SU3Gauge(grid, 6.0)
    alpha = torch.tensor([0.4, -1.3, 0.9], dtype=torch.float64)
    u = th.cold_start(2)
    u[:, 3] = torch.diag_embed(torch.polar(torch.ones(3, dtype=torch.float64), alpha))
    u = gauge_transform(u, _gauge(grid, seed=8), grid)
    expect = torch.polar(torch.ones(3, dtype=torch.float64), SHAPE[3] * alpha).mean()
    o = th.observables(u)
    check("Polyakov re", o["polyakov_re"], expect.real.expand(2))
    check("Polyakov im", o["polyakov_im"], expect.imag.expand(2))


def test_wilson_flow_and_charge(grids):
    grid, ref_grid = grids
    ref = SU3Gauge(ref_grid, 6.0)
    u_ref = ref.hot_start(SiteRNG(99), 0, 1)
    a = wilson_flow(local(u_ref, grid), grid, 0.1, 0.05, topology=True)
    b = wilson_flow(u_ref, ref_grid, 0.1, 0.05, topology=True)
    check("flowed field", a.field, local(b.field, grid))
    for k in ("e_clover", "e_plaq", "q"):
        check(k, torch.from_numpy(getattr(a, k)), torch.from_numpy(getattr(b, k)))


def test_hmc_trajectory(grids):
    grid, ref_grid = grids
    out = []
    for g in (grid, ref_grid):
        th = SU3Gauge(g, 5.7)
        hmc = HMC(th, make_integrator(th, "omelyan", 2, 0.2), SiteRNG(31))
        u = th.hot_start(SiteRNG(31), 0, 2)
        u, rec = hmc.trajectory(u, counter=1)
        out.append((u, rec))
    (u, rec), (u_ref, rec_ref) = out
    # dH = H1 - H0 is a difference of global sums of ~1e4: summation order of the ranks
    # enters at 1e-16 relative to H, so compare relative to the action
    check("HMC dH", rec.dH, rec_ref.dH, scale=rec_ref.action.abs().max().item())
    check("HMC field", u, local(u_ref, grid))
    assert torch.equal(rec.accepted, rec_ref.accepted)
