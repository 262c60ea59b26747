"""Time per durable HDF5 save as a function of the number of configurations already stored.

An ensemble of an 8x8 U(1) lattice (one config = (2, 8, 8) float64, 1 KiB) is filled to N
configurations with fast non-durable appends (``atomic=False``), then ``--saves`` durable saves
(``atomic=True``: what a run does; one observables row + one configuration each) are timed.
A save whose cost is O(1) in the ensemble length gives a flat column.

    OMP_NUM_THREADS=1 python benchmarks/bench_hdf5_append.py [--sizes 10 1000 10000] [--saves 30]

Prints one table row per N: median and mean time per durable save, the median without fsync
(``atomic=False``: the HDF5 work alone, free of the storage's fsync latency) and the file size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from app.io.hdf5 import COMMITTED, EnsembleWriter, field_checksum, read_config

SHAPE = (2, 8, 8)


def writer(path: Path, mode: str, atomic: bool) -> EnsembleWriter:
    return EnsembleWriter(
        path, "u1", {"beta": 2.0}, (8, 8), "hmc", 1, "bench", mode=mode, atomic=atomic
    )


def fill(path: Path, n: int, rng: np.random.Generator, block: int = 10_000) -> None:
    """An ensemble of ``n`` committed configurations: the writer makes the file and its first
    row, the other rows are written in bulk with h5py into the same datasets (same layout,
    one configuration per chunk, real SciDAC checksums), then the commit marker is set to
    ``[n, n]``. Appending 10^5 rows one by one took over 9 minutes on the dev VM."""
    w = writer(path, "w", atomic=False)
    w.append_observables(0, {"plaquette": 0.0})
    w.append_config(rng.uniform(-np.pi, np.pi, SHAPE), 0, first=1)
    w.close()
    with h5py.File(path, "a") as f:
        for name in ("configs", "config_trajectory", "config_checksum"):
            f[name].resize(n, axis=0)
        for ds in f["observables"].values():
            ds.resize(n, axis=0)
        for a in range(1, n, block):
            b = min(a + block, n)
            configs = rng.uniform(-np.pi, np.pi, (b - a, *SHAPE))
            f["configs"][a:b] = configs
            f["config_checksum"][a:b] = [field_checksum(c, 1, 2) for c in configs]
        f["config_trajectory"][1:] = np.arange(1, n)
        f["observables/trajectory"][1:] = np.arange(1, n)
        f["observables/plaquette"][1:] = np.arange(1, n, dtype=np.float64)
        f.attrs[COMMITTED] = np.asarray([n, n], np.int64)


def time_saves(
    path: Path, n: int, saves: int, rng: np.random.Generator, atomic: bool = True
) -> list[float]:
    w = writer(path, "a", atomic=atomic)
    times = []
    for t in range(n, n + saves):
        field = rng.uniform(-np.pi, np.pi, SHAPE)
        t0 = time.perf_counter()
        w.append_observables(t, {"plaquette": float(t)})
        w.append_config(field, t, first=1)
        times.append(time.perf_counter() - t0)
    w.close()
    read_config(path, -1)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000])
    ap.add_argument("--saves", type=int, default=30)
    ap.add_argument("--no-fsync-column", action="store_true", help="skip the atomic=False saves")
    ap.add_argument("--dir", default=None, help="directory for the files (default: a tmp dir)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"{'N existing':>10} {'median ms/save':>15} {'mean ms/save':>13} "
        f"{'no-fsync median ms':>19} {'file MiB':>9}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for n in args.sizes:
            path = Path(d) / f"ens_{n}.h5"
            fill(path, n, rng)
            times = time_saves(path, n, args.saves, rng)
            fast = float("nan")
            if not args.no_fsync_column:  # the same saves without fsync (atomic=False)
                more = time_saves(path, n + args.saves, args.saves, rng, False)
                fast = 1e3 * statistics.median(more)
            size = path.stat().st_size / 2**20
            print(
                f"{n:>10} {1e3 * statistics.median(times):>15.2f} "
                f"{1e3 * statistics.fmean(times):>13.2f} {fast:>19.2f} {size:>9.2f}"
            )


if __name__ == "__main__":
    main()
