"""Throughput of the action and force kernels next to the machine's roofline.

    python benchmarks/bench_kernels.py                       # su3 (+ phi4, u1), default sizes
    python benchmarks/bench_kernels.py --quick               # smallest sizes only
    python benchmarks/bench_kernels.py --volumes 4 8 12 --threads 1 --compile

Measured in the same run:

* **stream copy** bandwidth: ``y.copy_(x)`` of a 256 MB float64 tensor (torch) and
  ``np.copyto`` (numpy); STREAM convention, ``2 x 8 bytes`` (read + write) per element.
* **dgemm**: ``torch.matmul`` of 1024 x 1024 float64 matrices, the compute roof.

For each kernel and lattice: median (and best) wall time per call over ``--repeat`` calls, site
updates per second (``batch x volume / time``; a site update = all ``Nd`` links of a site), the
achieved GFLOP/s from the flop count per site, and the *compulsory* GB/s: the bytes the kernel
must move at least (fields in, result out, every value once). The roofline of a kernel is
``min(dgemm, AI x stream)`` with the compulsory arithmetic intensity ``AI = flops / bytes``;
the last column is achieved GFLOP/s over that roof.

Flop counts per site (complex multiply 6, complex add 2, real ops 1; sin/cos count 1):

* 3x3 complex matrix product: ``27 x 6 + 18 x 2 = 198``.
* SU(3) Wilson action: 6 planes x (2 products + ``Re Tr(a b^+)`` = 36) = ``6 x 432`` + 6
  adds = 2598; bytes: 4 links read = 4 x 144 = 576 (complex128). AI = 4.5.
* SU(3) Wilson force: 12 ordered planes x (up staple 2 products + down staple 2 products
  + 2 x 18 adds into the staple sum) + 4 x (``U A`` 198 + TA ~30 + scale 18) = 10,920;
  bytes: 4 links read + 4 force matrices written = 1152. AI = 9.5.
* phi^4 (d dims): action ``d + 8``, force ``2d + 6``; bytes 8 (action), 16 (force).
* U(1) (d dims, per site: ``d(d-1)/2`` plaquettes): action 5 per plaquette; force 9 per
  plaquette (angle 3, sin 1, two signed adds per link); bytes ``8d`` (+ ``8d`` force out).

* SU(3) Wilson staple sum: 12 ordered planes x (4 products + 2 x 18 adds) = 9,936; bytes
  4 links in + 4 staple sums out = 1152.
* SU(3) Wilson flow step (Luscher RK3, kernels/wilson_flow.py): 3 generators ``-TA(V A)``
  (a force each) + 3 x 4 link updates ``exp(Z) V`` (one product each; the exponential is not
  counted, so its %roof is a lower bound); bytes: links in and out, 1152.
* SU(3) clover energy density (the Wilson flow's ``E``): 6 planes x (4 leaves of 3 products
  + 3 x 18 adds + TA ~30 + ``|G|^2`` 36) = 15,084; bytes: 4 links in, one real out, 584.
* ``exp(X) V`` per link (the MD drift, ``X = 0.1 P`` with Gaussian su(3) momenta ``P``):
  counted as its 4 products with ``V`` (792; the exponential is not counted: a lower bound);
  bytes: ``X``, ``V`` in, result out, 1728.

Backends (kernels/backends, ``--backends``): ``eager`` (the reference, complex128 batched
``matmul``), ``soa`` (real structure of arrays, unrolled products, plain torch ops),
``numba`` (site-fused kernels on halo-padded planes, optional dependency), ``compiled``
(``torch.compile`` of the SoA arithmetic; ``--compile``, minutes to compile), ``vnode``
(virtual-node SU(3) kernels, kernels/backends/vnode.py; end to end, with the layout
conversion in every call) and ``vnode-res`` (the same kernels on links already in the
virtual-node layout, plus rows for the conversions ``vnode pack``/``unpack``). Each variant's
force is checked against ``eager`` to 1e-12 in the run. ``--threads 1 2`` repeats stream,
dgemm and every kernel for each thread count (torch and numba threads).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
import torch
from machine import cpu_model, numba_target

import kernels.backends as kb
from kernels.backends import eager
from kernels.theories.su3 import SU3Gauge
from parallel import single_rank_grid
from parallel.memory import keep_freed_memory
from parallel.rng import SiteRNG

MM = 198  # flops of a 3x3 complex matrix product
SU3_ACTION_FLOPS = 6 * (2 * MM + 36) + 6
SU3_ACTION_BYTES = 4 * 144
SU3_FORCE_FLOPS = 12 * (4 * MM + 2 * 18) + 4 * (MM + 30 + 18)
SU3_FORCE_BYTES = 8 * 144
SU3_STAPLE_FLOPS = 12 * (4 * MM + 2 * 18)
SU3_FLOW_FLOPS = 3 * SU3_FORCE_FLOPS + 3 * 4 * MM
SU3_EXPMUL_FLOPS = 4 * MM  # the product with V only: the exponential is not counted
SU3_EXPMUL_BYTES = 3 * 4 * 144  # X, V in; exp(X) V out
SU3_CLOVER_FLOPS = 6 * (12 * MM + 3 * 18 + 30 + 36)
SU3_CLOVER_BYTES = 4 * 144 + 8


# --------------------------------------------------------------------------- timing
CLOCK = {"clock": time.perf_counter}


def timeit(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` over ``repeat`` calls after one warm-up call, on
    ``CLOCK["clock"]`` (wall time, or process CPU time: see ``--clock``)."""
    clock = CLOCK["clock"]
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times), min(times)


