"""Measure saved configurations with the deck's ``measure:`` section (docs/measure.md):
Wilson flow scales t0 and w0 with t^2 E(t) and t d/dt t^2 E(t) histories, clover Q at chosen
flow times, Polyakov loop, Wilson loops W(R, T), the theory's correlators.

Without FILES every configuration of the run (its ensemble_c*.h5, else configs/*.lime or
*.nersc) is measured; results go to OUTPUT_DIR/measurements_offline.jsonl and into a
``measurements`` group of each ensemble file. With FILES (ILDG, NERSC or HDF5) the JSON lines
go to ./measurements_offline.jsonl or --output. The output is checked before anything is
measured: a directory, a missing directory, one of the files measured or an existing file
that is not an earlier output of this command is refused (exit 2; docs/measure.md).
Distributed over MPI like the run
(``mpiexec -n N trivhmc measure DECK``: parallel.replicas groups measure different
configurations, each over parallel.grid); ``trivhmc analyze`` of the output gives errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc measure``."""
    add_deck_arguments(parser)
    parser.add_argument("files", nargs="*", help="configuration files (default: the run's)")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        help="JSON lines file to write (default: the run's measurements_offline.jsonl, or "
        "./measurements_offline.jsonl with FILES); its directory must exist, and an existing "
        "file is replaced only if it is an earlier output of trivhmc measure",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc measure``; returns the exit status."""
    from mpi4py import MPI

    from ..deck import load_deck
    from ..errors import InputError
    from ..preflight import check_device, check_layout

    deck = load_deck(args.deck, args.overrides)
    if deck.measure is None:
        raise InputError(f"{args.deck} has no `measure:` section (docs/measure.md)")
    check_layout(deck, MPI.COMM_WORLD.Get_size())
    check_device(deck.parallel.device)
    from ..measure import measure_offline

    out, n = measure_offline(deck, list(args.files), args.output)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"trivhmc measure: {n} configuration(s) measured; wrote {out}")
    return 0
