"""Generate an ensemble from a deck (resumes from the last checkpoint by itself).

``trivhmc run --status deck.yaml`` prints how far the run is (one JSON line) and exits 0 when
it is complete, 3 when more trajectories are needed (app/progress.py, docs/jobscripts.md).
"""

from __future__ import annotations

import argparse
import json

from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_deck_arguments(parser)
    parser.add_argument(
        "--status",
        action="store_true",
        help="print progress as JSON; exit 0 if complete, 3 if more trajectories are needed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    if args.status:
        from ..progress import status

        code, report = status(args.deck, args.overrides)
        print(json.dumps(report))
        return code
    from ..deck import load_deck
    from ..run import run

    deck = load_deck(args.deck, args.overrides)
    from mpi4py import MPI

    # one run per output directory (app/lock.py): refused on every rank if held by a live run
    from ..lock import acquire_run_lock

    comm = MPI.COMM_WORLD
    lock = acquire_run_lock(deck.output_dir, comm, comm.Get_rank() == 0)
    try:
        result = run(deck, progress=False if args.no_progress else None)
    finally:
        if lock is not None:
            lock.release()

    if MPI.COMM_WORLD.Get_rank() == 0:
        state = "finished" if result.finished else "stopped (max_runtime); resume to continue"
        print(
            f"trivhmc run: {result.trajectory}/{result.total} trajectories, {state}; "
            f"acceptance {result.acceptance:.3f}; output in {result.directory}"
        )
    return 0
