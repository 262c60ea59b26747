"""How far a run has got: ``<output.directory>/progress.json`` and ``trivhmc run --status``.

Contract between the run loop and the job scripts (docs/jobscripts.md):

* The run (world rank 0) replaces ``progress.json`` atomically after every verified
  checkpoint (app/run.py, or :func:`write_progress`) with
  ``{"trajectory": N, "total": M, "finished": N >= M}``, where ``N`` is the number of
  trajectories (thermalization included) that the newest complete checkpoint covers, i.e.
  the trajectory a resumed run starts with.
* ``trivhmc run --status deck.yaml [--set ...]`` (:func:`status`) compares that number with
  the deck's ``run.thermalization + run.trajectories``, prints one JSON line
  ``{"done": N, "total": M, "complete": bool, "directory": "..."}`` and exits with
  :data:`STATUS_COMPLETE` (0) when the run is finished, :data:`STATUS_INCOMPLETE` (3) when
  more trajectories are needed, 2 for a bad deck or an unreadable progress file.

The total always comes from the deck, so raising ``run.trajectories`` in a finished run's
deck makes it incomplete again and a resubmitted job extends the ensemble.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import InputError
from .io.atomic import atomic_write_bytes

PROGRESS_FILE = "progress.json"
STATUS_COMPLETE = 0
STATUS_INCOMPLETE = 3


def write_progress(directory: str | Path, trajectory: int, total: int) -> Path:
    """Atomically write ``progress.json`` (temp file, fsync, rename, fsync directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "trajectory": int(trajectory),
        "total": int(total),
        "finished": int(trajectory) >= int(total),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = directory / PROGRESS_FILE
    atomic_write_bytes(path, (json.dumps(payload) + "\n").encode())
    return path


def read_progress(directory: str | Path) -> dict[str, Any] | None:
    """The content of ``progress.json``, or None when the run has not started."""
    path = Path(directory) / PROGRESS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        int(data["trajectory"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unreadable progress file {path}: {exc}") from None
    return data


def status(deck_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[int, dict]:
    """``(exit_code, report)`` for ``trivhmc run --status``."""
    from .deck import load_deck

    deck = load_deck(deck_path, overrides)
    out = deck.output_dir
    prog = read_progress(out)
    done = 0 if prog is None else int(prog["trajectory"])
    total = deck.run.total_trajectories
    report = {"done": done, "total": total, "complete": done >= total, "directory": str(out)}
    return (STATUS_COMPLETE if done >= total else STATUS_INCOMPLETE), report