def stream_copy(repeat: int) -> tuple[float, float]:
    """STREAM-copy bandwidth in GB/s (best of ``repeat``): torch and numpy."""
    n = 1 << 25  # 32 Mi float64 = 256 MB per array
    x = torch.rand(n, dtype=torch.float64)
    y = torch.empty_like(x)
    _, t_torch = timeit(lambda: y.copy_(x), repeat)
    xa, ya = x.numpy(), y.numpy()
    _, t_np = timeit(lambda: np.copyto(ya, xa), repeat)
    return 16 * n / t_torch / 1e9, 16 * n / t_np / 1e9


def dgemm_gflops(repeat: int) -> float:
    n = 1024
    a = torch.rand(n, n, dtype=torch.float64)
    b = torch.rand(n, n, dtype=torch.float64)
    _, t = timeit(lambda: a @ b, repeat)
    return 2 * n**3 / t / 1e9


# --------------------------------------------------------------------------- table
ROWS: list[dict] = []


def record(kernel, variant, threads, shape, batch, t_med, t_min, flops, nbytes, roof) -> None:
    sites = batch * int(np.prod(shape))
    gflops = flops * sites / t_min / 1e9
    gbs = nbytes * sites / t_min / 1e9
    ROWS.append(
        dict(
            kernel=kernel,
            variant=variant,
            threads=threads,
            lattice="x".join(map(str, shape)),
            batch=batch,
            ms=1e3 * t_med,
            best=1e3 * t_min,
            msites=sites / t_min / 1e6,
            gflops=gflops,
            gbs=gbs,
            # a pure data move (flops 0): %roof is GB/s over stream bandwidth (= roof(1 flop/B))
            roof=100 * (gflops / roof(flops / nbytes) if flops else gbs / roof(1.0)),
        )
    )
    r = ROWS[-1]
    print(
        f"{r['kernel']:<12} {r['variant']:<9} {r['threads']:>2} {r['lattice']:>12} "
        f"{r['batch']:>3} {r['ms']:>9.2f} {r['best']:>9.2f} {r['msites']:>9.3f} "
        f"{r['gflops']:>8.2f} {r['gbs']:>7.2f} {r['roof']:>7.1f}%",
        flush=True,
    )


