"""What a run directory may hold when ``trivhmc run`` starts in it, checked before any file
is cut or written.

A run starts from the newest verified checkpoint at trajectory ``N`` (``N = 0``: checkpoint 0,
written before the first trajectory) or, without a checkpoint, fresh. A resume cuts
``records.jsonl``, ``run.log``, the measurement files and the HDF5 ensembles back to ``N`` and
regenerates what came after (bitwise identical); that is only safe when they hold everything
before ``N``. A fresh start writes them from trajectory 0 and would overwrite an earlier run's.
Decided on world rank 0 (the run directory is on a file system every rank sees), raised on
every rank as one :class:`RunDirectoryError` (exit status 2) listing every problem:

* **fresh start:** refused when ``records.jsonl`` holds a line, an ``ensemble_c*.h5`` holds a
  committed configuration or observable row (or is not a readable ensemble), or ``configs/``
  holds a configuration file of this run's name. Since every run writes checkpoint 0 first,
  this only meets a directory of another run, or one whose checkpoints were removed.
* **resume from N:** ``records.jsonl`` must hold trajectories ``0 .. N-1`` (each once, in
  order; a damaged line other than the last, which a kill may cut, is refused); every chain's
  ``ensemble_c<c>.h5`` (output format ``hdf5``) must exist (``N > 0``), open, belong to this
  run (theory, lattice, couplings, seed), its last committed configuration must match its
  checksum, and it must have been synchronised at a checkpoint ``>= N`` (its RNG counter
  ``next_trajectory``; files without it: its observable rows must reach the last measured
  trajectory before ``N``). An ensemble older than the checkpoint (e.g. restored from a
  backup) would leave a gap in the ensemble, so it is refused, never continued.

Configuration files (``configs/``) are not required on resume: they may have been moved to
archive storage while the run goes on; files after ``N`` are rewritten with the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import InputError
from app.records import RECORDS, read_prefix

ENSEMBLE_GLOB = "ensemble_c*.h5"


class RunDirectoryError(InputError):
    """The run directory holds files that the run would overwrite, or that do not cover the
    trajectories before the checkpoint it resumes from."""


def check_run_directory(
    deck, grid, out: Path, chains_total: int, start: int | None
) -> list[str] | None:
    """Refuse (collectively, :class:`RunDirectoryError`) to start in ``out`` when its files
    disagree with the start: ``start`` is the checkpoint's trajectory, None for a fresh run.

    Returns, on world rank 0 of a resume, the lines of ``records.jsonl`` before ``start``
    (:func:`app.records.read_prefix`, read here once), for :meth:`app.records.Records.truncate`
    to keep without reading the file again; None on the other ranks and for a fresh run."""
    problems = kept = None
    if grid.is_world_root:
        if start is None:
            problems = _fresh_problems(deck, out)
        else:
            problems, kept = _resume_problems(deck, out, chains_total, start)
    problems = grid.comm.bcast(problems, root=0)
    if not problems:
        return kept
    if start is None:
        head = (
            f"refusing to start a new run in {out}: it holds the output of an earlier run and "
            "no usable checkpoint to resume it from"
        )
        tail = "Move those files away or choose another output.directory."
    else:
        head = f"refusing to resume {out} from its checkpoint at trajectory {start}"
        tail = (
            "Nothing was changed. Restore the files that cover the trajectories before the "
            "checkpoint, or start a new run in another output.directory."
        )
    raise RunDirectoryError(head + ":\n  " + "\n  ".join(problems) + "\n" + tail)


def _fresh_problems(deck, out: Path) -> list[str]:
    problems = []
    records = out / RECORDS
    if records.exists() and records.stat().st_size > 0:
        problems.append(f"{records} holds records")
    for path in sorted(out.glob(ENSEMBLE_GLOB)):
        held = _ensemble_content(path)
        if held:
            problems.append(f"{path} {held}")
    name = deck.output_dir.name
    files = sorted(
        p for suffix in ("lime", "nersc") for p in (out / "configs").glob(f"{name}_c*.{suffix}")
    )
    if files:
        problems.append(
            f"{out / 'configs'} holds {len(files)} configuration file(s) of this run's name "
            f"(e.g. {files[0].name})"
        )
    return problems


def _ensemble_content(path: Path) -> str | None:
    """What an existing ensemble holds that a fresh run would overwrite (None: nothing)."""
    from app.io.errors import ConfigFormatError
    from app.io.hdf5 import committed_counts, open_ensemble

    try:
        with open_ensemble(path, "r") as f:
            n_cfg, n_obs = committed_counts(f)
    except (ConfigFormatError, OSError) as exc:
        return f"is not a readable ensemble ({exc})"
    if n_cfg or n_obs:
        return f"holds {n_cfg} configuration(s) and {n_obs} observable row(s)"
    return None


def _resume_problems(deck, out: Path, chains_total: int, start: int) -> tuple[list[str], list[str]]:
    """Every problem of a resume from ``start``, and the records lines before it."""
    problems = []
    kept, records_problem = read_prefix(out / RECORDS, start)
    if records_problem is not None:
        problems.append(records_problem)
    if "hdf5" in deck.output.formats:
        for chain in range(chains_total):
            problems += _ensemble_problems(deck, out / f"ensemble_c{chain}.h5", start)
    return problems, kept


def _ensemble_problems(deck, path: Path, start: int) -> list[str]:
    from app.io.errors import ConfigFormatError
    from app.io.hdf5 import (
        committed_counts,
        compatibility_problems,
        config_checksum_status,
        open_ensemble,
    )

    if not path.exists():
        if start == 0:
            return []  # nothing before the checkpoint: recreated
        return [
            f"{path} is missing: it should hold the chain's trajectories before {start} "
            "(resuming would start the ensemble in the middle of the run)"
        ]
    params = deck.theory.model_dump(mode="json", by_alias=True, exclude={"name"})
    try:
        with open_ensemble(path, "r") as f:
            diffs = compatibility_problems(
                f, deck.theory.name, deck.lattice.shape, params, deck.run.seed
            )
            if diffs:
                return [f"{path} belongs to another run: " + "; ".join(diffs)]
            n_cfg, n_obs = committed_counts(f)
            problems = _coverage_problems(deck, f, n_obs, start)
            if n_cfg and "configs" in f and "config_checksum" in f:
                status = config_checksum_status(f, n_cfg - 1, f["configs"][n_cfg - 1])
                if status["status"] == "mismatch":
                    problems.append(
                        f"{path}: its last committed configuration ({n_cfg - 1}) does not "
                        "match its SciDAC checksum (a damaged file)"
                    )
            return problems
    except (ConfigFormatError, OSError, KeyError) as exc:
        return [f"{path} cannot be continued: {exc}"]


def _coverage_problems(deck, f: Any, n_obs: int, start: int) -> list[str]:
    """An ensemble older than the checkpoint at ``start`` (one line), or []."""
    synced = f["rng"].attrs.get("next_trajectory") if "rng" in f else None
    if synced is not None:
        if int(synced) < start:
            return [
                f"{f.filename} is older than the checkpoint: it was last synchronised at "
                f"trajectory {int(synced)}, the checkpoint is at {start}, so trajectories "
                f"{int(synced)}..{start - 1} would be missing from it"
            ]
        return []
    last = _last_measured_before(deck, start)
    if last is None:
        return []
    have = int(f["observables"]["trajectory"][n_obs - 1]) if n_obs else None
    if have is None or have < last:
        return [
            f"{f.filename} is older than the checkpoint: its last observable row is "
            f"{'none' if have is None else f'trajectory {have}'}, the run measured up to "
            f"trajectory {last} before the checkpoint at {start}"
        ]
    return []


def _last_measured_before(deck, start: int) -> int | None:
    """The last trajectory before ``start`` whose observables go to the ensembles."""
    therm, every = deck.run.thermalization, deck.run.measure_every
    if start <= therm:
        return None
    return therm + ((start - 1 - therm) // every) * every
