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

Variants of the SU(3) force:

* ``eager``: kernels.theories.su3.gauge_force as used by HMC: complex128 ``(..., 3, 3)``
  tensors, batched ``torch.matmul`` per staple, ``parallel.shift`` for neighbours.
* ``compiled-soa``: the same staples in a structure-of-arrays real layout
  ``(B, 2, 3, 3, *local)`` (real/imag planes, each a contiguous lattice-sized array), the
  shifts outside, the arithmetic of each ordered plane (two staples, four products) and of
  each direction's ``TA(U A)`` fused by ``torch.compile`` into one loop each. Checked
  against ``eager`` to 1e-12 in the run.
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

from kernels.theories.su3 import SU3Gauge, gauge_force
from parallel import shift, single_rank_grid
from parallel.rng import SiteRNG

MM = 198  # flops of a 3x3 complex matrix product
SU3_ACTION_FLOPS = 6 * (2 * MM + 36) + 6
SU3_ACTION_BYTES = 4 * 144
SU3_FORCE_FLOPS = 12 * (4 * MM + 2 * 18) + 4 * (MM + 30 + 18)
SU3_FORCE_BYTES = 8 * 144


# --------------------------------------------------------------------------- timing
def timeit(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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


# --------------------------------------------------------------------------- SoA variant
def _el(a: torch.Tensor, i: int, k: int, dag: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(re, im) planes of element (i, k) of ``a`` or of ``a^+``; ``a``: (B, 2, 3, 3, *L)."""
    if dag:
        return a[:, 0, k, i], -a[:, 1, k, i]
    return a[:, 0, i, k], a[:, 1, i, k]


def _mm(a: torch.Tensor, b: torch.Tensor, da: bool = False, db: bool = False) -> torch.Tensor:
    """3x3 complex product on real planes, unrolled (fused into one loop when compiled)."""
    re, im = [], []
    for i in range(3):
        for j in range(3):
            r = m = None
            for k in range(3):
                ar, ai = _el(a, i, k, da)
                br, bi = _el(b, k, j, db)
                rr = ar * br - ai * bi
                mm = ar * bi + ai * br
                r = rr if r is None else r + rr
                m = mm if m is None else m + mm
            re.append(r)
            im.append(m)
    out = torch.stack((torch.stack(re, 1), torch.stack(im, 1)), 1)
    return out.unflatten(2, (3, 3))


def _plane_staples(umu, unu, unu_xmu, umu_xnu):
    """Up staple ``U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^+`` and the down staple's local part
    ``[U_mu(x) U_nu(x+mu)]^+ U_nu(x)`` (shifted by -nu afterwards)."""
    up = _mm(unu_xmu, _mm(unu, umu_xnu), db=True)
    down = _mm(_mm(umu, unu_xmu), unu, da=True)
    return up, down


def _force_mu(umu, s0, s1, s2, s3, s4, s5, coef: float):
    """``coef * TA(U A)`` with ``A`` the sum of six staples, SoA layout."""
    a = s0 + s1 + s2 + s3 + s4 + s5
    m = _mm(umu, a)
    re, im = m[:, 0], m[:, 1]
    are = 0.5 * (re - re.transpose(1, 2))
    aim = 0.5 * (im + im.transpose(1, 2))
    tr = (aim[:, 0, 0] + aim[:, 1, 1] + aim[:, 2, 2]) / 3.0
    eye = torch.eye(3, dtype=re.dtype, device=re.device).view(1, 3, 3, *([1] * (re.ndim - 3)))
    aim = aim - eye * tr.unsqueeze(1).unsqueeze(1)
    return coef * torch.stack((are, aim), 1)


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str, fn: Callable) -> Callable:
    """One ``torch.compile(dynamic=True)`` per kernel for all lattice sizes of the run."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


class SoAForce:
    """Wilson force in the real SoA layout ``(B, Nd, 2, 3, 3, *local)`` with fused kernels."""

    def __init__(self, grid, beta: float, compile_kernels: bool = True) -> None:
        self.grid, self.coef = grid, beta / 6.0
        self.staples = _compiled("staples", _plane_staples) if compile_kernels else _plane_staples
        self.force_mu = _compiled("force_mu", _force_mu) if compile_kernels else _force_mu

    @staticmethod
    def to_soa(u: torch.Tensor) -> torch.Tensor:
        nd = u.ndim - 4
        soa = torch.stack((u.real, u.imag), -3)  # (B, Nd, *L, 2, 3, 3)
        perm = (0, 1, nd + 2, nd + 3, nd + 4, *range(2, nd + 2))
        return soa.permute(perm).contiguous()

    @staticmethod
    def from_soa(x: torch.Tensor) -> torch.Tensor:
        nd = x.ndim - 5
        perm = (0, 1, *range(5, 5 + nd), 2, 3, 4)
        y = x.permute(perm)
        return torch.complex(y[..., 0, :, :], y[..., 1, :, :])

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        grid, nd = self.grid, u.shape[1]
        fwd = [shift(u, grid, mu, 1, first=5) for mu in range(nd)]
        out = []
        for mu in range(nd):
            staples = []
            for nu in range(nd):
                if nu == mu:
                    continue
                up, down = self.staples(u[:, mu], u[:, nu], fwd[mu][:, nu], fwd[nu][:, mu])
                staples += [up, shift(down, grid, nu, -1, first=4)]
            out.append(self.force_mu(u[:, mu], *staples, self.coef))
        return torch.stack(out, 1)


# --------------------------------------------------------------------------- table
ROWS: list[dict] = []


def record(kernel, variant, shape, batch, t_med, t_min, flops, nbytes, roof) -> None:
    sites = batch * int(np.prod(shape))
    gflops = flops * sites / t_min / 1e9
    gbs = nbytes * sites / t_min / 1e9
    ROWS.append(
        dict(
            kernel=kernel,
            variant=variant,
            lattice="x".join(map(str, shape)),
            batch=batch,
            ms=1e3 * t_med,
            best=1e3 * t_min,
            msites=sites / t_min / 1e6,
            gflops=gflops,
            gbs=gbs,
            roof=100 * gflops / roof(flops / nbytes),
        )
    )
    r = ROWS[-1]
    print(
        f"{r['kernel']:<12} {r['variant']:<13} {r['lattice']:>12} {r['batch']:>3} "
        f"{r['ms']:>9.2f} {r['best']:>9.2f} {r['msites']:>9.3f} {r['gflops']:>8.2f} "
        f"{r['gbs']:>7.2f} {r['roof']:>7.2f}%",
        flush=True,
    )


def bench_su3(L: int, batch: int, repeat: int, roof, use_compile: bool) -> None:
    shape = (L,) * 4
    grid = single_rank_grid(shape)
    th = SU3Gauge(grid, 6.0)
    u = th.hot_start(SiteRNG(1), 0, batch)
    with torch.no_grad():
        tm, tb = timeit(lambda: th.action(u), repeat)
        record(
            "su3 action", "eager", shape, batch, tm, tb, SU3_ACTION_FLOPS, SU3_ACTION_BYTES, roof
        )
        tm, tb = timeit(lambda: gauge_force(u, grid, 6.0), repeat)
        record("su3 force", "eager", shape, batch, tm, tb, SU3_FORCE_FLOPS, SU3_FORCE_BYTES, roof)
        if use_compile:
            soa = SoAForce(grid, 6.0)
            us = SoAForce.to_soa(u)
            t0 = time.perf_counter()
            f = SoAForce.from_soa(soa(us))
            compile_s = time.perf_counter() - t0
            err = float((f - gauge_force(u, grid, 6.0)).abs().max())
            if err > 1e-12:
                raise AssertionError(f"compiled SoA force differs from eager by {err:.2e}")
            tm, tb = timeit(lambda: soa(us), repeat)
            record(
                "su3 force",
                "compiled-soa",
                shape,
                batch,
                tm,
                tb,
                SU3_FORCE_FLOPS,
                SU3_FORCE_BYTES,
                roof,
            )
            print(f"{'':<12} (compile + first call {compile_s:.1f} s, |F - F_eager| = {err:.1e})")


def bench_scalar(name: str, L: int, batch: int, repeat: int, roof) -> None:
    from kernels.theories import make_theory

    shape = (L, L)
    grid = single_rank_grid(shape)
    d = len(shape)
    if name == "phi4":
        th = make_theory("phi4", grid, beta=0.3, lam=0.5)
        x = torch.randn(th.field_shape(batch))
        cost = {"action": (d + 8, 8), "force": (2 * d + 6, 16)}
    else:
        th = make_theory("u1", grid, beta=2.0)
        x = torch.rand(th.field_shape(batch)) * 6.28
        npl = d * (d - 1) // 2
        cost = {"action": (5 * npl, 8 * d), "force": (9 * npl, 16 * d)}
    with torch.no_grad():
        for what in ("action", "force"):
            fn = getattr(th, what)
            tm, tb = timeit(lambda fn=fn: fn(x), repeat)
            record(f"{name} {what}", "eager", shape, batch, tm, tb, *cost[what], roof)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", type=int, nargs="+", default=[4, 8, 12], help="SU(3) L (L^4)")
    ap.add_argument("--scalar-volumes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add the torch.compile SoA variant (compiles once, minutes on a small CPU)",
    )
    ap.add_argument("--quick", action="store_true", help="smallest sizes only, no compile")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.volumes, args.scalar_volumes, args.compile = [4], [64], False
    torch.set_default_dtype(torch.float64)

    print(f"# bench_kernels {datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# {platform.node()} {platform.machine()} {platform.processor() or ''} "
        f"cpus={os.cpu_count()} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"# command: {' '.join(sys.argv)}")
    bw_torch, bw_np = stream_copy(max(3, args.repeat))
    peak = dgemm_gflops(max(3, args.repeat))
    bw = max(bw_torch, bw_np)
    print(
        f"# stream copy: torch {bw_torch:.2f} GB/s, numpy {bw_np:.2f} GB/s; "
        f"dgemm {peak:.2f} GFLOP/s"
    )
    print(
        f"# roofline(AI) = min({peak:.1f}, AI x {bw:.1f}) GFLOP/s; su3 force AI = "
        f"{SU3_FORCE_FLOPS / SU3_FORCE_BYTES:.2f} flop/B, action AI = "
        f"{SU3_ACTION_FLOPS / SU3_ACTION_BYTES:.2f} flop/B"
    )

    def roof(ai: float) -> float:
        return min(peak, ai * bw)

    print(
        f"{'kernel':<12} {'variant':<13} {'lattice':>12} {'B':>3} {'ms(med)':>9} "
        f"{'ms(best)':>9} {'Msite/s':>9} {'GFLOP/s':>8} {'GB/s':>7} {'%roof':>8}"
    )
    for L in args.volumes:
        bench_su3(L, args.batch, args.repeat, roof, args.compile)
    for name in ("phi4", "u1"):
        for L in args.scalar_volumes:
            bench_scalar(name, L, args.batch, args.repeat, roof)


if __name__ == "__main__":
    main()
