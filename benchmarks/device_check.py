"""Correctness and speed of the gauge kernels on an accelerator, against the CPU.

    python benchmarks/device_check.py --part correctness [--device cuda|xpu|cpu]
    mpiexec -n 2 python benchmarks/device_check.py --part halo --aware off|on
    python benchmarks/device_check.py --part table [--volumes 8 16 32]
    python benchmarks/device_check.py --part compiled

Run by benchmarks/device_check.sh. ``correctness``: SU(3) (Wilson, Symanzik) and U(1) action
and force of every backend on the device against eager on the CPU (1e-12 relative); the
device Philox stream against the host (uniforms bitwise, normals to 4 ulp); one SU(3) HMC
trajectory (hot start, 2 chains) on the device against the CPU (dH, acceptance, links) and
against itself (bitwise: a resumed run repeats the uninterrupted one only then); the
trivialized SU(3) force through a stout flow (flow forward and pulled-back backward with the
log-det; the flow's map, log-det and inverse), device (eager core) against the CPU's eager core,
and the device force against itself (bitwise); the Schwinger model's pseudofermion heatbath,
CG solve (solution, iteration count), action and force on the device against the CPU.
``halo``: the distributed SU(3) force and action on the device, GPU-aware MPI off or on
(separate runs: an MPI library that is not GPU-aware may crash on device buffers), against
one rank on the CPU. ``table``: the device's copy bandwidth and float64 matrix rate, then
per backend and volume the kernel times, GFLOP/s, GB/s and % of the roofline min(peak,
bandwidth x intensity) with the flop and byte counts of benchmarks/bench_kernels.py, and one
HMC trajectory. ``compiled``: the ``compiled`` backend (torch.compile; Triton on a GPU):
its compile time, its force against eager on the device, and its kernel times.
The CPU-only backends (``numba``, ``vnode``) hand device tensors to ``eager``, so on a
device they are left out. Each check prints PASS/FAIL; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from bench_kernels import (  # the flop / byte counts per site (benchmarks/ is on the path)
    SU3_ACTION_BYTES,
    SU3_ACTION_FLOPS,
    SU3_EXPMUL_BYTES,
    SU3_EXPMUL_FLOPS,
    SU3_FLOW_FLOPS,
    SU3_FORCE_BYTES,
    SU3_FORCE_FLOPS,
)
from mpi4py import MPI

import kernels.backends as kb
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.theories.su3 import SU3Gauge
from kernels.theories.u1 import U1Gauge
from parallel import ProcessGrid, set_gpu_aware, single_rank_grid
from parallel.rng import SiteRNG

CPU_ONLY = ("numba", "vnode")  # these delegate non-CPU tensors to eager
SLOW_S = 0.5  # table: a kernel whose first call takes longer is not timed (keeps < 8 min)

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


def differ(*pairs: torch.Tensor) -> float:
    """Number of elements that differ between ``pairs[0]`` and ``pairs[1]``, ``pairs[2]``
    and ``pairs[3]``, ... (0: bitwise equal)."""
    return float(sum(int((a.cpu() != b.cpu()).sum()) for a, b in zip(pairs[::2], pairs[1::2])))


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


def device_backends(dev: torch.device) -> list[str]:
    """The backends worth checking on ``dev`` (not ``compiled``: see ``--part compiled``)."""
    names = [n for n in kb.available_backends() if n != "compiled"]
    if dev.type != "cpu":
        names = [n for n in names if n not in CPU_ONLY]
    return names


def correctness(dev: torch.device) -> None:
    grid = single_rank_grid((4, 4, 4, 6))
    rng = SiteRNG(7)
    th0 = SU3Gauge(grid, 5.7)
    u_cpu = th0.hot_start(rng, 0, 2)
    x_cpu = 0.1 * th0.random_momentum(SiteRNG(8), 0, 2)
    for name in device_backends(dev):
        kb.set_backend(name)
        for action in ("wilson", "symanzik"):
            th_c, th_d = SU3Gauge(grid, 5.7, action), SU3Gauge(grid, 5.7, action, device=dev)
            kb.set_backend("eager")
            s_ref, f_ref = th_c.action(u_cpu), th_c.force(u_cpu)
            kb.set_backend(name)
            u = u_cpu.to(dev)
            verdict(f"su3 {action} action [{name}] vs cpu", rel(th_d.action(u), s_ref), 1e-12)
            verdict(f"su3 {action} force [{name}] vs cpu", rel(th_d.force(u), f_ref), 1e-12)
        b_ref, b = kb.make_backend("eager"), kb.get_backend()
        verdict(
            f"su3 flow step (RK3) [{name}] vs cpu",
            rel(
                b.su3_flow_step_rk3(u_cpu.to(dev), grid, 0.02),
                b_ref.su3_flow_step_rk3(u_cpu, grid, 0.02),
            ),
            1e-12,
        )
        verdict(
            f"su3 exp(X) U [{name}] vs cpu",
            rel(b.su3_expm_mul(x_cpu.to(dev), u_cpu.to(dev)), b_ref.su3_expm_mul(x_cpu, u_cpu)),
            1e-12,
        )
        g2 = single_rank_grid((8, 8))
        t1c, t1d = U1Gauge(g2, 2.0), U1Gauge(g2, 2.0, device=dev)
        th = t1c.hot_start(rng, 0, 2)
        kb.set_backend("eager")
        f_ref, s_ref = t1c.force(th), t1c.action(th)
        kb.set_backend(name)
        verdict(f"u1 force [{name}] vs cpu", rel(t1d.force(th.to(dev)), f_ref), 1e-12)
        verdict(f"u1 action [{name}] vs cpu", rel(t1d.action(th.to(dev)), s_ref), 1e-12)
    kb.set_backend("eager")
    host, devr = SiteRNG(99), SiteRNG(99)
    devr.device_philox = "always"
    uh = host.uniform(grid, 1, 3, 2, lead=(4,))
    ud = devr.uniform(grid, 1, 3, 2, lead=(4,), device=dev)
    verdict("device Philox uniforms == host (bitwise)", float((ud.cpu() != uh).sum()), 0)
    zh = host.normal(grid, 1, 3, 2, lead=(4,), trail=(8,))
    zd = devr.normal(grid, 1, 3, 2, lead=(4,), trail=(8,), device=dev)
    verdict("device Philox normals vs host (abs)", rel(zd, zh), 1e-15)
    # one HMC trajectory on the device against the CPU; the device run twice (a resumed run
    # repeats the uninterrupted one bit for bit only if the device's kernels are repeatable)
    runs = []
    for where in (torch.device("cpu"), dev, dev):
        th = SU3Gauge(grid, 5.7, device=where)
        hmc = HMC(th, make_integrator(th, "omelyan", 6, 1.0), SiteRNG(3))
        field = th.hot_start(SiteRNG(3), 0, 2)
        for c in (1, 2):
            field, rec = hmc.trajectory(field, c)
        runs.append((field, rec))
    (fc, rc), (fd, rd), (fd2, rd2) = runs
    verdict("HMC trajectory links: device vs cpu", rel(fd, fc), 1e-10)
    dh_d, dh_c = (torch.as_tensor(r.dH).detach().cpu() for r in (rd, rc))
    verdict("HMC trajectory dH: device vs cpu", float((dh_d - dh_c).abs().max()), 1e-8)
    verdict("HMC trajectory repeatable on device (bitwise)", differ(fd2, fd, rd2.dH, rd.dH), 0)
    stout_force(dev)
    schwinger_force(dev)


def stout_force(dev: torch.device) -> None:
    """The trivialized SU(3) force through a stout flow (8 layers: every link once; flow
    forward, then the pulled-back backward with the log-det) on the device against the CPU's
    eager stout core (on a CPU ``dev`` that is the fused numba core where it applies), and
    the flow's forward map, log-det and fixed-point inverse."""
    from kernels.flows.su3 import su3_stout_flow
    from kernels.flows.su3_fused import set_stout_kernel
    from kernels.samplers.trivialized import TransformedTheory

    grid = single_rank_grid((4, 4, 4, 4))
    torch.manual_seed(11)  # the network's initial weights: the same flow on both sides
    flow_c = su3_stout_flow(grid, n_layers=8, hidden=(4,), rho_max=0.5)
    flow_d = su3_stout_flow(grid, n_layers=8, hidden=(4,), rho_max=0.5)
    flow_d.load_state_dict(flow_c.state_dict())
    flow_d = flow_d.to(dev)
    flow_c.requires_grad_(False)
    flow_d.requires_grad_(False)
    tt_c = TransformedTheory(SU3Gauge(grid, 5.7), flow_c)
    tt_d = TransformedTheory(SU3Gauge(grid, 5.7, device=dev), flow_d)
    v_c = tt_c.theory.hot_start(SiteRNG(13), 0, 2)
    v_d = v_c.to(dev)
    kb.set_backend("eager")
    set_stout_kernel("eager")  # the reference: the torch core on the CPU
    try:
        with torch.no_grad():
            u_c, ld_c = flow_c(v_c)
        f_c, s_c = tt_c.force(v_c), tt_c.action(v_c)
    finally:
        set_stout_kernel(None)
    with torch.no_grad():  # the device side: the default core (eager off the CPU)
        u_d, ld_d = flow_d(v_d)
        back, _ = flow_d.inverse(u_d)
    f_d, s_d = tt_d.force(v_d), tt_d.action(v_d)
    f_d2 = tt_d.force(v_d)  # repeatable? (index_select's backward adds with atomics on CUDA)
    verdict("stout flow U = F(V): device vs cpu", rel(u_d, u_c), 1e-12)
    verdict("stout flow log-det: device vs cpu", rel(ld_d, ld_c), 1e-12)
    verdict("stout flow inverse F^-1(F(V)) = V on device", rel(back, v_c), 1e-10)
    verdict("stout trivialized action: device vs cpu", rel(s_d, s_c), 1e-12)
    verdict("stout trivialized force: device vs cpu", rel(f_d, f_c), 1e-10)
    verdict("stout force repeatable on device (bitwise)", differ(f_d2, f_d), 0)