def bench_su3(L, batch, repeat, roof, backends, threads) -> None:
    shape = (L,) * 4
    grid = single_rank_grid(shape)
    th = SU3Gauge(grid, 6.0)
    u = th.hot_start(SiteRNG(1), 0, batch)
    f_ref = eager.gauge_force(u, grid, 6.0)
    x = 0.1 * th.random_momentum(SiteRNG(2), 0, batch)
    for name in backends:
        kb.set_backend(name)
        b = kb.get_backend()
        with torch.no_grad():
            t0 = time.perf_counter()
            err = float((b.su3_force(u, grid, 6.0, 1.0, 0.0) - f_ref).abs().max())
            first = time.perf_counter() - t0
            if err > 1e-12:
                raise AssertionError(f"{name} SU(3) force differs from eager by {err:.2e}")
            if first > 5.0:
                print(f"# {name}: first call (compilation) {first:.1f} s, |F - F_eager| {err:.1e}")
            cases = [
                ("su3 action", lambda: th.action(u), SU3_ACTION_FLOPS, SU3_ACTION_BYTES),
                (
                    "su3 staples",
                    lambda b=b: b.su3_staple_sum(u, grid, 1.0, 0.0),
                    SU3_STAPLE_FLOPS,
                    SU3_FORCE_BYTES,
                ),
                ("su3 force", lambda: th.force(u), SU3_FORCE_FLOPS, SU3_FORCE_BYTES),
                (
                    "su3 flowstep",
                    lambda b=b: b.su3_flow_step_rk3(u, grid, 0.01),
                    SU3_FLOW_FLOPS,
                    SU3_FORCE_BYTES,
                ),
                (
                    "su3 expmul",
                    lambda b=b: b.su3_expm_mul(x, u),
                    SU3_EXPMUL_FLOPS,
                    SU3_EXPMUL_BYTES,
                ),
                (
                    "su3 cloverE",
                    lambda b=b: b.su3_clover_density(u, grid),
                    SU3_CLOVER_FLOPS,
                    SU3_CLOVER_BYTES,
                ),
            ]
            for kernel, fn, flops, nbytes in cases:
                tm, tb = timeit(fn, repeat)
                record(kernel, name, threads, shape, batch, tm, tb, flops, nbytes, roof)
            if name == "vnode" and L % 2 == 0:
                bench_vnode_resident(u, x, shape, batch, repeat, roof, threads)
    kb.set_backend("eager")


def bench_vnode_resident(u, x, shape, batch, repeat, roof, threads) -> None:
    """The vnode kernels on links already in the virtual-node layout (variant ``vnode-res``:
    no pack/unpack), and the layout conversions themselves (bytes: in + out)."""
    from kernels.backends import vnode

    q = vnode.pack(u)
    qf = q.copy()  # the flow-step row overwrites it (stages in qf and spare, as PackedFlow)
    spare = vnode.empty_packed(batch, shape)
    n = batch * 4 * int(np.prod(shape)) // vnode.W
    out = np.empty((n, vnode.LB))
    qx = np.ascontiguousarray(vnode.pack(x)[:n])
    cases = [
        (
            "su3 action",
            lambda: vnode.plaquette_density_packed(q, batch, shape),
            SU3_ACTION_FLOPS,
            SU3_ACTION_BYTES,
        ),
        (
            "su3 staples",
            lambda: vnode.ta_staples_packed(q, batch, shape, 1.0, False, out),
            SU3_STAPLE_FLOPS,
            SU3_FORCE_BYTES,
        ),
        (
            "su3 force",
            lambda: vnode.ta_staples_packed(q, batch, shape, 1.0, True, out),
            SU3_FORCE_FLOPS,
            SU3_FORCE_BYTES,
        ),
        (
            "su3 expmul",
            lambda: vnode.expm_mul_packed(qx, q, batch, shape),
            SU3_EXPMUL_FLOPS,
            SU3_EXPMUL_BYTES,
        ),
        (
            "su3 flowstep",
            lambda: vnode.flow_step_rk3_packed(qf, batch, shape, 0.01, spare=spare),
            SU3_FLOW_FLOPS,
            SU3_FORCE_BYTES,
        ),
        (
            "su3 cloverE",
            lambda: vnode.clover_density_packed(q, batch, shape),
            SU3_CLOVER_FLOPS,
            SU3_CLOVER_BYTES,
        ),
        ("vnode pack", lambda: vnode.pack(u, work=True), 0, SU3_FORCE_BYTES),
        ("vnode unpack", lambda: vnode.unpack(out, batch, 4, shape), 0, SU3_FORCE_BYTES),
    ]
    for kernel, fn, flops, nbytes in cases:
        tm, tb = timeit(fn, repeat)
        record(kernel, "vnode-res", threads, shape, batch, tm, tb, flops, nbytes, roof)


