"""Measurements of a deck's ``measure:`` section, on the fly (from the run loop) or offline
(``trivhmc measure``) over a saved ensemble or a list of configuration files
(docs/measure.md).

Per configuration and chain the measurements give scalar columns (names as in records,
so ``trivhmc analyze`` reads the output and forms derived quantities from them):

* su3 ``flow``: ``t0``, ``w0`` (lattice units; NaN with a warning if ``t_max`` is too short),
  ``Q@t=T`` (clover charge at each charge time), and the histories ``t``, ``t2E``
  (``t^2 E_clover``), ``tdt2E`` (``t d/dt t^2 E``) under ``"flow"``;
* su3 ``wilson_loops``: ``W_R{R}_T{T}`` (kernels/static_loops.py);
* su3 ``polyakov``: ``polyakov_re``, ``polyakov_im``, ``polyakov_abs``;
* ``correlators``: the theory's correlators (phi4: ``two_point_{t}``).

Extension point: a theory adds its measurements with :func:`register`, e.g. the Schwinger
model's correlators: ``register("schwinger", fn)`` with ``fn(section, theory, field) ->
{name: (B,) or (B, n) tensor}`` (vectors become ``name_0 .. name_{n-1}``).

Output: JSON lines (one object per configuration: ``trajectory``, ``observables`` with a list
over chains, ``flow`` histories, ``lattice``): ``measurements.jsonl`` on the fly,
``measurements_offline.jsonl`` offline (also ``file`` and ``chain``; the output must not be
an input or anything but an earlier offline output, :func:`output_problem`); and groups in
each HDF5 ensemble file (datasets ``trajectory``, one per column, and ``flow_t``, ``t2E``,
``tdt2E``): ``measurements`` on the fly, one row appended per measured trajectory as it happens with
the two-phase commit of the ensemble (rows past the group's ``committed`` attribute are
written and fsynced, then the marker; a killed run keeps every committed row, a resume cuts
the rest and the rows after its checkpoint), and ``measurements_offline`` (replaced by each
offline measurement).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.deck import Deck, MeasureSection
from app.errors import InputError

MEASUREMENTS = "measurements.jsonl"
OFFLINE = "measurements_offline.jsonl"
HDF5_GROUP = "measurements"
OFFLINE_GROUP = "measurements_offline"
#: datasets of a measurement group that are not observable columns
_RESERVED = ("trajectory", "flow_t", "t2E", "tdt2E")

Measure = Callable[[MeasureSection, Any, torch.Tensor], dict[str, torch.Tensor]]
_REGISTRY: dict[str, list[Measure]] = {}


def register(theory_name: str, fn: Measure) -> None:
    """Add measurements for a theory (called once at import of the theory's module)."""
    _REGISTRY.setdefault(theory_name, []).append(fn)


# ------------------------------------------------------------------ built-in measurements
def _su3(cfg: MeasureSection, theory, u: torch.Tensor) -> dict[str, torch.Tensor]:
    from kernels.static_loops import wilson_loop_table
    from kernels.theories.su3 import polyakov_loop

    grid = theory.grid
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if cfg.polyakov:
            p = polyakov_loop(u, grid)
            out.update(polyakov_re=p.real, polyakov_im=p.imag, polyakov_abs=p.abs())
        if cfg.wilson_loops is not None:
            w = cfg.wilson_loops
            for (r, t), val in wilson_loop_table(u, grid, w.r_max, w.t_max).items():
                out[f"W_R{r}_T{t}"] = val
    return out


def _phi4(cfg: MeasureSection, theory, phi: torch.Tensor) -> dict[str, torch.Tensor]:
    if not cfg.correlators:
        return {}
    with torch.no_grad():
        return {"two_point": theory.two_point(phi)}


register("su3", _su3)
register("phi4", _phi4)


def _flow(cfg: MeasureSection, grid, u: torch.Tensor) -> tuple[dict[str, np.ndarray], dict]:
    """Scalars per chain and histories ``{"t", "t2E", "tdt2E"}`` of the Wilson flow."""
    from kernels.wilson_flow import wilson_flow

    f = cfg.flow
    res = wilson_flow(u, grid, f.t_max, f.eps, charge_times=tuple(f.charge_times))
    scalars: dict[str, np.ndarray] = {}
    b = u.shape[0]
    if f.scales:
        for name, fn in (("t0", res.t0), ("w0", res.w0)):
            try:
                scalars[name] = np.asarray(fn(), dtype=float)
            except ValueError as exc:
                warnings.warn(f"measure.flow: {name}: {exc}", stacklevel=2)
                scalars[name] = np.full(b, math.nan)
    for tq in f.charge_times:
        scalars[f"Q@t={tq:g}"] = np.asarray(res.q_at[float(tq)], dtype=float)
    hist = {}
    if f.history:
        hist = {"t": res.t.tolist(), "t2E": res.t2e.T.tolist(), "tdt2E": res.tdt2e.T.tolist()}
    return scalars, hist


class Measurer:
    """Applies a deck's measure section to a batch of configurations ``(B, ...)``."""

    def __init__(self, deck: Deck, theory) -> None:
        if deck.measure is None:
            raise InputError("the deck has no `measure:` section (docs/measure.md)")
        self.cfg = deck.measure
        self.theory = theory
        self.lattice = list(deck.lattice.shape)

    def measure(self, field: torch.Tensor) -> dict[str, Any]:
        """``{"observables": {name: [per chain]}, "flow": {...}}`` for the batch ``field``."""
        from app.records import flatten_observables
        from app.records import plain as _plain

        cols: dict[str, torch.Tensor] = {}
        for fn in _REGISTRY.get(self.theory.name, []):
            cols.update(fn(self.cfg, self.theory, field))
        obs = {k: _plain(v) for k, v in flatten_observables(cols).items()}
        out: dict[str, Any] = {"observables": obs}
        if self.cfg.flow is not None:
            scalars, hist = _flow(self.cfg, self.theory.grid, field)
            obs.update({k: [float(x) for x in v] for k, v in scalars.items()})
            if hist:
                out["flow"] = hist
        return out


def record_line(trajectory: int, merged: dict[str, Any], lattice: list[int], **extra) -> str:
    """One JSON line of ``measurements.jsonl`` (readable by ``trivhmc analyze``)."""
    rec = {"trajectory": trajectory, "thermalization": False, **extra, "lattice": lattice}
    rec.update(merged)
    return json.dumps(rec, allow_nan=True)


# ------------------------------------------------------------------ on the fly
class OnTheFly:
    """The run loop's measurements every ``measure.every`` production trajectories, appended
    to ``measurements.jsonl`` by world rank 0 (lines after the checkpoint are dropped on
    resume, as records are)."""

    def __init__(self, deck: Deck, theory, directory: Path, is_writer: bool, start: int):
        self.measurer = Measurer(deck, theory)
        self.every = deck.measure.every
        self.path = Path(directory) / MEASUREMENTS
        self.is_writer = is_writer
        self.start = start
        self.writers: list = []
        self.grid = None
        if is_writer and self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["trajectory"] < start:
                        keep.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
            from app.io.atomic import atomic_write_bytes

            atomic_write_bytes(self.path, "".join(f"{x}\n" for x in keep).encode())

    def due(self, thermalization: bool, production_index: int) -> bool:
        """True after a production trajectory whose index (from 0) is a multiple of ``every``."""
        return not thermalization and production_index % self.every == 0

    def measure(self, field: torch.Tensor) -> dict[str, Any]:
        """Measurements of the batch ``field`` (:meth:`Measurer.measure`, collective)."""
        return self.measurer.measure(field)

    def attach(self, writers: list, grid) -> None:
        """Also append every measurement to the ``measurements`` group of this replica's
        ensemble files (``writers``: ``(EnsembleWriter, local chain)``), cut back to the
        rows before ``start`` (resume). Collective over ``grid.cart``."""
        from app.io.collective import on_root

        self.writers, self.grid = list(writers), grid
        if self.writers:
            on_root(
                lambda: [truncate_group(w.path, self.start) for w, _ in self.writers],
                grid.cart,
                broadcast=False,
            )

    def record(
        self, trajectory: int, merged: dict[str, Any] | None, local: dict[str, Any] | None = None
    ) -> None:
        """Commit the row of ``trajectory`` to the attached ensemble files (``local``: this
        replica's :meth:`measure` result; collective over the replica when files are
        attached), then append the JSON line (the writer only; ``merged`` is the gathered
        result, None on the other ranks)."""
        if self.writers and local is not None:
            from app.io.collective import on_root

            on_root(
                lambda: [
                    append_group_rows(w.path, [(trajectory, local)], chain=b)
                    for w, b in self.writers
                ],
                self.grid.cart,
                broadcast=False,
            )
        if self.is_writer and merged is not None:
            with open(self.path, "a") as f:
                f.write(record_line(trajectory, merged, self.measurer.lattice) + "\n")


def open_on_the_fly(deck: Deck, theory, directory: Path, is_writer: bool, start: int):
    """An :class:`OnTheFly` if the deck measures during the run, else None."""
    if deck.measure is None or deck.measure.every == 0:
        return None
    return OnTheFly(deck, theory, directory, is_writer, start)


# ------------------------------------------------------------------ offline
def _sources(deck: Deck, files: list[str]) -> list[tuple[Path, str]]:
    """``(path, format)`` of what to measure: the given files, else the run's ensembles,
    else its ILDG/NERSC files."""
    from app.io.errors import ConfigFormatError
    from app.io.formats import detect_format

    if files:
        paths = [Path(f) for f in files]
    else:
        out = deck.output_dir
        paths = sorted(out.glob("ensemble_c*.h5"))
        if not paths:
            paths = sorted((out / "configs").glob("*.lime")) or sorted(
                (out / "configs").glob("*.nersc")
            )
        if not paths:
            raise InputError(
                f"no saved configurations in {out} (ensemble_c*.h5 or configs/); run the "
                "deck first with output.save_every > 0, or give configuration files"
            )
    result = []
    for p in paths:
        try:
            result.append((p, detect_format(p)))
        except (ConfigFormatError, OSError) as exc:
            raise InputError(f"cannot read {p}: {exc}") from None
    return result


_NUMBERED_NAME = re.compile(r"_(\d+)$")


def file_record_number(count: int, path: Path, position: int) -> int:
    """The 0-based record number of a configuration file, the ``trajectory`` of its row.

    One convention for every format: the row carries ``count - 1``, where ``count`` is the
    1-based trajectory count the file records (HDF5 ``config_trajectory``, the NERSC
    ``SEQUENCE_NUMBER``; trivhmc writes both as the count), exactly as the on-the-fly rows of
    that trajectory. ILDG has no trajectory field: a file named like trivhmc's own
    (``<name>_c<chain>_<count>.lime``) gives ``count - 1``; any other file without a count
    (or with ``count = 0``) gets its 0-based position among the files measured.
    """
    if count > 0:
        return count - 1
    m = _NUMBERED_NAME.search(path.stem)
    if m and int(m.group(1)) > 0:
        return int(m.group(1)) - 1
    return position


def _entries(sources: list[tuple[Path, str]]) -> list[tuple[Path, str, int, int]]:
    """``(path, format, index in file, trajectory)`` of every configuration to measure
    (``trajectory`` -1 for ILDG/NERSC: taken from the file when it is read)."""
    from app.io.errors import ConfigFormatError

    out = []
    for path, fmt in sources:
        try:
            if fmt == "hdf5":
                from app.io.hdf5 import read_metadata

                trajs = read_metadata(path)["config_trajectory"]
                out += [(path, fmt, i, int(t) - 1) for i, t in enumerate(trajs)]
            else:
                out.append((path, fmt, -1, -1))
        except (ConfigFormatError, OSError, KeyError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
    return out


def _read(path: Path, fmt: str, index: int) -> tuple[np.ndarray, int | None]:
    """The global field of one configuration and, for ILDG/NERSC, the 1-based trajectory
    count the file records (0: none)."""
    from app.io.errors import ConfigFormatError

    try:
        if fmt == "hdf5":
            from app.io.hdf5 import read_config

            return read_config(path, index), None
        from app.io.convert import read_any

        links, info = read_any(path)
        return links, int(info.get("trajectory", 0))
    except (ConfigFormatError, OSError, KeyError, IndexError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def measure_offline(deck: Deck, files: list[str], output: Path | None) -> tuple[Path, int]:
    """Measure every saved configuration; returns (JSON lines path, configurations).

    Collective over MPI.COMM_WORLD and distributed like the run: the world is split into
    ``parallel.replicas`` groups, each spreading one lattice over its ranks
    (``parallel.grid``); group ``r`` measures configurations ``r, r + R, r + 2R, ...`` and
    world rank 0 writes the results in file order. Every rank of a group reads the file and
    keeps its block. Unreadable files fail on every rank (all ranks list and check them
    first), and so does an output the command may not write (:func:`output_problem`, decided
    on world rank 0 before anything is measured)."""
    from mpi4py import MPI

    from app.io.collective import on_root
    from app.io.paths import OutputPathError
    from app.setup import build_grid, build_theory

    grid = build_grid(deck)
    theory = build_theory(deck, grid)
    measurer = Measurer(deck, theory)
    sources = _sources(deck, files)
    entries = _entries(sources)
    if output:
        out = Path(output)
    elif files:
        out = Path.cwd() / OFFLINE
    else:  # beside the run's own (on the fly) measurements.jsonl
        out = deck.output_dir / OFFLINE

    def check() -> None:
        problem = output_problem(out, [p for p, _ in sources])
        if problem is not None:
            raise OutputPathError(f"cannot write {out}: {problem}")

    on_root(check, MPI.COMM_WORLD, broadcast=False)
    mine: list[tuple[int, int, dict[str, Any]]] = []
    error = None
    try:
        _measure_share(grid, theory, measurer, entries, mine)
    except InputError as exc:  # a bad file seen by one replica group: fail on every rank
        error = str(exc)
    errors = [e for e in grid.comm.allgather(error) if e]
    if errors:
        raise InputError(errors[0])
    parts = grid.comm.gather(mine if grid.is_root else [], root=0)
    if grid.is_world_root:
        from app.io.atomic import atomic_write_bytes

        rows = sorted((r for part in parts for r in part), key=lambda r: r[0])
        lines = [
            record_line(
                t, m, measurer.lattice, file=str(entries[j][0]), chain=_chain(entries[j][0])
            )
            for j, t, m in rows
        ]
        atomic_write_bytes(out, "".join(f"{x}\n" for x in lines).encode())
        per_file: dict[Path, list[tuple[int, dict[str, Any]]]] = {}
        for j, t, m in rows:
            if entries[j][1] == "hdf5":
                per_file.setdefault(entries[j][0], []).append((t, m))
        for path, file_rows in per_file.items():
            write_hdf5_group(path, file_rows, group=OFFLINE_GROUP)
    grid.comm.Barrier()
    return out, len(entries)


def _chain(path: Path) -> int:
    """The chain of a configuration file, from its name (``ensemble_c<chain>.h5``,
    ``<name>_c<chain>_<count>.lime``; :func:`app.analysis.chain_of_file`); 0 for any other
    name."""
    from app.analysis import chain_of_file

    chain = chain_of_file(path)
    return 0 if chain is None else chain


def is_offline_output(path: Path) -> bool:
    """True for an empty file or one whose first line is a line of :func:`measure_offline`
    (a JSON object with ``trajectory``, ``observables`` and ``file``): an earlier output of
    ``trivhmc measure``, which it may replace. Records (``records.jsonl``), on-the-fly
    measurements (no ``file``), ensembles and configurations are not."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
            if not first.strip() and not fh.read(1):
                return True
    except OSError:
        return False
    try:
        rec = json.loads(first)
    except ValueError:  # not JSON, not UTF-8
        return False
    return isinstance(rec, dict) and {"trajectory", "observables", "file"} <= set(rec)


def output_problem(out: Path, inputs: list[Path]) -> str | None:
    """Why ``trivhmc measure`` may not write its JSON lines to ``out``, or None: its
    directory must exist and be writable (no directory is created), and an existing ``out``
    must be a regular file that is neither one of the ``inputs`` nor anything but an
    earlier output of the command (:func:`is_offline_output`): nothing else is overwritten."""
    import os

    from app.io.paths import output_dir_problem

    problem = output_dir_problem(out)
    if problem is not None:
        return problem
    if not os.path.lexists(out):
        return None
    for p in inputs:
        try:
            if os.path.samefile(out, p):
                return "it is one of the configuration files being measured; give another name"
        except OSError:
            continue
    if not out.is_file():
        return "it exists and is not a regular file; give a file name"
    if not is_offline_output(out):
        return (
            "it exists and is not an earlier output of trivhmc measure (its first line is not "
            "a measurement line with a `file` field), e.g. a run's records.jsonl or "
            "measurements.jsonl; give a new file name or move it away"
        )
    return None


def _measure_share(grid, theory, measurer, entries, mine) -> None:
    """Measure this replica group's share of ``entries`` into ``mine``."""
    from app.setup import local_block

    for j in range(grid.replica, len(entries), grid.replicas):
        path, fmt, index, traj = entries[j]
        full, file_traj = _read(path, fmt, index)
        field = local_block(full, theory, str(path))
        merged = measurer.measure(field.unsqueeze(0))
        if file_traj is not None:  # ILDG/NERSC: the count the file records
            traj = file_record_number(file_traj, Path(path), j)
        mine.append((j, traj, merged))


def _fsync(f) -> None:
    """``H5Fflush`` and fsync of the file's descriptor (sec2 driver)."""
    import os

    f.flush()
    fd = f.id.get_vfd_handle()
    if isinstance(fd, int):
        os.fsync(fd)


def _committed(g) -> int:
    """Committed rows of a measurement group (all rows if it has no marker)."""
    n = int(g["trajectory"].shape[0]) if "trajectory" in g else 0
    return min(int(g.attrs.get("committed", n)), n)


def _cut(g, n: int) -> None:
    """Cut every row-indexed dataset of a measurement group to ``n`` rows."""
    for name, ds in g.items():
        if name != "flow_t" and ds.shape[0] > n:
            ds.resize(n, axis=0)


def append_group_rows(
    path: Path, rows: list[tuple[int, dict[str, Any]]], chain: int = 0, group: str = HDF5_GROUP
) -> None:
    """Append ``rows`` (``(trajectory, {"observables": {name: [per chain]}, "flow": ...})``,
    column ``chain`` of each list) to ``group`` of an ensemble file, as one two-phase commit:
    a tail left by a crash is cut back to the group's ``committed`` attribute, the new rows are
    written and fsynced, then ``committed`` is raised and fsynced. Columns first seen now are
    NaN in earlier rows; columns missing from a row are NaN. The flow times of every row must
    agree with the group's ``flow_t``."""
    from app.io.hdf5 import open_ensemble

    with open_ensemble(path, "a") as f:
        g = f.require_group(group)
        if "trajectory" not in g:
            g.attrs["description"] = (
                "trivhmc measure (docs/measure.md); one row per measured configuration; only "
                "the first `committed` rows are valid"
            )
            g.attrs["committed"] = 0
            g.create_dataset("trajectory", (0,), np.int64, maxshape=(None,), chunks=(256,))
        n0 = _committed(g)
        _cut(g, n0)
        n1 = n0 + len(rows)
        g["trajectory"].resize(n1, axis=0)
        g["trajectory"][n0:n1] = [int(t) for t, _ in rows]
        names = {k for _, r in rows for k in r["observables"]}
        names |= {k for k in g if k not in _RESERVED}
        for name in sorted(names):
            if "/" in name or name in _RESERVED:
                raise ValueError(f"measurement column {name!r} cannot be an HDF5 dataset name")
            if name not in g:
                ds = g.create_dataset(
                    name, (n0,), float, maxshape=(None,), chunks=(256,), fillvalue=np.nan
                )
            ds = g[name]
            ds.resize(n1, axis=0)
            ds[n0:n1] = [_col(r["observables"].get(name), chain) for _, r in rows]
        flows = [r.get("flow") for _, r in rows]
        if any(flows) or "flow_t" in g:
            t = next((fl["t"] for fl in flows if fl), None)
            if "flow_t" not in g:
                m = len(t)
                g["flow_t"] = np.asarray(t, dtype=float)
                for key in ("t2E", "tdt2E"):
                    g.create_dataset(
                        key, (n0, m), float, maxshape=(None, m), chunks=(16, m), fillvalue=np.nan
                    )
            m = g["flow_t"].shape[0]
            for fl in flows:
                if fl and not np.array_equal(np.asarray(fl["t"], float), g["flow_t"][:]):
                    raise InputError(
                        f"{path}: group {group!r} holds flows at {m} times up to "
                        f"t = {g['flow_t'][-1]:g}; this measurement flows to a different set "
                        f"({len(fl['t'])} times up to {fl['t'][-1]:g}). Keep measure.flow as "
                        "it was for this run, or start a new output directory"
                    )
            for key in ("t2E", "tdt2E"):
                ds = g[key]
                ds.resize(n1, axis=0)
                ds[n0:n1] = np.array(
                    [fl[key][chain] if fl else np.full(m, np.nan) for fl in flows], dtype=float
                ).reshape(len(rows), m)
        _fsync(f)
        g.attrs["committed"] = n1
        _fsync(f)


def truncate_group(path: Path, start: int, group: str = HDF5_GROUP) -> None:
    """Drop the rows of ``group`` with trajectory ``>= start`` and any uncommitted tail
    (a resume from the checkpoint at ``start``): marker first, then the cut."""
    from app.io.hdf5 import open_ensemble

    with open_ensemble(path, "a") as f:
        if group not in f or "trajectory" not in f[group]:
            return
        g = f[group]
        n = _committed(g)
        keep = int(np.count_nonzero(g["trajectory"][:n] < start))
        if keep == n == g["trajectory"].shape[0]:
            return
        g.attrs["committed"] = keep
        _fsync(f)
        _cut(g, keep)
        _fsync(f)


def read_group(path: Path, group: str = HDF5_GROUP) -> dict[str, np.ndarray]:
    """The committed rows of a measurement group: ``{"trajectory", columns..., "flow_t",
    "t2E", "tdt2E"}`` (empty if the file has no such group)."""
    from app.io.hdf5 import open_ensemble

    with open_ensemble(path, "r") as f:
        if group not in f or "trajectory" not in f[group]:
            return {}
        g = f[group]
        n = _committed(g)
        return {k: (ds[:] if k == "flow_t" else ds[:n]) for k, ds in g.items()}


def write_hdf5_group(
    path: Path, rows: list[tuple[int, dict[str, Any]]], chain: int = 0, group: str = OFFLINE_GROUP
) -> None:
    """Replace ``group`` of an ensemble file with ``rows`` (the lists in each row hold every
    chain; column ``chain`` is this file's); the rows are committed at once."""
    from app.io.hdf5 import open_ensemble

    with open_ensemble(path, "a") as f:
        if group in f:
            del f[group]
    append_group_rows(path, rows, chain, group)


def _col(values: list[float] | None, chain: int) -> float:
    if not values or chain >= len(values) or values[chain] is None:
        return math.nan
    return float(values[chain])
