"""Time of a halo exchange and of a distributed shift against the local volume.

Run with 1 and 2 ranks (and more on a cluster):

    mpiexec -n 1 python benchmarks/bench_halo.py
    mpiexec -n 2 python benchmarks/bench_halo.py

For 2D and 4D lattices and two site sizes (a real scalar, 8 B/site; an SU(3) gauge field,
4 x 3 x 3 complex128 = 576 B/site) it reports, per rank: the median time of ``halo_pad`` of
width 1 along all axes and of ``shift(x, mu=0, +1)``, the bytes this rank sends through MPI
(faces along axes split over ranks; axes held by one rank are local copies and not counted),
and the effective bandwidth = bytes / time (``-`` when nothing crosses ranks).
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np
import torch
from mpi4py import MPI

from parallel import ProcessGrid, halo_pad, shift

CASES_2D = [(64, 64), (128, 128), (256, 256), (512, 512)]
CASES_4D = [(8, 8, 8, 8), (12, 12, 12, 12), (16, 16, 16, 16)]


def median_time(fn, repeat: int, comm: MPI.Comm) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return comm.allreduce(float(np.median(times)), op=MPI.MAX)


def face_bytes(grid: ProcessGrid, site_bytes: int, axes) -> int:
    """Bytes this rank sends for a width-1 halo along ``axes`` (both directions)."""
    total = 0
    padded = list(grid.local_shape)
    for mu in axes:
        face = int(np.prod(padded)) // padded[mu]
        if grid.grid[mu] > 1:
            total += 2 * face * site_bytes
        padded[mu] += 2
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="smallest volumes only")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rows = []
    cases = (CASES_2D[:2] + CASES_4D[:1]) if args.quick else (CASES_2D + CASES_4D)
    for shape in cases:
        grid = ProcessGrid(shape)
        for kind in ("scalar", "su3"):
            nd = len(shape)
            if kind == "scalar":
                x = torch.randn((1,) + grid.local_shape, dtype=torch.float64)
                first, site_bytes = 1, 8
            else:
                x = torch.randn((1, nd) + grid.local_shape + (3, 3), dtype=torch.complex128)
                first, site_bytes = 2, nd * 9 * 16
            t_halo = median_time(
                lambda x=x, g=grid, f=first: halo_pad(x, g, 1, first=f), args.repeat, comm
            )
            t_shift = median_time(
                lambda x=x, g=grid, f=first: shift(x, g, 0, 1, first=f), args.repeat, comm
            )
            b_halo = face_bytes(grid, site_bytes, range(nd))
            b_shift = (
                (grid.local_volume // grid.local_shape[0]) * site_bytes if grid.grid[0] > 1 else 0
            )
            rows.append(
                (
                    "x".join(map(str, shape)),
                    "x".join(map(str, grid.grid)),
                    kind,
                    grid.local_volume,
                    t_halo * 1e6,
                    b_halo,
                    t_shift * 1e6,
                    b_shift,
                )
            )
    if comm.rank == 0:
        cpu = platform.processor() or platform.machine()
        mpi = MPI.Get_library_version().splitlines()[0]
        print(
            f"# bench_halo  ranks={comm.size}  {platform.node()}  {cpu}"
            f"  torch {torch.__version__}  {mpi}  {date.today()}"
        )
        hdr = (
            f"{'lattice':>12} {'grid':>8} {'site':>6} {'local V':>9} {'halo us':>9} "
            f"{'halo MB':>8} {'halo GB/s':>9} {'shift us':>9} {'shift MB':>8} {'shift GB/s':>10}"
        )
        print(hdr)
        for lat, g, kind, vol, th, bh, ts, bs in rows:
            bw_h = f"{bh / th / 1e3:9.2f}" if bh else f"{'-':>9}"
            bw_s = f"{bs / ts / 1e3:10.2f}" if bs else f"{'-':>10}"
            print(
                f"{lat:>12} {g:>8} {kind:>6} {vol:>9} {th:9.1f} {bh / 1e6:8.3f} {bw_h} "
                f"{ts:9.1f} {bs / 1e6:8.3f} {bw_s}"
            )


if __name__ == "__main__":
    main()