def bench_scalar(name, L, batch, repeat, roof, backends, threads) -> None:
    from kernels.theories import make_theory

    shape = (L, L)
    grid = single_rank_grid(shape)
    d = len(shape)
    if name == "phi4":
        th = make_theory("phi4", grid, beta=0.3, lam=0.5)
        x = torch.randn(th.field_shape(batch))
        cost = {"action": (d + 8, 8), "force": (2 * d + 6, 16)}
        backends = ["eager"]  # phi^4 has no backend kernels
    else:
        th = make_theory("u1", grid, beta=2.0)
        x = torch.rand(th.field_shape(batch)) * 6.28
        npl = d * (d - 1) // 2
        cost = {"action": (5 * npl, 8 * d), "force": (9 * npl, 16 * d)}
    for backend in backends:
        kb.set_backend(backend)
        with torch.no_grad():
            for what in ("action", "force"):
                fn = getattr(th, what)
                tm, tb = timeit(lambda fn=fn: fn(x), repeat)
                record(f"{name} {what}", backend, threads, shape, batch, tm, tb, *cost[what], roof)
    kb.set_backend("eager")


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as the application does (parallel/memory.py)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", type=int, nargs="+", default=[8, 16], help="SU(3) L (L^4)")
    ap.add_argument("--scalar-volumes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="kernel backends to time (default: every available one but 'compiled')",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add the torch.compile SoA backend (compiles once, minutes on a small CPU)",
    )
    ap.add_argument("--quick", action="store_true", help="smallest sizes only, no compile")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu", "auto"],
        default="wall",
        help="wall: perf_counter; cpu: process CPU time (robust on a shared machine, but the "
        "sum over threads); auto: cpu at 1 thread, wall at more",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.volumes, args.scalar_volumes, args.compile = [4], [64], False
    backends = args.backends or [n for n in kb.available_backends() if n != "compiled"]
    if args.compile and "compiled" not in backends:
        backends.append("compiled")
    torch.set_default_dtype(torch.float64)

    print(f"# bench_kernels {datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# {platform.node()} {platform.machine()} {cpu_model()} "
        f"cpus={os.cpu_count()} torch={torch.__version__} backends={backends}"
    )
    print(f"# {numba_target()}")
    print(f"# command: {' '.join(sys.argv)}")
    for threads in args.threads:
        set_threads(threads)
        cpu = args.clock == "cpu" or (args.clock == "auto" and threads == 1)
        CLOCK["clock"] = time.process_time if cpu else time.perf_counter
        print(f"# threads={threads}: clock = {'process CPU time' if cpu else 'wall time'}")
        bw_torch, bw_np = stream_copy(max(3, args.repeat))
        peak = dgemm_gflops(max(3, args.repeat))
        bw = max(bw_torch, bw_np)
        print(
            f"# threads={threads}: stream copy torch {bw_torch:.2f} GB/s, numpy {bw_np:.2f} "
            f"GB/s; dgemm {peak:.2f} GFLOP/s; roofline(AI) = min({peak:.1f}, AI x {bw:.1f}); "
            f"su3 force AI = {SU3_FORCE_FLOPS / SU3_FORCE_BYTES:.2f} flop/B, action AI = "
            f"{SU3_ACTION_FLOPS / SU3_ACTION_BYTES:.2f} flop/B"
        )

        def roof(ai: float, peak=peak, bw=bw) -> float:
            return min(peak, ai * bw)

        print(
            f"{'kernel':<12} {'variant':<9} {'th':>2} {'lattice':>12} {'B':>3} {'ms(med)':>9} "
            f"{'ms(best)':>9} {'Msite/s':>9} {'GFLOP/s':>8} {'GB/s':>7} {'%roof':>8}"
        )
        for L in args.volumes:
            bench_su3(L, args.batch, args.repeat, roof, backends, threads)
        for name in ("phi4", "u1"):
            for L in args.scalar_volumes:
                bench_scalar(name, L, args.batch, args.repeat, roof, backends, threads)


if __name__ == "__main__":
    main()
