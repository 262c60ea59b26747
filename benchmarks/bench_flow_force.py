"""Cost of the trivialized force against the plain force, per chain, for several batch sizes.

    python benchmarks/bench_flow_force.py --model minimal-phi4-L18 --models /tmp/models \\
        --batches 16,64,256,1024 --threads 1

For a flow from the model registry (its card gives the theory, couplings and lattice), times
the theory's force ``dS/dU`` and the trivialized force ``dS~/dV`` (autograd through the flow,
:class:`kernels.samplers.trivialized.TransformedTheory`) on hot-start fields and prints the
median seconds per call divided by the number of chains, and their ratio. The ratio bounds
what trivialized HMC must gain in ``tau_int`` (and step count) to be cheaper than plain HMC.
"""

from __future__ import annotations

import argparse
import statistics
import time

from flow_bench_setup import add_flow_arguments, load_trivialized, say
from mpi4py import MPI

from parallel.rng import SiteRNG


def seconds_per_call(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls (after one warm-up), max over ranks."""
    fn()
    times = []
    for _ in range(repeat):
        MPI.COMM_WORLD.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_flow_arguments(ap)
    ap.add_argument("--batches", default="16,64,256", help="chains per call, comma list")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    theory, triv, _ = load_trivialized(args, "bench_flow_force")
    grid = theory.grid
    say("")
    say("| chains | plain force s / chain | trivialized force s / chain | ratio |")
    say("|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",") if b.strip()):
        field = theory.hot_start(SiteRNG(1), 0, batch, grid.replica * batch)
        plain = seconds_per_call(lambda f=field: theory.force(f), args.repeat) / batch
        flowed = seconds_per_call(lambda f=field: triv.force(f), args.repeat) / batch
        say(f"| {batch} | {plain:.2e} | {flowed:.2e} | {flowed / plain:.1f} |")


if __name__ == "__main__":
    main()
