"""Error analysis of a run: per observable mean, error and integrated autocorrelation time
(Gamma method, Wolff 2004), acceptance and <exp(-dH)>, and derived quantities with
propagated errors: susceptibility and Binder cumulant (phi^4), topological susceptibility
chi_t = <Q^2>/V, effective masses of correlators (app/derived.py).

PATH is a run directory (its records.jsonl), a records file or an HDF5 ensemble
(docs/run-output.md). Each chain is analysed as a replica of the same ensemble.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc analyze``."""
    parser.add_argument("path", help="run directory, records.jsonl or HDF5 ensemble file")
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        metavar="N",
        help="thermalization cut: drop the first N production trajectories (the deck's "
        "run.thermalization trajectories are never analysed)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument(
        "--bin",
        dest="bin_size",
        type=int,
        default=1,
        metavar="B",
        help="average B consecutive measurements per chain before the analysis (default 1)",
    )
    parser.add_argument(
        "--volume",
        type=int,
        help="lattice volume for chi, chi_t (default: from the run's HDF5 ensemble)",
    )
    parser.add_argument(
        "--S", dest="S", type=float, default=1.5, help="Wolff's window parameter (default 1.5)"
    )
    parser.add_argument(
        "--tau-exp",
        dest="tau_exp",
        type=float,
        default=0.0,
        metavar="T",
        help="critical slowing down: attach the exponential tail of a slow mode with this "
        "autocorrelation time (in measurements, or bins with --bin) where rho(W) is first "
        "compatible with zero (Schaefer-Sommer-Virotta; default 0: Wolff's window with --S)",
    )
    parser.add_argument(
        "--observable",
        action="append",
        dest="names",
        metavar="NAME",
        help="analyse only this observable (repeatable)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc analyze``; returns the exit status."""
    from ..analysis import analyze_data, format_table, load_run, plot
    from ..errors import InputError, MissingDependency

    # every option and the --plot target first: a bad value is one message, before any reading
    if not (math.isfinite(args.S) and args.S >= 0):
        raise InputError(f"--S must be a finite number >= 0, got {args.S}")
    if not args.tau_exp >= 0 or args.tau_exp == float("inf"):
        raise InputError(f"--tau-exp {args.tau_exp}: must be a finite number >= 0")
    if args.skip < 0:
        raise InputError(f"--skip {args.skip}: must be >= 0")
    if args.bin_size < 1:
        raise InputError(f"--bin {args.bin_size}: the bin size must be >= 1")
    if args.volume is not None and args.volume < 1:
        raise InputError(f"--volume {args.volume}: must be >= 1")
    if args.plot:  # before any output: a missing extra is one message, not a half result
        problem = plot_dir_problem(Path(args.plot))
        if problem:
            raise InputError(
                f"--plot {args.plot}: {problem}; give a directory (created if missing)"
            )
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise MissingDependency("matplotlib", "analysis", "analyze --plot") from None
    run = load_run(args.path)
    result = analyze_data(
        run,
        skip=args.skip,
        S=args.S,
        names=args.names,
        bin_size=args.bin_size,
        volume=args.volume,
        tau_exp=args.tau_exp,
    )
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(format_table(result))
    if args.plot:
        files = plot(run, result, args.plot)
        if not args.json:
            print(f"wrote {len(files)} plot(s) to {args.plot}")
    return 0


def plot_dir_problem(directory: Path) -> str | None:
    """Why the plots cannot be written into ``directory`` (created with its missing parents),
    or None: it, or its nearest existing ancestor, must be a writable directory."""
    if directory.exists():
        if not directory.is_dir():
            return f"{directory} exists and is not a directory"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"the directory {directory} is not writable"
        return None
    parent = directory.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create it: the directory {parent} is not writable"
    return None
