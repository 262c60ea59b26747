"""HMC on a distributed lattice equals the single-rank run (launched with 1, 2 and 4 ranks).

Every rank runs the same few trajectories twice: on its block of a distributed
:class:`ProcessGrid` and on the whole lattice with ``single_rank_grid``, from the same
site-keyed start, and compares dH (1e-12), the accept decisions (equal), the field (1e-12 on
the local block) and the reversibility errors. Replica groups (``replicas=2``) run other
chains (``chain_offset = replica * B``), each equal to the single-rank run of those chains.
Errors are max-reduced over all ranks before asserting, so all ranks fail together.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from kernels.integrators import Integrator, Level, make_integrator
from kernels.samplers.hmc import HMC, NonFiniteTrajectoryWarning
from kernels.theories.phi4 import Phi4
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, single_rank_grid
from parallel.rng import SiteRNG

SIZE = MPI.COMM_WORLD.Get_size()
TOL = 1e-12
SEED = 8642
BATCH = 3

GRIDS_2D = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (2, 2), (1, 4)]}[SIZE]
GRIDS_4D = {1: [(1, 1, 1, 1)], 2: [(1, 1, 1, 2), (2, 1, 1, 1)], 4: [(1, 2, 1, 2), (2, 1, 1, 2)]}[
    SIZE
]


def make_theory(name: str, grid: ProcessGrid):
    if name == "phi4":
        return Phi4(grid, beta=0.55, lam=0.7)
    if name == "u1":
        return U1Gauge(grid, beta=1.7)
    return SU3Gauge(grid, beta=5.8)


SHAPES = {"phi4": (8, 12), "u1": (4, 8), "su3": (2, 2, 2, 4)}
CASES = [("phi4", g) for g in GRIDS_2D] + [("u1", g) for g in GRIDS_2D]
CASES += [("su3", g) for g in GRIDS_4D]


def worst(err: float) -> float:
    return MPI.COMM_WORLD.allreduce(float(err), op=MPI.MAX)


def check(what: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape, f"{what}: {tuple(got.shape)} != {tuple(ref.shape)}"
    err = worst((got - ref).abs().max().item() if ref.numel() else 0.0)
    assert err <= TOL, f"{what}: distributed differs from single rank by {err:.3e}"


def same(what: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    bad = worst(0.0 if torch.equal(got, ref) else 1.0)
    assert bad == 0.0, f"{what}: {got.tolist()} != {ref.tolist()}"


def local(x: torch.Tensor, grid: ProcessGrid, first: int) -> torch.Tensor:
    return x[(slice(None),) * first + grid.local_slices()].contiguous()


def integrator_for(theory, nested: bool) -> Integrator:
    if not nested:
        return make_integrator(theory, "omelyan", 3, 0.8)
    # two time scales: 0.4 S outside (leapfrog), 0.6 S inside (omelyan, 2 per drift)
    outer = Level(lambda x: 0.4 * theory.force(x), 2, scheme="leapfrog")
    inner = Level(lambda x: 0.6 * theory.force(x), 2)
    return Integrator(theory, [outer, inner], scheme="omelyan", trajectory_length=0.8)


def run(theory, field, n_traj, chain_offset=0, nested=False, tune=False):
    hmc = HMC(
        theory,
        integrator_for(theory, nested),
        SiteRNG(SEED),
        reversibility_every=2,
        target_acceptance=0.9 if tune else None,
    )
    recs = []
    for counter in range(1, n_traj + 1):
        field, rec = hmc.trajectory(field, counter, chain_offset, tune=tune)
        recs.append(rec)
    return field, recs, hmc


def compare_runs(name, grid, ref_grid, n_traj, chain_offset=0, nested=False, tune=False):
    dist, ref = make_theory(name, grid), make_theory(name, ref_grid)
    rng = SiteRNG(SEED)
    f_dist = dist.hot_start(rng, 0, BATCH, chain_offset)
    f_ref = ref.hot_start(rng, 0, BATCH, chain_offset)
    check("start", f_dist, local(f_ref, grid, dist.first))
    f_dist, r_dist, h_dist = run(dist, f_dist, n_traj, chain_offset, nested, tune)
    f_ref, r_ref, h_ref = run(ref, f_ref, n_traj, chain_offset, nested, tune)
    for t, (a, b) in enumerate(zip(r_dist, r_ref)):
        check(f"{name} traj {t} dH", a.dH, b.dH)
        same(f"{name} traj {t} accepted", a.accepted, b.accepted)
        check(f"{name} traj {t} action", a.action, b.action)
        assert a.n_steps == b.n_steps and worst(a.n_steps) == a.n_steps
        assert a.force_evaluations == b.force_evaluations
        if b.reversibility_field_error is not None:
            assert worst(a.reversibility_field_error.max()) < 1e-10
            assert worst(a.reversibility_dH_error.max()) < 1e-10
    check(f"{name} field", f_dist, local(f_ref, grid, dist.first))
    sd, sr = h_dist.state_dict(), h_ref.state_dict()
    assert sd.pop("tuner") == pytest.approx(sr.pop("tuner")) and sd == sr
    # the test is not vacuous: something was accepted and the field moved
    assert any(bool(r.accepted.any()) for r in r_ref)
    return r_dist


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-grid{list(c[1])}")
def test_trajectories_match_single_rank(case):
    name, g = case
    grid = ProcessGrid(SHAPES[name], grid=g)
    try:
        compare_runs(name, grid, single_rank_grid(SHAPES[name]), 3 if name != "su3" else 2)
    finally:
        grid.free()


@pytest.mark.parametrize("name", ["phi4", "u1"])
def test_nested_integrator_and_tuning_match_single_rank(name):
    grid = ProcessGrid(SHAPES[name], grid=GRIDS_2D[-1])
    try:
        recs = compare_runs(name, grid, single_rank_grid(SHAPES[name]), 4, nested=True, tune=True)
        assert len({r.n_steps for r in recs}) > 1  # the tuner did change the step count
    finally:
        grid.free()


@pytest.mark.skipif(SIZE == 1, reason="replica groups need >= 2 ranks")
@pytest.mark.parametrize("name", ["phi4", "u1"])
def test_replicas_match_single_rank(name):
    grid = ProcessGrid(SHAPES[name], replicas=2)
    try:
        offset = grid.replica * BATCH
        recs = compare_runs(name, grid, single_rank_grid(SHAPES[name]), 3, chain_offset=offset)
        # the two replica groups ran different chains
        dh = torch.stack([r.dH for r in recs])
        other = grid.replica_comm.allgather(dh)
        assert not torch.equal(other[0], other[1])
    finally:
        grid.free()


@pytest.mark.skipif(SIZE == 1, reason="replica groups need >= 2 ranks")
def test_tuning_with_replicas_keeps_one_step_size():
    """The tuner averages the acceptance over all replicas: every rank has the same step
    count, the one of a single rank holding all chains of both replicas in one batch."""
    shape = SHAPES["phi4"]
    grid = ProcessGrid(shape, replicas=2)
    try:
        theory, ref = make_theory("phi4", grid), make_theory("phi4", single_rank_grid(shape))
        rng = SiteRNG(SEED)
        field = theory.hot_start(rng, 0, BATCH, grid.replica * BATCH)
        f_all = ref.hot_start(rng, 0, 2 * BATCH)
        _, recs, hmc = run(theory, field, 6, grid.replica * BATCH, tune=True)
        _, recs_all, hmc_all = run(ref, f_all, 6, 0, tune=True)
        steps = [r.n_steps for r in recs]
        assert steps == [r.n_steps for r in recs_all]
        assert MPI.COMM_WORLD.allgather(steps) == [steps] * SIZE
        assert hmc.n_steps == hmc_all.n_steps
    finally:
        grid.free()


class NaNAtOneSite(Phi4):
    """Force NaN at global site (0, 0) of chain 1: only the rank owning it sees the NaN."""

    def force(self, phi):
        f = super().force(phi)
        if self.grid.offset == (0, 0):
            f = f.clone()
            f[1, 0, 0] = float("nan")
        return f


def test_nonfinite_on_one_rank_rejects_everywhere():
    shape = SHAPES["phi4"]
    grid = ProcessGrid(shape, grid=GRIDS_2D[-1])
    try:
        theory = NaNAtOneSite(grid, beta=0.55, lam=0.7)
        rng = SiteRNG(SEED)
        field = theory.hot_start(rng, 0, BATCH)
        hmc = HMC(theory, make_integrator(theory, "leapfrog", 2), rng)
        if grid.is_root:
            with pytest.warns(NonFiniteTrajectoryWarning):
                new, rec = hmc.trajectory(field, 1)
        else:
            new, rec = hmc.trajectory(field, 1)
        same("nonfinite", rec.nonfinite, torch.tensor([False, True, False]))
        assert rec.n_nonfinite == 1 and not bool(rec.accepted[1])
        same("kept chain 1", new[1], field[1])
    finally:
        grid.free()
