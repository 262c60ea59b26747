"""Cost of the trivialized force against the plain force, per chain, for several batch sizes.

    python benchmarks/bench_flow_force.py --model minimal-phi4-L18 --models /tmp/models \\
        --batches 16,64,256,1024 --threads 1
    python benchmarks/bench_flow_force.py --arch su3_stout --lattice 8,8,8,8 \\
        --couplings beta=6.0 --batches 1,2 --threads 1
    python benchmarks/bench_flow_force.py --arch phi4_minimal --lattice 18,18 \\
        --couplings beta=0.641,lambda=0.5 --batches 16,256 --threads 1

For a flow from the model registry (``--model``; its card gives the theory, couplings and
lattice) or an untrained flow of a deck architecture (``--arch`` with ``--lattice``,
``--couplings`` and builder ``--options``, e.g. ``n_layers=8``; an untrained flow costs what
a trained one of the same architecture costs), times the theory's force ``dS/dU`` and the
trivialized force ``dS~/dV`` (:class:`kernels.samplers.trivialized.TransformedTheory`) on
hot-start fields and prints the median seconds per call divided by the number of chains, and
their ratio: wall time (max over ranks), or with ``--clock cpu`` this process's CPU time
(``time.process_time``; with one thread it is the work done, much less sensitive to other jobs
on a shared machine). The ratio bounds what trivialized HMC must gain in ``tau_int`` (and
step count) to be cheaper than plain HMC.

``--breakdown N`` prints after the table where the trivialized force's time goes (the N
largest items of ``torch.profiler``'s self time, for the last batch size).

``--compile`` (one process, no split axis) wraps the flow's ``forward_local`` in
``torch.compile`` (dynamo + inductor; the backward is compiled with it) and adds a column with
that force and its largest difference from the eager one. A trial, not an application
setting: the halo exchange's MPI calls cannot be traced, so on a split grid every exchange
would need a graph break (docs/performance.md, "Force cost").
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from flow_bench_setup import load_trivialized, say
from mpi4py import MPI

from app.deck import load_yaml
from parallel.memory import keep_freed_memory
from parallel.rng import SiteRNG


def seconds_per_call(fn, repeat: int) -> tuple[float, float]:
    """Median wall time (max over ranks) and median CPU time of ``fn()`` over ``repeat``
    calls, after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        MPI.COMM_WORLD.Barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c0)
        walls.append(MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return statistics.median(walls), statistics.median(cpus)


def _pairs(text: str, what: str) -> dict:
    """``"a=1,b=[2,3]"`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML 1.2, as deck
    values are: ``6e0`` and ``1e-10`` are floats; commas inside brackets belong to the
    value)."""
    out = {}
    for item in (t for t in re.split(r",(?![^\[]*\])", text) if t.strip()):
        if "=" not in item:
            raise SystemExit(f"{what}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = load_yaml(value)
    return out


def build_from_arch(args: argparse.Namespace):
    """Theory (float64) and untrained flow of ``--arch`` on ``--lattice`` (all ranks); returns
    ``(theory, trivialized theory)`` and prints the header."""
    import platform
    import sys
    from datetime import datetime

    import torch

    from kernels.flows.base import build_flow
    from kernels.samplers.trivialized import TransformedTheory
    from kernels.theories import architectures, make_theory
    from parallel import ProcessGrid

    torch.set_default_dtype(torch.float64)
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = architectures()
    if args.arch not in archs:
        raise SystemExit(f"--arch {args.arch!r}: one of {sorted(archs)}")
    theory_name, builder = archs[args.arch]
    shape = tuple(int(x) for x in args.lattice.split(","))
    grid = ProcessGrid(shape)
    theory = make_theory(theory_name, grid, **_pairs(args.couplings, "--couplings"))
    torch.manual_seed(0)
    flow = build_flow({"builder": builder, "kwargs": _pairs(args.options, "--options")}, grid)
    flow.requires_grad_(False)
    flow.eval()
    nparam = sum(p.numel() for p in flow.parameters())
    say(f"# bench_flow_force  {datetime.now().isoformat(timespec='seconds')}")
    say(f"# machine: {platform.node()} ({platform.processor() or platform.machine()})")
    say(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {grid.describe()}")
    say(f"# command: {' '.join(sys.argv)}")
    say(f"# flow {args.arch} (untrained, {builder}, {nparam} parameters); theory {theory_name}")
    if args.arch == "su3_stout":
        from kernels.flows.su3_fused import fused_available, stout_kernel_setting

        numba_state = "available" if fused_available() else "missing"
        say(f"# stout layer kernels: {stout_kernel_setting()} (numba {numba_state})")
    return theory, TransformedTheory(theory, flow)


def main(argv=None) -> None:
    keep_freed_memory()  # as the application does (parallel/memory.py)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registry reference name[@hash]")
    src.add_argument("--arch", help="untrained flow of this deck architecture (su3_stout, ...)")
    ap.add_argument("--models", default=None, help="registry root (default $TRIVHMC_MODELS)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--lattice", default="8,8,8,8", help="--arch: global lattice, comma list")
    ap.add_argument("--couplings", default="beta=6.0", help="--arch: theory couplings k=v,...")
    ap.add_argument("--options", default="", help="--arch: builder keyword arguments k=v,...")
    ap.add_argument("--batches", default="16,64,256", help="chains per call, comma list")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time the force with the flow's forward_local under torch.compile",
    )
    ap.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="N",
        help="after the table: the N largest items of the trivialized force's time "
        "(torch.profiler self time, the last batch size; rank 0)",
    )
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: wall time, max over ranks; cpu: this process's CPU time (one thread)",
    )
    args = ap.parse_args(argv)
    if args.breakdown < 0:
        raise SystemExit(f"--breakdown {args.breakdown}: the number of items must be >= 0")
    if args.model:
        theory, triv, _ = load_trivialized(args, "bench_flow_force")
    else:
        theory, triv = build_from_arch(args)
    grid = theory.grid
    pick = 0 if args.clock == "wall" else 1
    compiled = compiled_twin(triv) if args.compile else None
    say(f"# clock: {args.clock}")
    say("")
    head = "| chains | plain force s / chain | trivialized force s / chain | ratio |"
    rule = "|---|---|---|---|"
    if compiled is not None:
        head += " compiled s / chain | ratio | compile s | max abs diff |"
        rule += "---|---|---|---|"
    say(head)
    say(rule)
    for batch in (int(b) for b in args.batches.split(",") if b.strip()):
        field = theory.hot_start(SiteRNG(1), 0, batch, grid.replica * batch)
        plain = seconds_per_call(lambda f=field: theory.force(f), args.repeat)[pick] / batch
        flowed = seconds_per_call(lambda f=field: triv.force(f), args.repeat)[pick] / batch
        row = f"| {batch} | {plain:.2e} | {flowed:.2e} | {flowed / max(plain, 1e-12):.1f} |"
        if compiled is not None:
            ref = triv.force(field)
            t0 = time.perf_counter()
            got = compiled.force(field)
            first = time.perf_counter() - t0  # compilation for this shape
            diff = float((got - ref).abs().max())
            tc = seconds_per_call(lambda f=field: compiled.force(f), args.repeat)[pick] / batch
            row += f" {tc:.2e} | {tc / max(plain, 1e-12):.1f} | {first:.0f} | {diff:.1e} |"
        say(row)
    if args.breakdown:
        breakdown(lambda f=field: triv.force(f), args.repeat, args.breakdown)