def schwinger_force(dev: torch.device) -> None:
    """Schwinger model (8x8, one Hasenbusch mass): the pseudofermion heatbath (a CG solve
    for the ratio term), the CG solve of ``D^+ D x = phi`` (solution and iteration count),
    the pseudofermion action and the total force on the device against the CPU. The noise
    is drawn on the host for both (``device_philox = "never"``), so the inputs agree bitwise."""
    from kernels.fermions.cg import conjugate_gradient
    from kernels.theories.schwinger import Schwinger

    grid = single_rank_grid((8, 8))
    kw = dict(beta=2.0, kappa=0.24, hasenbusch=[0.2], cg_tol=1e-12, cg_max_iter=2000)
    th_c, th_d = Schwinger(grid, **kw), Schwinger(grid, **kw, device=dev)
    theta_c = th_c.hot_start(SiteRNG(17), 0, 2)
    theta_d = theta_c.to(dev)
    rng = SiteRNG(19)
    rng.device_philox = "never"
    th_c.refresh(theta_c, rng, 1)
    th_d.refresh(theta_d, rng, 1)
    pf_c, pf_d = th_c.pseudofermion_terms(), th_d.pseudofermion_terms()
    verdict(
        "schwinger pseudofermions (heatbath): device vs cpu",
        max(rel(d.phi, c.phi) for c, d in zip(pf_c, pf_d)),
        1e-10,
    )
    res = []
    for th, theta, phi in ((th_c, theta_c, pf_c[-1].phi), (th_d, theta_d, pf_d[-1].phi)):
        op = th.dirac(theta)
        res.append(conjugate_gradient(op.normal, phi, grid, 1e-12, 2000))
    (r_c, r_d) = res
    verdict("schwinger CG solve D^+D x = phi: device vs cpu", rel(r_d.x, r_c.x), 1e-9)
    verdict(
        "schwinger CG iterations: device - cpu",
        float((r_d.iterations.cpu() - r_c.iterations).abs().max()),
        1,
    )
    verdict("schwinger CG converged on device", float((~r_d.converged).sum()), 0)
    verdict(
        "schwinger action (gauge + pf): device vs cpu",
        rel(th_d.action(theta_d), th_c.action(theta_c)),
        1e-10,
    )
    verdict(
        "schwinger force (gauge + pf): device vs cpu",
        rel(th_d.force(theta_d), th_c.force(theta_c)),
        1e-9,
    )


