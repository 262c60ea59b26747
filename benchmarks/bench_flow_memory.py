"""Peak memory per chain of the trivialized SU(3) force with the stout flow, with and without
per-layer activation checkpointing, extrapolated to 8^3x16.

    nice python benchmarks/bench_flow_memory.py --lattices 4,8 --layers 8 --batch 1

Each case runs in a fresh subprocess (``--case``): it builds the SU(3) Wilson theory, an
untrained :func:`kernels.flows.su3.su3_stout_flow` (parameters frozen, as in a run) and its
:class:`kernels.samplers.trivialized.TransformedTheory`, computes one force to warm up, resets
the process's resident-set high-water mark (``/proc/self/clear_refs`` = 5, Linux), computes
the force again and reports ``VmHWM - VmRSS`` before the call: the extra resident memory the
force needs on top of the fields and the model (autograd activations, transients, allocator
slack). Where the reset is not available it falls back to ``ru_maxrss`` minus the resident
size before the call (an upper bound that includes earlier peaks). The count ``saved`` is the
sum of the distinct storages autograd keeps from the forward pass for the backward
(``torch.autograd.graph.saved_tensors_hooks``; with checkpointing only the layer inputs, the
recomputed activations live during one layer's backward and are in the peak only).

Extrapolation: activations are per site and per chain, so memory scales with the local volume
``V`` and the batch; the table scales the 8^4 (largest measured) value by ``8^3*16 / V``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

TARGET = (8, 8, 8, 16)
MB = 2.0**20


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    gc.collect()
    try:  # give freed heap back to the OS so that VmRSS is the live memory (glibc)
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_case(lattice: int, layers: int, batch: int, checkpoint: bool, threads: int) -> dict:
    """One measurement in this process (see module docstring); returns a dict of numbers."""
    import resource

    import torch

    from kernels.flows.su3 import su3_stout_flow
    from kernels.samplers.trivialized import TransformedTheory
    from kernels.theories.su3 import SU3Gauge
    from parallel import single_rank_grid
    from parallel.rng import SiteRNG

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    grid = single_rank_grid((lattice,) * 4)
    theory = SU3Gauge(grid, 6.0)
    flow = su3_stout_flow(grid, n_layers=layers, checkpoint_layers=checkpoint)
    flow.requires_grad_(False)
    triv = TransformedTheory(theory, flow)
    field = theory.hot_start(SiteRNG(1), 0, batch)
    triv.force(field)  # warm-up (allocator pools, lazy initialisation)

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        triv.force(field)
    saved_bytes = sum(saved.values())

    reset = _reset_peak()
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    triv.force(field)
    seconds = time.perf_counter() - t0
    if reset and before is not None:
        peak_kb = (_status_kb("VmHWM") or 0) - before
        method = "VmHWM"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - (before or 0)
        method = "ru_maxrss"
    return {
        "lattice": lattice,
        "layers": layers,
        "batch": batch,
        "checkpoint": checkpoint,
        "peak_mb": peak_kb / 1024.0,
        "saved_mb": saved_bytes / MB,
        "field_mb": field.numel() * field.element_size() / MB,
        "seconds": seconds,
        "method": method,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lattices", default="4,8", help="L of the L^4 lattices, comma list")
    ap.add_argument("--layers", default="8", help="stout layers, comma list")
    ap.add_argument("--batch", type=int, default=1, help="chains per force call")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        ap.error("--batch and --threads must be >= 1")
    if args.case is not None:
        lat, lay, ck = (int(x) for x in args.case.split(","))
        print(json.dumps(run_case(lat, lay, args.batch, bool(ck), args.threads)))
        return
    lattices = [int(x) for x in args.lattices.split(",") if x.strip()]
    layer_counts = [int(x) for x in args.layers.split(",") if x.strip()]
    if any(x < 2 or x % 2 for x in lattices):
        ap.error("--lattices: even extents >= 2 (the stout sublattices need even extents)")
    print(f"# bench_flow_memory.py  {datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {platform.node()} ({platform.processor() or platform.machine()})")
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# batch {args.batch}, {args.threads} thread(s); MB = 2^20 bytes, per chain")
    print()
    print("| lattice | layers | checkpoint | peak MB / chain | saved MB / chain | field MB | s |")
    print("|---|---|---|---|---|---|---|")
    results = []
    script = str(Path(__file__).resolve())
    for lay in layer_counts:
        for lat in lattices:
            for ck in (0, 1):
                cmd = [sys.executable, script, "--case", f"{lat},{lay},{ck}"]
                cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results.append(r)
                b = r["batch"]
                print(
                    f"| {lat}^4 | {lay} | {'yes' if ck else 'no'} | {r['peak_mb'] / b:.1f} | "
                    f"{r['saved_mb'] / b:.2f} | {r['field_mb'] / b:.2f} | {r['seconds']:.2f} |",
                    flush=True,
                )
    print()
    vol_t = TARGET[0] * TARGET[1] * TARGET[2] * TARGET[3]
    print(f"Extrapolated to {'x'.join(map(str, TARGET))} (x V_target / V, largest lattice):")
    print()
    print("| layers | checkpoint | peak MB / chain | saved MB / chain |")
    print("|---|---|---|---|")
    big = max(lattices)
    for r in results:
        if r["lattice"] != big:
            continue
        s = vol_t / big**4 / r["batch"]
        print(
            f"| {r['layers']} | {'yes' if r['checkpoint'] else 'no'} | {r['peak_mb'] * s:.0f} | "
            f"{r['saved_mb'] * s:.0f} |"
        )


if __name__ == "__main__":
    main()
