"""Name numba's compiled functions for ``perf`` (a profiling aid, not a benchmark table).

``perf record`` samples jitted code as bare addresses in ``[JIT] tid N``. ``perf report``
names them when ``/tmp/perf-<pid>.map`` lists ``start size name`` for the process. This
module writes that file for every numba function of the loaded modules (kernels and the
helpers linked into them, each under ``caller|symbol``), from LLVM's own symbol table:

    OMP_NUM_THREADS=1 NUMBA_CACHE_DIR=$(mktemp -d) TRIVHMC_CACHE=$(mktemp -d) \\
        perf record -k mono -e cpu-clock -F 2000 -o perf.data -- \\
        python benchmarks/numba_perf_map.py --arch su3_stout --lattice 8,8,8,8 --calls 150
    perf report -i perf.data --stdio --sort sym --time <start>,<end>

The run prints the time window of the timed calls (``perf report --time`` takes it, so that
the compilation before it is left out). Only freshly compiled code can be named: numba keeps
no symbol table for machine code loaded from its disk cache, hence the two empty cache
directories (the compilation then takes a minute or two). With ``--arch``, the timed calls
are trivialized forces of an untrained flow (``bench_flow_force.py``'s set-up); a script of
your own can import :func:`write_perf_map` and call it after its own work.

Session 19 (docs/performance.md) used it on the 8^4 stout force: the loops' gather and the
prefetch of the next block's rows each take a visible share of the backward.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _dispatchers():
    """Every numba dispatcher (and serial/parallel twin) of the loaded modules."""
    from numba.core.registry import CPUDispatcher

    from kernels.backends.numba_threads import ThreadedKernel

    for mname, module in list(sys.modules.items()):
        if mname.split(".")[0] == "torch":  # no numba there; some attributes warn when read
            continue
        for name, obj in list(getattr(module, "__dict__", {}).items()):
            if isinstance(obj, CPUDispatcher):
                yield name, obj
            elif isinstance(obj, ThreadedKernel):
                yield name, obj.serial
                yield name, obj.parallel


def perf_map_entries() -> dict[int, str]:
    """Start address -> ``caller|symbol`` of every function defined in a freshly compiled
    numba library of the loaded modules (libraries loaded from the disk cache have none)."""
    entries: dict[int, str] = {}
    seen: set[int] = set()
    for name, dispatcher in _dispatchers():
        for cres in dispatcher.overloads.values():
            lib = cres.library
            if id(lib) in seen:
                continue
            seen.add(id(lib))
            try:
                names = [f.name for f in lib._final_module.functions if not f.is_declaration]
            except Exception:  # no IR kept (cached or not finalized)
                continue
            for symbol in names:
                try:
                    address = lib.get_pointer_to_function(symbol)
                except Exception:
                    continue
                if address:
                    entries[address] = f"{name}|{symbol[:160]}"
    return entries


def write_perf_map(path: str | None = None) -> int:
    """Write ``/tmp/perf-<pid>.map`` (or ``path``); each function's size is the distance to
    the next start (at most 1 MiB: an upper bound, LLVM does not report sizes, so a sample
    in the gap after a library's last function is given to that function). Returns the
    number of entries."""
    entries = perf_map_entries()
    starts = sorted(entries)
    path = path or f"/tmp/perf-{os.getpid()}.map"
    with open(path, "w") as fh:
        for a, b in zip(starts, starts[1:] + [starts[-1] + 65536] if starts else [], strict=True):
            fh.write(f"{a:x} {min(b - a, 1 << 20):x} {entries[a]}\n")
    return len(starts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="su3_stout", help="flow architecture (bench_flow_force)")
    ap.add_argument("--lattice", default="8,8,8,8")
    ap.add_argument("--couplings", default="beta=6.0")
    ap.add_argument("--options", default="")
    ap.add_argument("--calls", type=int, default=100, help="timed trivialized forces")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_flow_force as bff

    from parallel.memory import keep_freed_memory
    from parallel.rng import SiteRNG

    keep_freed_memory()
    args.threads = 1
    theory, triv = bff.build_from_arch(args)
    field = theory.hot_start(SiteRNG(1), 0, 1, 1)
    triv.force(field)  # compiles
    t0, w0 = time.perf_counter(), time.clock_gettime(time.CLOCK_MONOTONIC)
    for _ in range(args.calls):
        triv.force(field)
    w1 = time.clock_gettime(time.CLOCK_MONOTONIC)
    print(f"# {(time.perf_counter() - t0) / args.calls:.4f} s per trivialized force")
    print(f"# perf report --time {w0:.6f},{w1:.6f}  (CLOCK_MONOTONIC: record with -k mono)")
    print(f"# {write_perf_map()} functions in /tmp/perf-{os.getpid()}.map")


if __name__ == "__main__":
    main()