def halo(dev: torch.device, modes: tuple[bool, ...]) -> None:
    shape = (4, 4, 4, 4)
    grid = ProcessGrid(shape)
    ref_grid = single_rank_grid(shape)
    ref = SU3Gauge(ref_grid, 5.7)
    u_ref = ref.hot_start(SiteRNG(5), 0, 2)
    f_ref, s_ref = ref.force(u_ref), ref.action(u_ref)
    sl = (slice(None), slice(None)) + grid.local_slices()
    th = SU3Gauge(grid, 5.7, device=dev)
    u = u_ref[sl].contiguous().to(dev)
    say(f"# MPI library: {MPI.Get_library_version().splitlines()[0].strip()}")
    for aware in modes:
        set_gpu_aware(aware)
        try:
            f, s = th.force(u), th.action(u)
        except Exception as exc:  # a GPU-unaware MPI may crash on device buffers
            say(f"# gpu_aware={aware}: {type(exc).__name__}: {str(exc)[:200]}")
            verdict(f"halo gpu_aware={aware}: {type(exc).__name__}", float("inf"), 0)
            continue
        verdict(f"halo force grid {list(grid.grid)} gpu_aware={aware}", rel(f, f_ref[sl]), 1e-12)
        verdict(f"halo action grid {list(grid.grid)} gpu_aware={aware}", rel(s, s_ref), 1e-12)
    set_gpu_aware(False)
    grid.free()


