"""Per-trajectory cost model for SU(3) (trivialized) HMC on 1 .. 10^4 GPUs (docs/scaling.md).

    python benchmarks/scaling_model.py                       # Frontier-like defaults
    python benchmarks/scaling_model.py --machine aurora --ratio 20
    python benchmarks/scaling_model.py --check-vm            # the dev-VM parameters, 1/2/4 ranks
    python benchmarks/scaling_model.py --check-vm --vm-local 16 --vm-traj1 0.51   # 16^4 per rank

Model (one trajectory, Omelyan 2MN with ``n`` steps: ``N_f = 2 n + 1`` force evaluations; the
trivialized force costs ``r`` plain forces in compute *and* in halo exchanges, since every
stout/flow layer needs its own link halo forward and backward)::

    T_traj   = N_f r [ T_comp + T_comm ]               (no overlap)
             = N_f r max(T_comp, T_comm) + N_f r alpha  (interior/boundary overlap)
    T_comp   = V_loc t_site
    T_comm   = sum_{split axes mu} 2 [ alpha + h (V_loc / L_mu) Nd 144 B / beta ]
    T_grad   = 2 P 8 B / beta + 2 log2(N) alpha         (flow training, per optimiser step)
    T_io     = V 576 B / min(N b_io, B_fs) / n_save      (ILDG double, amortised)

``t_site``: seconds per site for one plain Wilson force: on a GPU the fused kernel at a
fraction ``f`` of the HBM roofline (compulsory 1152 B/site), eager torch at ~20 KB/site of
temporaries (measured on the CPU: the staple algorithm streams ~20 KB per site). ``h``: link
faces moved per force (1 with one padded halo per force, ~3 for the eager shifts). The
decomposition halves the longest local axis first and keeps local extents >= 4.
"""

from __future__ import annotations

import argparse
import math

MACHINES = {
    # per GPU unit (Frontier: one MI250X GCD; Aurora: one PVC stack); inter-node bandwidth per
    # unit = Slingshot-11 200 Gb/s NICs per node / units per node
    "frontier": dict(hbm=1.6e12, beta=4 * 25e9 / 8, mem=64e9),
    "aurora": dict(hbm=1.6e12, beta=8 * 25e9 / 12, mem=64e9),
}
LATTICES = [(32, 32, 32, 64), (48, 48, 48, 96), (64, 64, 64, 128), (96, 96, 96, 192)]
GPUS = [1, 8, 64, 512, 4096, 10000]


