"""phi^4 and U(1) on a distributed lattice equal the single-rank result (run under mpiexec).

Every rank builds the same global fields (a seeded torch generator, or the site-keyed RNG),
evaluates the theory on its local block of a distributed grid and on the whole lattice with
``single_rank_grid``, and compares action, force, autograd gradient and every observable to
1e-12. Errors are max-reduced over all ranks before asserting, so every rank fails together.
"""

from __future__ import annotations

import math

import pytest
import torch
from mpi4py import MPI

from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge, wrap_angle
from parallel import ProcessGrid, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
GRIDS = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (2, 2), (1, 4)]}.get(SIZE, [(0, 0)])
#: every grid above divides at least one shape, and each grid meets an odd local extent
SHAPES = [(6, 10), (12, 20)]
CASES = [
    (g, s) for g in GRIDS for s in SHAPES if all(n % p == 0 for n, p in zip(s, g)) or g == (0, 0)
]
TOL = 1e-12


def check(grid: ProcessGrid, what: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    """Assert ``got == ref`` to TOL (relative to max(1, |ref|)) on every rank at once."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    err = ((got - ref).abs().max().item() if ref.numel() else 0.0) / scale
    err = MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)
    assert err <= TOL, f"{what}: distributed differs from single rank by {err:.3e}"


def local(x: torch.Tensor, grid: ProcessGrid, first: int) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


@pytest.fixture(params=CASES, ids=lambda c: f"grid{list(c[0])}-L{list(c[1])}")
def grids(request):
    g, shape = request.param
    grid = ProcessGrid(shape, grid=None if g == (0, 0) else g)
    yield grid, single_rank_grid(shape)
    grid.free()


# ------------------------------------------------------------------ phi^4
def test_phi4_matches_single_rank(grids):
    grid, ref_grid = grids
    shape = grid.shape
    dist, ref = Phi4(grid, beta=0.43, lam=0.8), Phi4(ref_grid, beta=0.43, **{"lambda": 0.8})
    gen = torch.Generator().manual_seed(17)
    phi = torch.randn((3, *shape), generator=gen) + 0.3  # nonzero M
    pi = torch.randn((3, *shape), generator=gen)
    phi_loc, pi_loc = local(phi, grid, 1), local(pi, grid, 1)

    check(grid, "action", dist.action(phi_loc), ref.action(phi))
    check(grid, "force", dist.force(phi_loc), local(ref.force(phi), grid, 1))
    check(grid, "kinetic", dist.kinetic(pi_loc), ref.kinetic(pi))
    check(
        grid,
        "drift",
        dist.evolve_field(phi_loc, pi_loc, 0.3),
        local(ref.evolve_field(phi, pi, 0.3), grid, 1),
    )
    # autograd through the distributed action is the analytic single-rank force
    x = phi_loc.clone().requires_grad_()
    (g,) = torch.autograd.grad(dist.action(x).sum(), x)
    check(grid, "autograd force", g, local(ref.force(phi), grid, 1))
    # observables, including the time-slice correlator and gradients through it
    od, orf = dist.observables(phi_loc), ref.observables(phi)
    assert od.keys() == orf.keys()
    for k in orf:
        check(grid, f"observable {k}", od[k], orf[k])
    x = phi_loc.clone().requires_grad_()
    w = torch.linspace(0.5, 1.5, shape[-1])
    (g,) = torch.autograd.grad((dist.two_point(x) * w).sum(), x)
    y = phi.clone().requires_grad_()
    (gr,) = torch.autograd.grad((ref.two_point(y) * w).sum(), y)
    check(grid, "two_point gradient", g, local(gr, grid, 1))


def test_phi4_random_fields_match_single_rank(grids):
    grid, ref_grid = grids
    dist, ref = Phi4(grid, beta=0.3, lam=0.1), Phi4(ref_grid, beta=0.3, lam=0.1)
    rng = SiteRNG(2024)
    check(grid, "hot start", dist.hot_start(rng, 4, 2), local(ref.hot_start(rng, 4, 2), grid, 1))
    check(
        grid,
        "momenta",
        dist.random_momentum(rng, 9, 2, chain_offset=3),
        local(ref.random_momentum(rng, 9, 2, chain_offset=3), grid, 1),
    )
    check(grid, "cold start", dist.cold_start(2), local(ref.cold_start(2), grid, 1))


# ------------------------------------------------------------------ U(1)
def test_u1_matches_single_rank(grids):
    grid, ref_grid = grids
    shape = grid.shape
    dist, ref = U1Gauge(grid, beta=1.6), U1Gauge(ref_grid, beta=1.6)
    gen = torch.Generator().manual_seed(5)
    theta = 6.0 * torch.rand((3, 2, *shape), generator=gen) - 3.0
    pi = torch.randn((3, 2, *shape), generator=gen)
    th_loc, pi_loc = local(theta, grid, 2), local(pi, grid, 2)

    check(grid, "action", dist.action(th_loc), ref.action(theta))
    check(grid, "force", dist.force(th_loc), local(ref.force(theta), grid, 2))
    check(grid, "kinetic", dist.kinetic(pi_loc), ref.kinetic(pi))
    check(
        grid,
        "plaquette angles",
        dist.plaquette_angles(th_loc),
        local(ref.plaquette_angles(theta), grid, 2),
    )
    check(grid, "project", dist.project(th_loc), local(ref.project(theta), grid, 2))
    x = th_loc.clone().requires_grad_()
    (g,) = torch.autograd.grad(dist.action(x).sum(), x)
    check(grid, "autograd force", g, local(ref.force(theta), grid, 2))
    od, orf = dist.observables(th_loc), ref.observables(theta)
    assert od.keys() == orf.keys() >= {"plaquette", "Q", "Q_int", "Q2"}
    for k in orf:
        check(grid, f"observable {k}", od[k], orf[k])
    q = od["Q_int"]
    check(grid, "Q_int is an integer", q, q.round())


def test_u1_instanton_distributed(grids):
    """The constant-field-strength configuration (tests/test_u1.py) has Q_int = q on any grid."""
    grid, _ = grids
    shape = grid.shape
    l0, l1 = shape
    vol = l0 * l1
    dist = U1Gauge(grid, beta=1.0)
    qs = torch.tensor([-2.0, 1.0, 3.0])
    x, t = torch.meshgrid(torch.arange(l0), torch.arange(l1), indexing="ij")
    th0 = -2 * math.pi * qs[:, None, None] * t / vol
    th1 = torch.where(t == l1 - 1, 2 * math.pi * qs[:, None, None] * x / l0, 0.0)
    theta = local(torch.stack([th0, th1], dim=1), grid, 2)
    obs = dist.observables(theta)
    check(grid, "instanton Q_int", obs["Q_int"], qs)
    angle = 2 * math.pi * qs / vol
    check(grid, "instanton Q", obs["Q"], vol * torch.sin(angle) / (2 * math.pi))
    p = wrap_angle(dist.plaquette_angles(theta))
    check(grid, "instanton plaquettes", p, angle.view(3, 1, 1, 1).expand_as(p))


def test_u1_random_fields_match_single_rank(grids):
    grid, ref_grid = grids
    dist, ref = U1Gauge(grid, beta=0.7), U1Gauge(ref_grid, beta=0.7)
    rng = SiteRNG(77)
    check(grid, "hot start", dist.hot_start(rng, 1, 2), local(ref.hot_start(rng, 1, 2), grid, 2))
    check(
        grid,
        "momenta",
        dist.random_momentum(rng, 8, 2, chain_offset=1),
        local(ref.random_momentum(rng, 8, 2, chain_offset=1), grid, 2),
    )
