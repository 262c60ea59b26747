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
import math
from pathlib import Path
from typing import Any

import torch

from app.io.atomic import atomic_write_bytes
from kernels.samplers.protocol import Record
from parallel import ProcessGrid

RECORDS = "records.jsonl"


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

    def truncate(self, next_trajectory: int) -> None:
        """Drop records of trajectories >= ``next_trajectory`` (after a checkpoint)."""
        if not self.is_writer or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("trajectory", math.inf) < next_trajectory:
                keep.append(line)
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
