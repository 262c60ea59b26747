"""Correctness and speed of the gauge kernels on an accelerator, against the CPU.

    python benchmarks/device_check.py --part correctness [--device cuda|xpu|cpu]
    mpiexec -n 2 python benchmarks/device_check.py --part halo
    python benchmarks/device_check.py --part table

Run by benchmarks/device_check.sh. ``correctness``: SU(3) (Wilson, Symanzik) and U(1) action
and force of every backend on the device against eager on the CPU (1e-12 relative); the
device Philox stream against the host (uniforms bitwise, normals to 4 ulp); one SU(3) HMC
trajectory (hot start, 2 chains) on the device against the CPU (dH, acceptance, links).
``halo``: the distributed SU(3) force and action on the device, GPU-aware MPI off and on,
against one rank on the CPU. ``table``: kernel times per backend and one HMC trajectory.
Each check prints PASS/FAIL; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from mpi4py import MPI

import kernels.backends as kb
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, set_gpu_aware, single_rank_grid
from parallel.rng import SiteRNG

FAILED: list[str] = []
ROOT = MPI.COMM_WORLD.Get_rank() == 0


def say(msg: str) -> None:
    if ROOT:
        print(msg, flush=True)


def verdict(what: str, err: float, tol: float) -> None:
    err = MPI.COMM_WORLD.allreduce(err, op=MPI.MAX)
    ok = err <= tol
    if not ok:
        FAILED.append(what)
    say(f"{'PASS' if ok else 'FAIL'}  {what:<52} {err:.2e} (tol {tol:.0e})")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    for kind in ("cuda", "xpu"):
        mod = getattr(torch, kind, None)
        if mod is not None and mod.is_available():
            return torch.device(kind)
    say("# no accelerator found: checking the CPU against itself")
    return torch.device("cpu")


def sync(dev: torch.device) -> None:
    mod = getattr(torch, dev.type, None)
    if dev.type != "cpu" and mod is not None:
        mod.synchronize()


def correctness(dev: torch.device) -> None:
    grid = single_rank_grid((4, 4, 4, 6))
    rng = SiteRNG(7)
    u_cpu = SU3Gauge(grid, 5.7).hot_start(rng, 0, 2)
    for name in [n for n in kb.available_backends() if n != "compiled"]:
        kb.set_backend(name)
        for action in ("wilson", "symanzik"):
            th_c, th_d = SU3Gauge(grid, 5.7, action), SU3Gauge(grid, 5.7, action, device=dev)
            kb.set_backend("eager")
            s_ref, f_ref = th_c.action(u_cpu), th_c.force(u_cpu)
            kb.set_backend(name)
            u = u_cpu.to(dev)
            verdict(f"su3 {action} action [{name}] vs cpu", rel(th_d.action(u), s_ref), 1e-12)
            verdict(f"su3 {action} force [{name}] vs cpu", rel(th_d.force(u), f_ref), 1e-12)
        g2 = single_rank_grid((8, 8))
        t1c, t1d = U1Gauge(g2, 2.0), U1Gauge(g2, 2.0, device=dev)
        th = t1c.hot_start(rng, 0, 2)
        kb.set_backend("eager")
        f_ref = t1c.force(th)
        kb.set_backend(name)
        verdict(f"u1 force [{name}] vs cpu", rel(t1d.force(th.to(dev)), f_ref), 1e-12)
    kb.set_backend("eager")
    host, devr = SiteRNG(99), SiteRNG(99)
    devr.device_philox = "always"
    uh = host.uniform(grid, 1, 3, 2, lead=(4,))
    ud = devr.uniform(grid, 1, 3, 2, lead=(4,), device=dev)
    verdict("device Philox uniforms == host (bitwise)", float((ud.cpu() != uh).sum()), 0)
    zh = host.normal(grid, 1, 3, 2, lead=(4,), trail=(8,))
    zd = devr.normal(grid, 1, 3, 2, lead=(4,), trail=(8,), device=dev)
    verdict("device Philox normals vs host (abs)", rel(zd, zh), 1e-15)
    # one HMC trajectory on the device against the CPU
    out = {}
    for where in (torch.device("cpu"), dev):
        th = SU3Gauge(grid, 5.7, device=where)
        hmc = HMC(th, make_integrator(th, "omelyan", 6, 1.0), SiteRNG(3))
        field = th.hot_start(SiteRNG(3), 0, 2)
        for c in (1, 2):
            field, rec = hmc.trajectory(field, c)
        out[where.type] = (field, rec)
    (fc, rc), (fd, rd) = out["cpu"], out[dev.type]
    verdict("HMC trajectory links: device vs cpu", rel(fd, fc), 1e-10)
    dh = [
        float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max()) for a, b in ((rd.dH, rc.dH),)
    ]
    verdict("HMC trajectory dH: device vs cpu", dh[0], 1e-8)


def halo(dev: torch.device) -> None:
    shape = (4, 4, 4, 4)
    grid = ProcessGrid(shape)
    ref_grid = single_rank_grid(shape)
    ref = SU3Gauge(ref_grid, 5.7)
    u_ref = ref.hot_start(SiteRNG(5), 0, 2)
    f_ref, s_ref = ref.force(u_ref), ref.action(u_ref)
    sl = (slice(None), slice(None)) + grid.local_slices()
    th = SU3Gauge(grid, 5.7, device=dev)
    u = u_ref[sl].contiguous().to(dev)
    for aware in (False, True):
        set_gpu_aware(aware)
        try:
            f, s = th.force(u), th.action(u)
        except Exception as exc:  # a GPU-unaware MPI may crash on device buffers
            verdict(f"halo gpu_aware={aware}: {type(exc).__name__}", float("inf"), 0)
            continue
        verdict(f"halo force grid {list(grid.grid)} gpu_aware={aware}", rel(f, f_ref[sl]), 1e-12)
        verdict(f"halo action grid {list(grid.grid)} gpu_aware={aware}", rel(s, s_ref), 1e-12)
    set_gpu_aware(False)
    grid.free()


def table(dev: torch.device, volumes: list[int]) -> None:
    say(f"{'kernel':<13} {'backend':<9} {'lattice':>8} {'ms':>10}")
    for L in volumes:
        grid = single_rank_grid((L,) * 4)
        th = SU3Gauge(grid, 6.0, device=dev)
        u = th.hot_start(SiteRNG(1), 0, 1)
        for name in [n for n in kb.available_backends() if n != "compiled"]:
            kb.set_backend(name)
            b = kb.get_backend()
            for kernel, fn in (
                ("su3 action", lambda th=th, u=u: th.action(u)),
                ("su3 force", lambda th=th, u=u: th.force(u)),
                ("su3 flowstep", lambda b=b, u=u, g=grid: b.su3_flow_step_rk3(u, g, 0.01)),
            ):
                fn()
                sync(dev)
                t0 = time.perf_counter()
                for _ in range(5):
                    fn()
                sync(dev)
                say(
                    f"{kernel:<13} {name:<9} {L:>6}^4 {1e3 * (time.perf_counter() - t0) / 5:>10.3f}"
                )
        kb.set_backend("eager")
        hmc = HMC(th, make_integrator(th, "omelyan", 10, 1.0), SiteRNG(2))
        field = th.cold_start(1)
        hmc.trajectory(field, 1)
        sync(dev)
        t0 = time.perf_counter()
        hmc.trajectory(field, 2)
        sync(dev)
        say(f"{'hmc traj':<13} {'eager':<9} {L:>6}^4 {1e3 * (time.perf_counter() - t0):>10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--part", choices=["correctness", "halo", "table"], required=True)
    ap.add_argument("--volumes", type=int, nargs="+", default=[8, 16])
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    dev = pick_device(args.device)
    say(
        f"# device_check {args.part} on {dev} (torch {torch.__version__}, "
        f"{MPI.COMM_WORLD.Get_size()} rank(s))"
    )
    {"correctness": correctness, "halo": halo}.get(args.part, lambda d: table(d, args.volumes))(dev)
    if FAILED:
        say(f"# {len(FAILED)} check(s) FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