def breakdown(force, repeat: int, top: int) -> None:
    """Print where the time of ``force()`` goes: ``torch.profiler`` over ``repeat`` calls
    (after one warm-up), the ``top`` entries by self time (the profiler's "CPU time": the
    wall duration of an op on the calling thread, its own worker threads' time not added; a
    custom autograd Function's forward and backward are entries of their own, with the
    fused kernels they call), in ms per call and % of the whole call's wall time (profiler
    overhead included), and what no torch op holds (Python, numba kernels called outside a
    Function, such as a fused plain force)."""
    from torch.profiler import ProfilerActivity, profile

    force()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(repeat):
            force()
        whole = (time.perf_counter() - t0) * 1e6  # us, wall, as the profiler's op durations
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    in_ops = sum(e.self_cpu_time_total for e in rows)
    total = max(whole, in_ops, 1.0)
    say("")
    say(f"trivialized force, self time per call ({repeat} calls, torch.profiler):")
    say("")
    say("| item | calls per force | ms per force | % |")
    say("|---|---|---|---|")
    for e in rows[:top]:
        ms = e.self_cpu_time_total / 1e3 / repeat
        pct = 100.0 * e.self_cpu_time_total / total
        say(f"| {e.key} | {e.count / repeat:g} | {ms:.3f} | {pct:.1f} |")
    rest = total - in_ops
    say(
        f"| (outside any torch op: Python, numba calls there) | | {rest / 1e3 / repeat:.3f} |"
        f" {100.0 * rest / total:.1f} |"
    )
    say(f"| (whole call, wall time) | | {total / 1e3 / repeat:.3f} | 100.0 |")


def compiled_twin(triv):
    """An object with the ``force`` of ``triv`` (:class:`TransformedTheory`) whose flow's
    ``forward_local`` runs under ``torch.compile`` (``dynamic=False``: one graph per batch
    size; same parameters). One process with no split axis only."""
    from types import SimpleNamespace

    import torch

    from kernels.flows.pullback import pullback_force

    theory, flow = triv.theory, triv.flow
    if any(n > 1 for n in theory.grid.grid):
        raise SystemExit(
            "--compile: one process per lattice only (a halo exchange over MPI cannot be traced)"
        )
    twin = SimpleNamespace(forward_local=torch.compile(flow.forward_local, dynamic=False))
    return SimpleNamespace(force=lambda v: pullback_force(twin, theory, v, theory.force))


if __name__ == "__main__":
    main()
