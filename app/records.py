"""``records.jsonl``: one JSON line per trajectory with per-chain lists, written by rank 0.

A line holds the trajectory number, the thermalization flag, the shared record core of the
sampler protocol (``dH``, ``accepted``, ``exp_minus_dH`` per chain; ``step_size``,
``n_steps``, ``n_force``, ``wall_time``, ``n_nonfinite``), the measured observables per chain
(vector observables flattened to ``name_0, name_1, ...``, complex ones to ``name_re,
name_im``), and, where a sampler or theory reports them, its per-chain ``extra`` columns and
per-term ``costs`` (``"<term>.<counter>"``, e.g. ``fermion.cg_iterations``) and its scalar
extras (flow Metropolis: ``ess``). Chains of all replica groups are concatenated in chain order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from app.errors import InputError
from app.io.atomic import atomic_write_bytes
from kernels.samplers.protocol import Record
from parallel import ProcessGrid

RECORDS = "records.jsonl"


class RecordsError(InputError):
    """``records.jsonl`` is damaged or does not cover the trajectories a resume needs."""


def read_prefix(path: Path, next_trajectory: int) -> tuple[list[str], str | None]:
    """The lines of trajectories ``0 .. next_trajectory - 1`` of a records file, and what is
    wrong with it (None if nothing).

    Lines of later trajectories (written after the checkpoint a run resumes from) are
    dropped, and so is a last line cut by a kill. Anything else is a problem: a damaged line
    before the last one, trajectories out of order or repeated, or records missing before
    ``next_trajectory`` (a deleted or replaced file: resuming would leave a gap).
    """
    lines = path.read_text().splitlines() if path.exists() else []
    keep: list[str] = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the line being written when the run was killed
            return keep, (
                f"{path} line {i + 1} is not valid JSON (a damaged file: only the last line "
                "may be cut, by a kill)"
            )
        traj = rec.get("trajectory") if isinstance(rec, dict) else None
        if not isinstance(traj, int) or isinstance(traj, bool):
            return keep, f'{path} line {i + 1} has no integer "trajectory"'
        if traj >= next_trajectory:
            continue
        if traj != len(keep):
            return keep, (
                f"{path} line {i + 1} holds trajectory {traj} where {len(keep)} was expected "
                "(records run 0, 1, 2, ... once each)"
            )
        keep.append(line)
    if len(keep) < next_trajectory:
        held = f"trajectories 0..{len(keep) - 1}" if keep else "no records"
        where = "" if path.exists() else " (the file is missing)"
        return keep, (
            f"{path} holds {held}{where}, but the checkpoint is at trajectory "
            f"{next_trajectory}: the records of trajectories {len(keep)}..{next_trajectory - 1} "
            "are missing"
        )
    return keep, None


def plain(x: torch.Tensor) -> Any:
    """A tensor as JSON-ready lists (complex as ``[re, im]`` pairs, bool kept)."""
    a = x.detach().cpu()
    if a.is_complex():
        a = torch.stack([a.real, a.imag], dim=-1)
    if a.dtype == torch.bool:
        return a.tolist()
    return a.double().tolist()


class Records:
    """``records.jsonl``: one line per trajectory with per-chain lists (rank 0 writes)."""

    def __init__(self, path: Path, grid: ProcessGrid) -> None:
        self.path = path
        self.grid = grid
        self.is_writer = grid.is_world_root

    def truncate(self, next_trajectory: int, keep: list[str] | None = None) -> None:
        """Drop records of trajectories >= ``next_trajectory`` (after a checkpoint); a file
        that does not hold exactly ``0 .. next_trajectory - 1`` raises :class:`RecordsError`
        (checked on every rank before, by app/run_directory.py). ``keep``: the lines
        :func:`read_prefix` gave for this file and ``next_trajectory`` without a problem (what
        :func:`app.run_directory.check_run_directory` returns on world rank 0), so that the
        file is not read again; None: read it here."""
        if not self.is_writer or not self.path.exists():
            return
        if keep is None:
            keep, problem = read_prefix(self.path, next_trajectory)
            if problem is not None:
                raise RecordsError(problem)
        atomic_write_bytes(self.path, ("\n".join(keep) + "\n" if keep else "").encode())

    def gather(self, per_chain: dict[str, Any]) -> dict[str, Any] | None:
        """Concatenate per-chain lists of every replica (in chain order) on world rank 0."""
        g = self.grid
        parts = g.comm.gather(per_chain if g.is_root else None, root=0)
        if not self.is_writer:
            return None
        roots = [parts[r * g.ranks_per_replica] for r in range(g.replicas)]

        def merge(values: list[Any]) -> Any:
            if isinstance(values[0], dict):
                return {k: merge([v[k] for v in values]) for k in values[0]}
            return [x for v in values for x in v]

        return merge(roots)

    def append(self, record: dict[str, Any]) -> None:
        """Append one line to ``records.jsonl`` (world rank 0 only)."""
        if self.is_writer:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def flatten_observables(obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalar columns per chain: vector observables ``name`` become ``name_0, name_1, ...``;
    complex ones ``name_re, name_im``."""
    out = {}
    for name, v in obs.items():
        v = v.detach()
        if v.is_complex():
            parts = {f"{name}_re": v.real, f"{name}_im": v.imag}
        else:
            parts = {name: v}
        for key, val in parts.items():
            if val.ndim == 1:
                out[key] = val
            else:
                flat = val.reshape(val.shape[0], -1)
                for i in range(flat.shape[1]):
                    out[f"{key}_{i}"] = flat[:, i]
    return out


def per_chain_columns(rec: Record) -> dict[str, Any]:
    """The per-chain part of a trajectory's line (before observables are added)."""
    out: dict[str, Any] = {
        "dH": plain(rec.dH),
        "accepted": plain(rec.accepted),
        "exp_minus_dH": plain(rec.exp_minus_dH),
    }
    if rec.log_jacobian is not None:
        out["log_jacobian"] = plain(rec.log_jacobian)
    for group in (rec.extra, rec.costs):
        for key, value in group.items():
            if isinstance(value, torch.Tensor) and value.ndim == 1:
                out[key] = plain(value)
    return out


def scalar_columns(rec: Record) -> dict[str, Any]:
    """The scalar part of a trajectory's line."""
    out: dict[str, Any] = {
        "step_size": rec.step_size,
        "n_steps": rec.n_steps,
        "n_force": rec.n_force,
        "wall_time": rec.wall_time,
        "n_nonfinite": rec.n_nonfinite,
    }
    for group in (rec.extra, rec.costs):
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                if value.ndim == 0:
                    out[key] = value.item()
            else:
                out[key] = value
    if rec.reversibility_field_error is not None:
        out["reversibility_field_error"] = plain(rec.reversibility_field_error)
        out["reversibility_dH_error"] = plain(rec.reversibility_dH_error)
    return out
