"""The pseudofermion solve cache (kernels/theories/schwinger.py): HMC trajectories are bit for
bit those without the cache, and two CG solves per term and trajectory are saved (S_F in H0
with the first force at the start field, the last force with S_F in H1 at the end field)."""

from __future__ import annotations

import pytest
import torch

from kernels.integrators import LevelSpec, make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.schwinger import Schwinger
from parallel import single_rank_grid
from parallel.rng import SiteRNG


def run(cache: bool, hasenbusch, n_traj=2):
    th = Schwinger(single_rank_grid((4, 4)), 2.0, 0.25, hasenbusch=hasenbusch, cache_solves=cache)
    solves = {t.name: 0 for t in th.pseudofermion_terms()}
    for t in th.pseudofermion_terms():
        orig = t._solve

        def counted(op, rhs, t=t, orig=orig):
            solves[t.name] += 1
            return orig(op, rhs)

        t._solve = counted
    names = tuple(t.name for t in th.pseudofermion_terms())
    levels = [LevelSpec(names, 3), LevelSpec(("gauge",), 2)]
    hmc = HMC(th, make_integrator(th, "omelyan", levels=levels), SiteRNG(7))
    theta = th.hot_start(hmc.rng, 0, 3)
    recs = []
    for c in range(1, n_traj + 1):
        theta, rec = hmc.trajectory(theta, c)
        recs.append(rec)
    return theta, recs, solves


@pytest.mark.parametrize("hasenbusch", [(), (0.2,)])
def test_cache_keeps_trajectories_bitwise_and_saves_two_solves_per_term(hasenbusch):
    theta_c, recs_c, solves_c = run(True, hasenbusch)
    theta_n, recs_n, solves_n = run(False, hasenbusch)
    assert torch.equal(theta_c, theta_n)
    for rc, rn in zip(recs_c, recs_n, strict=True):
        assert torch.equal(rc.dH, rn.dH) and torch.equal(rc.accepted, rn.accepted)
        for name in solves_c:
            it_c = rc.costs[f"{name}.cg_iterations"]
            it_n = rn.costs[f"{name}.cg_iterations"]
            assert bool((it_c < it_n).all()), (name, it_c, it_n)
    for name in solves_c:
        # refresh of a ratio term has its own solve (never cached)
        assert solves_n[name] - solves_c[name] == 2 * len(recs_c), (name, solves_c, solves_n)
    assert int(sum(r.accepted.sum() for r in recs_c)) > 0