def decompose(shape: tuple[int, ...], n: int) -> tuple[list[int], list[int]] | None:
    """Process grid for ``n`` ranks (powers of small primes): split the longest local axis."""
    grid, local = [1] * len(shape), list(shape)
    rest = n
    for p in (2, 3, 5):
        while rest % p == 0:
            mu = max(
                (m for m in range(len(shape)) if local[m] % p == 0 and local[m] // p >= 4),
                key=lambda m: local[m],
                default=None,
            )
            if mu is None:
                return None
            grid[mu] *= p
            local[mu] //= p
            rest //= p
    return (grid, local) if rest == 1 else None


def traj_time(shape, n, a) -> dict | None:
    dec = decompose(shape, n)
    if dec is None:
        return None
    grid, local = dec
    v_loc = math.prod(local)
    if v_loc * 576 * a.mem_factor > a.mem:
        return {"fits": False, "local": local}
    t_comp = v_loc * a.t_site
    t_comm = sum(
        2 * (a.alpha + a.h * (v_loc / local[m]) * 4 * 144 / a.beta) for m in range(4) if grid[m] > 1
    )
    nf = (2 * a.steps + 1) * a.ratio
    t_io = math.prod(shape) * 576 / min(n * 2e9, 1e12) / a.save_every
    return {
        "fits": True,
        "local": local,
        "comp": nf * t_comp,
        "comm": nf * t_comm,
        "serial": nf * (t_comp + t_comm) + t_io,
        "overlap": nf * max(t_comp, t_comm) + (nf * a.alpha if t_comm else 0.0) + t_io,
        "io": t_io,
    }


def crossover_extent(t_site: float, alpha: float, beta: float, h: float, split: int) -> float:
    """Local extent ``L`` of an ``L^4`` block at which one force's halo time equals its compute
    time with ``split`` axes split: ``L^4 t_site = split * 2 (alpha + h L^3 576 B / beta)``
    (bisection; below this ``L`` communication dominates)."""
    lo, hi = 1.0, 4096.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        comp = mid**4 * t_site
        comm = split * 2 * (alpha + h * mid**3 * 4 * 144 / beta)
        lo, hi = (mid, hi) if comm > comp else (lo, mid)
    return 0.5 * (lo + hi)


def vm_check(a) -> None:
    """The dev VM in the same formulas, calibrated on the measured one-rank trajectory, against
    the measured 1 -> 2 -> 4 rank trajectories (benchmarks/bench_halo_fraction.py)."""
    local = (a.vm_local,) * 4
    v = math.prod(local)
    nf = 2 * a.vm_steps + 1  # force evaluations per Omelyan trajectory
    nx = nf + 2  # exchanges per trajectory: one per force + the two action evaluations
    face = v // local[0] * 4 * 144  # bytes of one link face (4 links x 144 B per site)
    print(
        f"# dev VM model: local {a.vm_local}^4, grid N x 1 x 1 x 1, Omelyan {a.vm_steps} steps "
        f"({nf} forces), t_traj(1 rank) {a.vm_traj1:.2f} s measured -> "
        f"{1e6 * a.vm_traj1 / (nf * v):.1f} us/site/force; alpha {1e6 * a.vm_alpha:.0f} us, "
        f"beta {a.vm_beta / 1e9:.2f} GB/s, "
        f"{a.vm_cores} cores"
    )
    print(f"{'ranks':>5} {'model s':>8} {'model ovl':>9} {'halo %':>7} {'weak eff':>8}")
    for n in (1, 2, 4):
        comp = a.vm_traj1 * max(1.0, n / a.vm_cores)
        comm = 0.0 if n == 1 else nx * (a.vm_alpha + face / a.vm_beta)
        serial = comp + comm
        ovl = max(comp, comm) + (nx * a.vm_alpha if comm else 0.0)
        print(
            f"{n:>5} {serial:>8.3f} {ovl:>9.3f} {100 * comm / serial:>6.1f}% "
            f"{100 * a.vm_traj1 / ovl:>7.0f}%"
        )
    print("# local L^4 below which the halo of one VM force outlasts its compute")
    t_site = a.vm_traj1 / (nf * v)
    print(f"{'split axes':>10} {'L*':>8}")
    for k in (1, 2, 4):
        print(f"{k:>10} {crossover_extent(t_site, a.vm_alpha, a.vm_beta, 1.0, k):>8.1f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machine", choices=sorted(MACHINES), default="frontier")
    ap.add_argument("--fused", type=float, default=0.5, help="fraction f of the HBM roofline")
    ap.add_argument("--eager", action="store_true", help="eager torch kernels (20 KB/site)")
    ap.add_argument("--ratio", type=float, default=5.0, help="trivialized / plain force cost r")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=20e-6, help="fixed cost per halo message (s)")
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--mem-factor", type=float, default=40.0, help="field copies in memory")
    ap.add_argument("--check-vm", action="store_true")
    # dev-VM inputs (docs/performance.md, halo section, 2026-12-03): measured 1-rank s/traj,
    # fixed cost and bandwidth of one face exchange on 2 ranks
    ap.add_argument("--vm-traj1", type=float, default=2.4, help="measured s/traj, 1 rank")
    ap.add_argument("--vm-steps", type=int, default=3)
    ap.add_argument("--vm-alpha", type=float, default=17e-6, help="s per exchange (software)")
    ap.add_argument("--vm-beta", type=float, default=10e9, help="B/s shared-memory MPI")
    ap.add_argument("--vm-cores", type=float, default=2.0)
    ap.add_argument("--vm-local", type=int, default=8, help="local extent L (L^4 per rank)")
    a = ap.parse_args(argv)
    m = MACHINES[a.machine]
    a.beta, a.mem = m["beta"], m["mem"]
    a.t_site = (20e3 / m["hbm"]) if a.eager else 1152 / (a.fused * m["hbm"])
    a.h = 3.0 if a.eager else 1.0
    if a.check_vm:
        vm_check(a)
        return
    print(
        f"# {a.machine}: HBM {m['hbm'] / 1e12:.1f} TB/s, inter-node {a.beta / 1e9:.1f} GB/s/GPU, "
        f"alpha {a.alpha * 1e6:.0f} us, t_site {a.t_site * 1e9:.2f} ns "
        f"({'eager' if a.eager else f'fused at {a.fused:.0%} of roofline'}), r = {a.ratio:g}, "
        f"N_f = {2 * a.steps + 1}"
    )
    print(
        f"{'lattice':>14} {'GPUs':>6} {'local':>16} {'s/traj':>9} {'s/traj(ovl)':>11} "
        f"{'comm %':>7} {'strong eff':>10}"
    )
    for shape in LATTICES:
        base, dominated = None, None
        for n in GPUS:
            r = traj_time(shape, n, a)
            name = "x".join(map(str, shape))
            if r is None:
                print(f"{name:>14} {n:>6} {'(no decomposition with local extents >= 4)':>45}")
                continue
            loc = "x".join(map(str, r["local"]))
            if not r["fits"]:
                print(f"{name:>14} {n:>6} {loc:>16} {'(does not fit in memory)':>30}")
                continue
            if base is None:
                base = (n, r["overlap"])
            eff = base[1] * base[0] / (r["overlap"] * n)
            frac = r["comm"] / (r["comp"] + r["comm"])
            if frac > 0.5 and dominated is None:
                dominated = (n, loc)
            print(
                f"{name:>14} {n:>6} {loc:>16} {r['serial']:>9.3f} {r['overlap']:>11.3f} "
                f"{100 * frac:>6.0f}% {100 * eff:>9.0f}%"
            )
        if dominated:
            n_dom, loc_dom = dominated
            print(f"{'':>14} communication > compute from {n_dom} GPUs (local {loc_dom})")
    print("# local L^4 below which the halo of one force outlasts its compute (comm dominates)")
    print(f"{'split axes':>10} {'L*':>8}")
    for k in (1, 2, 4):
        print(f"{k:>10} {crossover_extent(a.t_site, a.alpha, a.beta, a.h, k):>8.1f}")
    print("# weak scaling: fixed local volume, every axis split once N >= 16 (4 faces pairs)")
    print(f"{'local':>10} {'GPUs':>6} {'s/traj(ovl)':>11} {'comm %':>7} {'weak eff':>9}")
    for L in (8, 16, 24, 32):
        t1 = None
        for n in (1, 2, 16, 10000):
            split = min(4, max(0, round(math.log2(n)))) if n > 1 else 0
            v = L**4
            comp = v * a.t_site
            comm = split * 2 * (a.alpha + a.h * L**3 * 4 * 144 / a.beta)
            nf = (2 * a.steps + 1) * a.ratio
            t = nf * max(comp, comm) + (nf * a.alpha if comm else 0.0)
            t1 = t if t1 is None else t1
            frac = comm / (comp + comm)
            print(f"{L:>8}^4 {n:>6} {t:>11.4f} {100 * frac:>6.0f}% {100 * t1 / t:>8.0f}%")


if __name__ == "__main__":
    main()
