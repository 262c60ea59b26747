"""Generate an ensemble from a deck (resumes from the last checkpoint by itself).

A SIGTERM (scheduler wall-time warning, ``scancel``) stops the run after the trajectory in
progress, with a checkpoint; the exit status is then 143 (128 + SIGTERM).

``trivhmc run --status deck.yaml`` prints how far the run is (one JSON line) and exits 0 when
it is complete, 3 when more trajectories are needed (app/progress.py, docs/jobscripts.md).
"""

from __future__ import annotations

import argparse
import json
import signal

from ..errors import EXIT_SIGNAL_BASE
from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc run``."""
    add_deck_arguments(parser)
    parser.add_argument(
        "--status",
        action="store_true",
        help="print progress as JSON; exit 0 if complete, 3 if more trajectories are needed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc run``; returns the exit status (``--status``: 0 complete, 3 more needed)."""
    if args.status:
        from ..progress import status

        code, report = status(args.deck, args.overrides)
        print(json.dumps(report))
        return code
    from ..deck import load_deck
    from ..preflight import preflight

    deck = load_deck(args.deck, args.overrides)
    preflight(deck, args.deck)  # layout, device, model: one message before any output
    from mpi4py import MPI

    from ..lock import acquire_run_lock
    from ..run import run

    out = deck.output_dir
    comm = MPI.COMM_WORLD
    # the outermost directory this run will create (its parents may be new too)
    created = _first_missing(out) if comm.Get_rank() == 0 else None
    # one run per output directory (app/lock.py): refused on every rank if held by a live run
    lock = acquire_run_lock(out, comm, comm.Get_rank() == 0)
    try:
        result = run(deck, progress=False if args.no_progress else None)
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
        if created is not None:
            _remove_empty_tree(created)  # a run that failed before writing anything
        raise
    finally:
        if lock is not None:
            lock.release()

    if MPI.COMM_WORLD.Get_rank() == 0:
        from ..run import RECORDS
        from ..runlog import summarize

        if result.start >= result.total:
            state = "already complete, nothing to do"
        elif result.finished:
            state = f"finished (this invocation ran {result.trajectory - result.start})"
        elif result.signal is not None:
            name = signal.Signals(result.signal).name
            state = f"stopped by {name} after a checkpoint; resume to continue"
        else:
            state = "stopped (max_runtime); resume to continue"
        summary = summarize(result.directory / RECORDS, result.start)
        print(
            f"trivhmc run: {result.trajectory}/{result.total} trajectories, {state}; "
            f"{summary.text()}; output in {result.directory}"
        )
    if result.signal is not None:  # as a shell reports a process the signal ended
        return EXIT_SIGNAL_BASE + result.signal
    return 0


def _first_missing(path):
    """The outermost of ``path`` and its parents that does not exist yet (None: it exists)."""
    from pathlib import Path

    path = Path(path).resolve()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_empty_tree(directory) -> None:
    """Remove ``directory`` and its subdirectories if they hold no file at all."""
    from pathlib import Path

    root = Path(directory)
    if not root.is_dir() or any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    root.rmdir()
