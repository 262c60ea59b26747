"""Checkpoints: the complete state of a run, written atomically and verified by read-back.

A checkpoint is one HDF5 file ``checkpoints/ckpt_<trajectory>.h5`` (readable with plain h5py):

* dataset ``fields``: the global chain variable of every chain (the field ``U`` for HMC and
  flow Metropolis, ``V`` with ``U = F(V)`` for trivialized HMC), shape
  ``(chains, *global field shape)``
  (chains = replicas x batch, in global chain order ``replica * batch + b``), lattice axes in
  the global order of docs/conventions.md;
* attributes: ``format = "trivhmc-checkpoint"``, ``version``, ``trajectory`` (number of
  trajectories completed; the next one to run), ``fields_sha256`` (of the C-order bytes),
  and JSON strings ``physics`` (theory, couplings, lattice), ``run`` (seed, chains, sampler,
  flow model reference) and ``sampler_state`` (tuned step size, tuner state).

The RNG needs no state beyond the seed: draws are keyed by (seed, purpose, trajectory, site,
chain). A checkpoint is written to a temporary name, fsynced, re-read and compared (sha256)
before it is renamed into place; then ``checkpoints/LATEST`` is replaced atomically. Restoring
reads each rank's own block (hyperslab), so a run may resume on another process grid.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from app.errors import InputError, StorageError, is_storage_error
from app.io.atomic import atomic_path, atomic_write_bytes, remove_stale_temporaries
from parallel import ProcessGrid, gather_to_root

FORMAT = "trivhmc-checkpoint"
VERSION = 1
KEEP = 2


class CheckpointError(InputError):
    """A checkpoint is missing, damaged or does not match the run."""


@dataclass
class Checkpoint:
    """A checkpoint: the next trajectory, the run's physics and settings, the sampler state."""

    trajectory: int
    physics: dict[str, Any]
    run: dict[str, Any]
    sampler_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def gather_chains(local: torch.Tensor, grid: ProcessGrid, first: int) -> np.ndarray | None:
    """All chains' global fields on world rank 0 (``None`` elsewhere), ``(R*B, *global)``."""
    dom = gather_to_root(local, grid, first)
    mine = dom.detach().cpu().numpy() if dom is not None else None
    parts = grid.comm.gather(mine if grid.is_root else None, root=0)
    if not grid.is_world_root:
        return None
    # replica r's domain root has world rank r * ranks_per_replica
    blocks = [parts[r * grid.ranks_per_replica] for r in range(grid.replicas)]
    return np.concatenate(blocks, axis=0)


def write_checkpoint(
    directory: str | os.PathLike,
    ckpt: Checkpoint,
    fields_local: torch.Tensor,
    grid: ProcessGrid,
    first: int,
) -> Path:
    """Write, verify and publish a checkpoint; keep the newest ``KEEP``. Collective."""
    directory = Path(directory)
    full = gather_chains(fields_local, grid, first)
    path = directory / f"ckpt_{ckpt.trajectory:08d}.h5"
    err = None
    if grid.is_world_root:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            digest = _sha256(full)
            with atomic_path(path) as tmp:
                with h5py.File(tmp, "w") as f:
                    f.attrs["format"] = FORMAT
                    f.attrs["version"] = VERSION
                    f.attrs["trajectory"] = ckpt.trajectory
                    f.attrs["physics"] = json.dumps(ckpt.physics, sort_keys=True)
                    f.attrs["run"] = json.dumps(ckpt.run, sort_keys=True)
                    f.attrs["sampler_state"] = json.dumps(ckpt.sampler_state, sort_keys=True)
                    f.attrs["fields_sha256"] = digest
                    f.create_dataset("fields", data=full)
                with h5py.File(tmp, "r") as f:  # read-back verification before publishing
                    if _sha256(f["fields"][...]) != digest:
                        raise OSError(f"checkpoint {path} failed read-back verification")
            atomic_write_bytes(directory / "LATEST", (path.name + "\n").encode())
            for old in sorted(directory.glob("ckpt_*.h5"))[:-KEEP]:
                old.unlink()
            remove_stale_temporaries(path)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            err = (f"{type(exc).__name__}: {exc}", is_storage_error(exc))
    err = grid.comm.bcast(err, root=0)
    if err is not None:
        message = (
            f"checkpoint at trajectory {ckpt.trajectory} not written ({err[0]}); "
            f"the previous checkpoint is intact"
        )
        # a full disk or quota is a storage error (exit 8) on every rank
        raise StorageError(message) if err[1] else OSError(message)
    return path


def _verify(path: Path) -> Checkpoint:
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a trivhmc checkpoint")
        if _sha256(f["fields"][...]) != f.attrs["fields_sha256"]:
            raise CheckpointError(f"{path}: field data does not match its sha256")
        return Checkpoint(
            trajectory=int(f.attrs["trajectory"]),
            physics=json.loads(f.attrs["physics"]),
            run=json.loads(f.attrs["run"]),
            sampler_state=json.loads(f.attrs["sampler_state"]),
            path=path,
        )


def find_latest(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest complete, verified checkpoint in ``directory`` (``None`` if there is none).

    ``LATEST`` is tried first; if it is missing or its file is damaged, older checkpoints are
    tried newest first (a warning names the damaged one).
    """
    import warnings

    directory = Path(directory)
    candidates = sorted(directory.glob("ckpt_*.h5"), reverse=True)
    latest = directory / "LATEST"
    if latest.exists():
        name = latest.read_text().strip()
        candidates = [directory / name] + [c for c in candidates if c.name != name]
    for cand in candidates:
        if not cand.exists():
            continue
        try:
            return _verify(cand)
        except (OSError, KeyError, CheckpointError, ValueError) as exc:
            warnings.warn(f"skipping damaged checkpoint {cand}: {exc}", stacklevel=2)
    return None


def read_local_fields(
    ckpt: Checkpoint, grid: ProcessGrid, first: int, batch: int, device: torch.device
) -> torch.Tensor:
    """This rank's block of its replica's chains from the checkpoint (hyperslab read)."""
    lo = grid.replica * batch
    with h5py.File(ckpt.path, "r") as f:
        ds = f["fields"]
        if ds.shape[0] != grid.replicas * batch:
            raise CheckpointError(
                f"checkpoint {ckpt.path} holds {ds.shape[0]} chains but this run has "
                f"{grid.replicas} replicas x {batch} chains = {grid.replicas * batch}"
            )
        index = (slice(lo, lo + batch),) + (slice(None),) * (first - 1) + grid.local_slices()
        block = ds[index]
    return torch.from_numpy(np.ascontiguousarray(block)).to(device)


def compare_physics(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Differences between the physics of a checkpoint and of the deck (empty if equal)."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, deck has {b!r}")
    return diffs
