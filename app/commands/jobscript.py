"""Render a batch script for a deck: PBS (aurora, polaris), Slurm (frontier) or plain
mpiexec (local). The script runs `trivhmc run DECK` (which resumes from the last checkpoint)
and resubmits itself until the deck's trajectory count is reached (docs/jobscripts.md).

Without --dry-run the script is written next to the deck (DECK_STEM.SYSTEM.pbs|slurm|sh) or
to --output, whose directory must exist; an existing file there is replaced only with
--overwrite (or when it already holds this very script). With --dry-run it is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..deck import load_deck
from ..errors import InputError, is_storage_error
from ..jobscript import SYSTEMS, default_output, render
from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc jobscript``."""
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    add_deck_arguments(parser)
    parser.add_argument("--nodes", type=int, help="nodes (default: from the deck's grid)")
    parser.add_argument(
        "--ranks-per-node", type=int, help="MPI ranks per node (default: GPU devices per node)"
    )
    parser.add_argument(
        "--walltime",
        metavar="HH:MM:SS",
        help="wall time per job (default 01:00:00; local: none). The run stops cleanly "
        "10%% (at least 5 min) before it and the script resubmits itself.",
    )
    parser.add_argument("--account", help="project / allocation to charge")
    parser.add_argument(
        "--queue",
        help="queue or partition (default: the system's production queue, docs/jobscripts.md)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="accept a deck whose parallel.device is not the system's GPUs (e.g. cpu)",
    )
    parser.add_argument("--job-name", help="job name (default trivhmc-DECK_STEM)")
    parser.add_argument("--filesystems", help="PBS filesystems (aurora/polaris)")
    parser.add_argument(
        "--setup",
        action="append",
        metavar="LINE",
        help="shell line to set up the environment (repeatable; default: activate the "
        "current virtual environment)",
    )
    parser.add_argument("--max-jobs", type=int, default=50, help="most chained jobs (default 50)")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        help="where to write the script (default DECK_STEM.SYSTEM.pbs|slurm|sh next to the "
        "deck); its directory must exist",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing file at the output path (without it, only a file that "
        "already holds this very script is accepted)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the script only")


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc jobscript``; returns the exit status.

    Checks, before anything is written: the deck (exit 2), the output path (its directory
    must exist, exit 2), the layout (exit 4), the device (exit 2) and the sampler's model,
    flow or L2HMC (exit 7; one the deck's own train section stores is a warning). An
    existing file at the output path is replaced only when it holds the same script already
    or with ``--overwrite``; the deck itself never."""
    from ..io.paths import OutputPathError, check_output_dir
    from ..preflight import model_warning

    deck_path = Path(args.deck).resolve()
    deck = load_deck(deck_path, args.overrides)
    system = SYSTEMS[args.system]
    walltime = args.walltime
    if walltime is None and system.scheduler != "none":
        walltime = "01:00:00"
    out = (args.output or default_output(deck_path, system)).resolve()
    if out == deck_path:
        raise InputError(f"--output {out} would overwrite the deck; choose another file")
    check_output_dir(out)
    r = render(
        deck,
        args.system,
        deck_path,
        out,
        nodes=args.nodes,
        ranks_per_node=args.ranks_per_node,
        walltime=walltime,
        account=args.account,
        queue=args.queue,
        job_name=args.job_name,
        filesystems=args.filesystems,
        setup=args.setup,
        overrides=list(args.overrides),
        max_jobs=args.max_jobs,
        force=args.force,
    )
    warning = model_warning(deck, str(args.deck))
    unchanged = False
    if not args.dry_run and out.exists():
        unchanged = out.is_file() and _same_text(out, r.text)
        if not unchanged and not args.overwrite:
            raise OutputPathError(
                f"{out} exists and differs from this script; it is not replaced: remove it, "
                "choose another --output, or add --overwrite"
            )
    for w in r.warnings + ([warning] if warning else []):
        print(f"trivhmc jobscript: warning: {w}", file=sys.stderr)
    if args.dry_run:
        print(r.text, end="")
        return 0
    try:
        if not unchanged:
            out.write_text(r.text)
        out.chmod(0o755)
    except OSError as exc:
        if is_storage_error(exc):
            raise
        raise OutputPathError(f"cannot write {out}: {exc.strerror or exc}") from None
    lay = r.layout
    submit = {"pbs": "qsub", "slurm": "sbatch", "none": "bash"}[system.scheduler]
    print(
        f"{'unchanged' if unchanged else 'wrote'} {out}: {lay.nodes} node(s) x "
        f"{lay.ranks_per_node} ranks = {lay.total_ranks} ranks, process grid "
        f"{list(lay.grid)} x {deck.parallel.replicas} replica(s)"
    )
    print(f"submit with: {submit} {out}")
    return 0


def _same_text(path: Path, text: str) -> bool:
    """Whether ``path`` holds exactly ``text`` (as :meth:`Path.write_text` writes it)."""
    try:
        return path.read_bytes() == text.encode()
    except OSError:
        return False
