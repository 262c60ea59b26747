"""``run.log``: one human-readable line per trajectory beside ``records.jsonl``, and the
end-of-run summary (docs/run-output.md).

Like openQCD's log, the file is for reading with ``less``/``tail -f``/``grep``; the records
are the machine-readable source. Trajectories are numbered by their 1-based count ``n``
(``n = records' 0-based "trajectory" + 1``, thermalization included), which is also the
number in configuration file names. A line::

    traj      12 therm  acc 1/1  dH +1.234e-02  exp(-dH) 0.9877  eps 0.1000 x 10  0.012 s
        plaquette 0.63750           (one line in the file)

``therm`` marks thermalization, ``prod`` production. With several chains ``acc`` counts the
accepted chains, ``dH`` is the chain mean followed by the largest ``|dH|``, observables are
chain means. On resume, lines after the checkpoint are dropped and regenerated, as records
are (rank 0 writes).

The summary counts acceptance over the whole ensemble (every production record in
``records.jsonl``, earlier invocations included) and over this invocation, each labelled;
thermalization is reported separately and never mixed into the production acceptance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_LOG = "run.log"
#: observables shown in a log line (those a theory has), chain means
LOG_OBSERVABLES = ("plaquette", "action", "Q_int", "Q", "M", "polyakov_abs")


def _number(line: str) -> int | None:
    """The 1-based trajectory number of a log line (None for a comment or a cut line)."""
    parts = line.split()
    if len(parts) >= 2 and parts[0] == "traj" and parts[1].isdigit():
        return int(parts[1])
    return None


class RunLog:
    """Writer of ``run.log``, called by the run loop (rank 0 writes, others do nothing).

    ``start`` is the 0-based trajectory the run resumes at: later lines are dropped.
    """

    def __init__(self, directory: Path, is_writer: bool, start: int) -> None:
        self.path = Path(directory) / RUN_LOG
        self.is_writer = is_writer
        if not is_writer:
            return
        keep: list[str] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                n = _number(line)
                if (n is not None and n <= start) or line.startswith("#"):
                    keep.append(line)
        header = "# n = trajectory count (1-based); acc = accepted chains; dH chain mean [max |dH|]"
        if not keep:
            keep = [header]
        text = "".join(f"{ln}\n" for ln in keep)
        from app.io.atomic import atomic_write_bytes

        atomic_write_bytes(self.path, text.encode())

    def trajectory(self, record: dict[str, Any] | None) -> None:
        """Append the line of one merged record (as written to ``records.jsonl``)."""
        if not self.is_writer or record is None:
            return
        with open(self.path, "a") as f:
            f.write(format_line(record) + "\n")


def format_line(rec: dict[str, Any]) -> str:
    """The ``run.log`` line of one merged record."""
    n = int(rec["trajectory"]) + 1
    phase = "therm" if rec.get("thermalization") else "prod "
    acc = [bool(a) for a in rec.get("accepted", [])]
    dh = [float(x) for x in rec.get("dH", [])]
    emd = [float(x) for x in rec.get("exp_minus_dH", [])]
    parts = [f"traj {n:7d} {phase}", f"acc {sum(acc)}/{len(acc)}"]
    if dh:
        mean = sum(dh) / len(dh)
        text = f"dH {mean:+.3e}"
        if len(dh) > 1:
            text += f" [{max(abs(x) for x in dh):.2e}]"
        parts.append(text)
    if emd:
        parts.append(f"exp(-dH) {sum(emd) / len(emd):.4f}")
    if rec.get("n_steps"):
        parts.append(f"eps {float(rec['step_size']):.4f} x {int(rec['n_steps'])}")
    if rec.get("wall_time") is not None:
        parts.append(f"{float(rec['wall_time']):.3f} s")
    if rec.get("n_nonfinite"):
        parts.append(f"nonfinite {rec['n_nonfinite']}")
    obs = rec.get("observables") or {}
    for name in LOG_OBSERVABLES:
        vals = obs.get(name)
        if vals:
            parts.append(f"{name} {sum(map(float, vals)) / len(vals):.6g}")
    return "  ".join(parts)


@dataclass
class Acceptance:
    """Accepted and proposed chain updates of a range of trajectories."""

    accepted: float = 0.0
    total: int = 0

    def add(self, acc: list[Any]) -> None:
        """Count one trajectory's per-chain decisions."""
        self.accepted += sum(float(a) for a in acc)
        self.total += len(acc)

    def text(self) -> str:
        """``rate (accepted/proposed)``."""
        if not self.total:
            return "none"
        return f"{self.accepted / self.total:.3f} ({int(self.accepted)}/{self.total})"


@dataclass
class Summary:
    """Acceptance counts of a run directory, split as the end-of-run line reports them."""

    production: Acceptance
    thermalization: Acceptance
    this_production: Acceptance
    this_thermalization: Acceptance

    def text(self) -> str:
        """``acceptance: ensemble 0.871 (871/1000), this invocation 0.866 (433/500);
        thermalization 0.62 (31/50)`` (chain-trajectories)."""
        out = f"acceptance: ensemble {self.production.text()}"
        out += f", this invocation {self.this_production.text()}"
        if self.thermalization.total:
            out += f"; thermalization {self.thermalization.text()}"
            if 0 < self.this_thermalization.total < self.thermalization.total:
                out += f" (this invocation {self.this_thermalization.text()})"
        return out


def summarize(records: Path, start: int) -> Summary:
    """Acceptance of every record in ``records`` and of those from trajectory ``start`` on
    (this invocation); the last record of each trajectory counts (as in analyze)."""
    by_traj: dict[int, dict[str, Any]] = {}
    if records.exists():
        for line in records.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("trajectory"), int):
                by_traj[rec["trajectory"]] = rec
    s = Summary(Acceptance(), Acceptance(), Acceptance(), Acceptance())
    for t, rec in by_traj.items():
        acc = rec.get("accepted") or []
        if not isinstance(acc, list) or any(isinstance(a, float) and math.isnan(a) for a in acc):
            continue
        therm = bool(rec.get("thermalization"))
        (s.thermalization if therm else s.production).add(acc)
        if t >= start:
            (s.this_thermalization if therm else s.this_production).add(acc)
    return s