def timed(fn, dev: torch.device, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` synchronised calls, after one warm-up."""
    fn()
    sync(dev)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def device_roof(dev: torch.device) -> tuple[float, float]:
    """(copy bandwidth GB/s counting bytes read and written, float64 matmul GFLOP/s)."""
    big = dev.type != "cpu"
    n = 1 << (28 if big else 24)
    x = torch.rand(n, dtype=torch.float64, device=dev)
    y = torch.empty_like(x)
    bw = 16 * n / timed(lambda: y.copy_(x), dev, 10) / 1e9
    m = 8192 if big else 1024
    a = torch.rand(m, m, dtype=torch.float64, device=dev)
    peak = 2 * m**3 / timed(lambda: a @ a, dev, 5) / 1e9
    return bw, peak


def kernel_cases(b, th, u, x, grid):
    """(name, call, flop per site, compulsory bytes per site) of the table's kernels."""
    return (
        ("su3 action", lambda: th.action(u), SU3_ACTION_FLOPS, SU3_ACTION_BYTES),
        ("su3 force", lambda: th.force(u), SU3_FORCE_FLOPS, SU3_FORCE_BYTES),
        (
            "su3 flowstep",
            lambda: b.su3_flow_step_rk3(u, grid, 0.01),
            SU3_FLOW_FLOPS,
            SU3_FORCE_BYTES,
        ),
        ("su3 expmul", lambda: b.su3_expm_mul(x, u), SU3_EXPMUL_FLOPS, SU3_EXPMUL_BYTES),
    )


def row(kernel, name, L, t, flops, nbytes, bw, peak) -> None:
    sites = L**4
    gf, gb = flops * sites / t / 1e9, nbytes * sites / t / 1e9
    roof = min(peak, bw * flops / nbytes)
    pct = 100 * gf / roof
    say(f"{kernel:<13} {name:<9} {L:>6}^4 {1e3 * t:>10.3f} {gf:>9.1f} {gb:>8.1f} {pct:>6.1f}%")


HEADER = (
    f"{'kernel':<13} {'backend':<9} {'lattice':>8} {'ms':>10} {'GFLOP/s':>9} {'GB/s':>8} "
    f"{'%roof':>7}"
)


def table(dev: torch.device, volumes: list[int]) -> None:
    bw, peak = device_roof(dev)
    say(f"# {dev}: copy {bw:.0f} GB/s (read + write), float64 matmul {peak:.0f} GFLOP/s")
    say(HEADER)
    for L in volumes:
        grid = single_rank_grid((L,) * 4)
        th = SU3Gauge(grid, 6.0, device=dev)
        u = th.hot_start(SiteRNG(1), 0, 1)
        x = 0.1 * th.random_momentum(SiteRNG(2), 0, 1)
        for name in device_backends(dev):
            kb.set_backend(name)
            b = kb.get_backend()
            with torch.no_grad():
                for kernel, fn, flops, nbytes in kernel_cases(b, th, u, x, grid):
                    t0 = time.perf_counter()
                    fn()
                    sync(dev)
                    first = time.perf_counter() - t0
                    if first > SLOW_S:  # e.g. soa on a GPU: thousands of tiny launches
                        say(f"{kernel:<13} {name:<9} {L:>6}^4   skipped: first call {first:.1f} s")
                        continue
                    row(kernel, name, L, timed(fn, dev, 5), flops, nbytes, bw, peak)
        kb.set_backend("eager")
        hmc = HMC(th, make_integrator(th, "omelyan", 10, 1.0), SiteRNG(2))
        field = th.cold_start(1)
        hmc.trajectory(field, 1)
        sync(dev)
        t0 = time.perf_counter()
        hmc.trajectory(field, 2)
        sync(dev)
        say(f"{'hmc traj':<13} {'eager':<9} {L:>6}^4 {1e3 * (time.perf_counter() - t0):>10.1f}")
        del th, u, x, hmc, field


def profile(dev: torch.device) -> None:
    """Where the eager force spends its device time, and 3x3 complex products four ways."""
    L = 16
    grid = single_rank_grid((L,) * 4)
    th = SU3Gauge(grid, 6.0, device=dev)
    u = th.hot_start(SiteRNG(1), 0, 1)
    kb.set_backend("eager")
    th.force(u)
    sync(dev)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            th.force(u)
        sync(dev)
    keys = ["device_time_total", "cuda_time_total"] if dev.type == "cuda" else ["cpu_time_total"]
    for key in keys:
        try:
            text = prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=40)
        except (KeyError, AttributeError, RuntimeError):
            continue
        say(f"# eager su3 force at {L}^4, 3 calls, ops by {key}")
        say(text)
        break
    n = 12 * L**4
    a = torch.randn(n, 3, 3, dtype=torch.complex128, device=dev)
    b = torch.randn(n, 3, 3, dtype=torch.complex128, device=dev)

    def bcast(x, y):
        return (x.unsqueeze(-1) * y.unsqueeze(-3)).sum(-2)

    def bcast_real(x, y):  # on torch.view_as_real planes (..., 3, 3, 2): inductor fuses reals
        xr, xi, yr, yi = x[..., 0], x[..., 1], y[..., 0], y[..., 1]
        re = (xr.unsqueeze(-1) * yr.unsqueeze(-3) - xi.unsqueeze(-1) * yi.unsqueeze(-3)).sum(-2)
        im = (xr.unsqueeze(-1) * yi.unsqueeze(-3) + xi.unsqueeze(-1) * yr.unsqueeze(-3)).sum(-2)
        return torch.stack((re, im), -1)

    variants = [
        ("matmul", lambda: a @ b),
        ("matmul dagger", lambda: a @ b.conj().transpose(-1, -2)),
        ("broadcast-sum", lambda: bcast(a, b)),
        ("einsum", lambda: torch.einsum("nij,njk->nik", a, b)),
    ]
    ar, br = torch.view_as_real(a), torch.view_as_real(b)
    t0 = time.perf_counter()
    comp = torch.compile(bcast_real, dynamic=False)
    comp(ar, br)
    sync(dev)
    say(f"# torch.compile of the real broadcast-sum product: {time.perf_counter() - t0:.1f} s")
    variants.append(("real bcast", lambda: torch.view_as_complex(bcast_real(ar, br))))
    variants.append(("compiled real bcast", lambda: torch.view_as_complex(comp(ar, br))))
    ref = a @ b
    say(f"{'3x3 complex product':<22} {'N':>9} {'ms':>9} {'GB/s':>8} {'max|diff|':>10}")
    for name, fn in variants:
        t = timed(fn, dev, 10)
        err = float((fn() - (ref if "dagger" not in name else fn())).abs().max())
        say(f"{name:<22} {n:>9} {1e3 * t:>9.3f} {3 * 144 * n / t / 1e9:>8.1f} {err:>10.1e}")


def compiled(dev: torch.device, volumes: list[int]) -> None:
    """The ``compiled`` backend on the device: compile time, force vs eager, kernel times
    (static shapes unless ``TRIVHMC_COMPILE_DYNAMIC`` says otherwise: one compile per size)."""
    os.environ.setdefault("TRIVHMC_COMPILE_DYNAMIC", "0")
    try:
        kb.set_backend("compiled")
    except kb.BackendError as exc:
        say(f"# compiled backend unavailable: {exc}")
        return
    bw, peak = device_roof(dev)
    for L in volumes:
        grid = single_rank_grid((L,) * 4)
        th = SU3Gauge(grid, 6.0, device=dev)
        u = th.hot_start(SiteRNG(1), 0, 1)
        x = 0.1 * th.random_momentum(SiteRNG(2), 0, 1)
        kb.set_backend("eager")
        f_ref = th.force(u)
        kb.set_backend("compiled")
        b = kb.get_backend()
        t0 = time.perf_counter()
        with torch.no_grad():  # the timed calls below run without grad: the same guards
            f = th.force(u)
        sync(dev)
        say(f"# compiled: first force at {L}^4 {time.perf_counter() - t0:.1f} s (compiles)")
        verdict(f"su3 force [compiled] vs eager on {dev.type}, {L}^4", rel(f, f_ref), 1e-12)
        say(HEADER)
        with torch.no_grad():
            for kernel, fn, flops, nbytes in kernel_cases(b, th, u, x, grid):
                row(kernel, "compiled", L, timed(fn, dev, 5), flops, nbytes, bw, peak)
        del th, u, x, f, f_ref
    kb.set_backend("eager")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--part", choices=["correctness", "halo", "table", "compiled", "profile"], required=True
    )
    ap.add_argument(
        "--aware",
        choices=["off", "on", "both"],
        default="both",
        help="halo: GPU-aware MPI off, on, or both in one process",
    )
    ap.add_argument(
        "--volumes",
        type=int,
        nargs="+",
        default=None,
        help="table/compiled: L of the L^4 lattices (default 8 16 32 on a device, 8 16 on the CPU)",
    )
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    dev = pick_device(args.device)
    say(
        f"# device_check {args.part} on {dev} (torch {torch.__version__}, "
        f"{MPI.COMM_WORLD.Get_size()} rank(s))"
    )
    volumes = args.volumes or ([8, 16] if dev.type == "cpu" else [8, 16, 32])
    if args.part == "correctness":
        correctness(dev)
    elif args.part == "halo":
        halo(dev, {"off": (False,), "on": (True,), "both": (False, True)}[args.aware])
    elif args.part == "table":
        table(dev, volumes)
    elif args.part == "profile":
        profile(dev)
    else:
        compiled(dev, volumes)
    if FAILED:
        say(f"# {len(FAILED)} check(s) FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
