"""The run loop behind ``trivhmc run deck.yaml``: generate an ensemble, resumable at any time.

Trajectories are numbered ``0 .. thermalization + trajectories - 1``; the number keys every
random draw (momenta, accept/reject), so a run resumed from a checkpoint, on any number of
ranks, repeats exactly what the uninterrupted run would have done.

Run directory (docs/run-output.md)::

    records.jsonl              one JSON object per trajectory (all chains), appended by rank 0
    ensemble_c<chain>.h5       HDF5 ensemble of each chain (configs + observables), if "hdf5"
    run.log                    one human-readable line per trajectory (app/runlog.py)
    configs/<name>_c<chain>_<n>.lime|.nersc   SU(3) files, if "ildg" / "nersc"; n = the
                               1-based trajectory count (records' "trajectory" + 1)
    checkpoints/ckpt_<traj>.h5, checkpoints/LATEST
    progress.json              {"trajectory", "total", "finished"} (for chained jobs)

Order of writes at a checkpoint: configurations and ensemble files first, then the
checkpoint (verified), then ``progress.json``. A kill at any moment leaves the previous
checkpoint and everything it points to intact; on resume, records and ensemble rows after the
checkpoint are dropped and regenerated (bitwise identical). A fresh run writes checkpoint 0
(the start field) before its first trajectory, so a run killed at any point resumes. Before
anything is cut or written, app/run_directory.py checks that the directory's files agree with
the start (no earlier run overwritten, no gap left in records or ensembles).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mpi4py import MPI

from app.checkpoint import (
    Checkpoint,
    CheckpointError,
    compare_physics,
    find_latest,
    read_local_fields,
    write_checkpoint,
)
from app.deck import Deck
from app.errors import (
    InputError,
    StorageError,
    TrivhmcError,
    storage_error_from,
)
from app.io.collective import on_root
from app.measure import open_on_the_fly
from app.progress import write_progress
from app.records import (
    RECORDS,
    Records,
    flatten_observables,
    per_chain_columns,
    plain,
    scalar_columns,
)
from app.run_directory import check_run_directory
from app.runlog import RunLog
from app.setup import build_grid, build_sampler, build_theory, initial_field
from app.writers import Writers, open_ensembles, save_configs
from kernels.samplers.protocol import Record, Sampler
from kernels.theory import Theory
from parallel import ProcessGrid, gpu_aware, set_gpu_aware
from parallel.rng import SiteRNG

__all__ = ["RECORDS", "RunResult", "physics_of", "run"]


@dataclass
class RunResult:
    """Where a run stands after :func:`run` returns."""

    trajectory: int
    total: int
    finished: bool
    acceptance: float
    directory: Path
    #: first trajectory of this invocation (for the summary)
    start: int = 0
    #: the signal (SIGTERM) that stopped the run after a checkpoint, None otherwise
    signal: int | None = None


def physics_of(deck: Deck) -> dict[str, Any]:
    """The deck's physics (theory, couplings, lattice) as plain JSON values."""
    return json.loads(json.dumps(deck.physics(), sort_keys=True))


@dataclass
class _Context:
    """What every stage of the loop shares."""

    deck: Deck
    grid: ProcessGrid
    theory: Theory
    sampler: Sampler
    chains: int
    offset: int
    out: Path
    physics: dict[str, Any]
    run_info: dict[str, Any]


def _prepare(deck: Deck) -> tuple[_Context, SiteRNG]:
    if deck.parallel.gpu_aware_mpi is not None:
        set_gpu_aware(deck.parallel.gpu_aware_mpi)
    else:
        gpu_aware()  # reads $TRIVHMC_GPU_AWARE_MPI now: a bad value fails before any output
    grid = build_grid(deck)
    theory = build_theory(deck, grid)
    rng = SiteRNG(deck.run.seed)
    chains = deck.run.chains
    out = deck.output_dir
    on_root(lambda: _make_directories(out, deck), grid.comm)  # an error on every rank
    sampler, flow_ref = build_sampler(deck, theory, rng)
    run_info = {
        "seed": deck.run.seed,
        "chains_total": grid.replicas * chains,
        "sampler": deck.sampler.name,
        "flow": flow_ref,
    }
    ctx = _Context(
        deck, grid, theory, sampler, chains, grid.replica * chains, out, physics_of(deck), run_info
    )
    return ctx, rng


def _make_directories(out: Path, deck: Deck) -> None:
    """``checkpoints/`` and, for SU(3) configuration files, ``configs/``."""
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if {"ildg", "nersc"} & set(deck.output.formats):
            (out / "configs").mkdir(exist_ok=True)
    except OSError as exc:
        storage = storage_error_from(exc, f"cannot create the run directories in {out}")
        if storage is not None:  # the same StorageError on every rank (on_root): exit 8
            raise storage from None
        if isinstance(exc, StorageError):  # carries its own message already
            raise
        raise InputError(
            f"cannot create the run directories in {out}: {exc.strerror or exc} ({exc.filename})"
        ) from None


def _refuse_changed_physics(ctx: _Context, ckpt: Checkpoint) -> None:
    deck = ctx.deck
    diffs = compare_physics(ckpt.physics, ctx.physics)
    if ckpt.run.get("seed") != deck.run.seed:
        diffs.append(f"seed: checkpoint has {ckpt.run.get('seed')}, deck has {deck.run.seed}")
    if ckpt.run.get("sampler") != deck.sampler.name:
        diffs.append(
            f"sampler: checkpoint has {ckpt.run.get('sampler')!r}, deck has {deck.sampler.name!r}"
        )
    if ckpt.run.get("flow", {}).get("hash") != ctx.run_info["flow"].get("hash"):
        diffs.append("flow model: the checkpoint was made with another flow model")
    if diffs:
        raise CheckpointError(
            f"refusing to resume {ctx.out} from {ckpt.path.name}: the deck changed the "
            "physics of the run:\n  " + "\n  ".join(diffs) + "\nUse a new output.directory "
            "for a new run."
        )


def _start_state(ctx: _Context, rng: SiteRNG) -> tuple[torch.Tensor, int, Checkpoint | None]:
    """The chain variable and the next trajectory: from the latest checkpoint, or a start."""
    grid, theory = ctx.grid, ctx.theory
    ckpt = find_latest(ctx.out / "checkpoints") if grid.is_world_root else None
    ckpt = grid.comm.bcast(ckpt, root=0)
    if ckpt is not None:
        _refuse_changed_physics(ctx, ckpt)
        # checkpoints hold the chain variable (V for trivialized HMC), not U = F(V)
        state = read_local_fields(ckpt, grid, theory.first, ctx.chains, theory.device)
        ctx.sampler.load_state_dict(ckpt.sampler_state)
        return state.to(theory.dtype), ckpt.trajectory, ckpt
    start = initial_field(ctx.deck, theory, rng, ctx.chains)
    return ctx.sampler.from_physical(start), 0, None


def _measure(
    ctx: _Context, state: torch.Tensor, rec: Record, traj: int, writers: Writers, measure: bool
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Observables of the physical field into the per-chain columns and the ensembles."""
    physical = ctx.sampler.to_physical(state)
    if hasattr(ctx.theory, "noise_counter"):  # stochastic estimators: fresh noise per trajectory
        ctx.theory.noise_counter = traj
    with torch.no_grad():
        obs = flatten_observables(ctx.theory.observables(physical))
    if measure:
        for w, b in writers:
            row = {k: float(v[b]) for k, v in obs.items()}
            row.update(
                dH=float(rec.dH[b]),
                accepted=float(rec.accepted[b]),
                exp_minus_dH=float(rec.exp_minus_dH[b]),
            )
            w.append_observables(traj, row)
    return physical, {k: plain(v) for k, v in obs.items()}


class _GroupError:
    """Catches a :class:`TrivhmcError` that one replica group raised (its ensemble writers
    are collective over the group only) into :attr:`error`, for :func:`_raise_group_error`
    to raise on every rank; with one replica group the error is already on every rank and
    passes through."""

    def __init__(self, grid: ProcessGrid) -> None:
        self.grid = grid
        self.error: TrivhmcError | None = None

    def __enter__(self) -> _GroupError:
        return self

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, TrivhmcError) and self.grid.replicas > 1:
            self.error = exc
            return True
        return False


def _raise_group_error(grid: ProcessGrid, error: TrivhmcError | None) -> None:
    """Collective over the world: raise on every rank the error of the lowest failing rank
    (nothing if none failed). Called only with several replica groups."""
    size = grid.comm.Get_size()
    first = grid.comm.allreduce(grid.comm.Get_rank() if error is not None else size, op=MPI.MIN)
    if first < size:
        raise grid.comm.bcast(error, root=first)


def _checkpoint(ctx: _Context, state: torch.Tensor, traj: int, writers: Writers) -> None:
    """Ensembles flushed first, then the verified checkpoint, then ``progress.json``."""
    with _GroupError(ctx.grid) as caught:
        for w, _ in writers:
            w.set_rng_counters({"next_trajectory": traj})
            w.flush()
    if ctx.grid.replicas > 1:  # a group's failed flush stops every rank before the gather
        _raise_group_error(ctx.grid, caught.error)
    ck = Checkpoint(traj, ctx.physics, ctx.run_info, ctx.sampler.state_dict())
    write_checkpoint(ctx.out / "checkpoints", ck, state, ctx.grid, ctx.theory.first)
    on_root(lambda: _write_progress(ctx, traj), ctx.grid.comm, broadcast=False)


def _write_progress(ctx: _Context, traj: int) -> None:
    """``progress.json`` (world rank 0); a full disk becomes a :class:`StorageError`."""
    try:
        write_progress(ctx.out, traj, ctx.deck.run.total_trajectories)
    except OSError as exc:
        error = storage_error_from(
            exc,
            f"cannot write {ctx.out / 'progress.json'}",
            f"; the checkpoint at trajectory {traj} is complete. Free space and run again.",
        )
        if error is None:
            raise
        raise error from None


def _save(
    ctx: _Context,
    state: torch.Tensor,
    physical: torch.Tensor | None,
    traj: int,
    writers: Writers,
) -> None:
    """Save the physical configurations of trajectory ``traj`` (ensembles and files)."""
    if physical is None:
        physical = ctx.sampler.to_physical(state)
    save_configs(ctx.deck, ctx.grid, ctx.theory, physical, traj, ctx.offset, ctx.out, writers)


def _progress_bar(ctx: _Context, start: int, progress: bool | None):
    show = ctx.deck.output.progress if progress is None else progress
    if not (show and ctx.grid.is_world_root):
        return None
    from tqdm import tqdm

    total = ctx.deck.run.total_trajectories
    return tqdm(total=total, initial=start, unit="traj", dynamic_ncols=True, disable=None)


@dataclass
class _Outputs:
    """Where a trajectory's results go: records, run.log, on-the-fly measurements, files."""

    records: Records
    runlog: RunLog
    measurer: Any
    writers: Writers
    #: world rank 0: why an append failed (full disk or quota), reported at the trajectory's end
    failed: str | None = None

    def append(self, what: Path, write, collective: bool = False) -> None:
        """Call ``write`` (a world-rank-0 append to ``what``); a full disk or quota is kept in
        :attr:`failed` and raised collectively by the loop (:func:`_raise_append_failure`).
        After a failure, appends are skipped, unless ``write`` is collective (every rank
        must call it)."""
        if self.failed is not None and not collective:
            return
        try:
            write()
        except OSError as exc:
            error = storage_error_from(exc, f"cannot append to {what}")
            if error is None:
                raise
            if self.failed is None:
                self.failed = str(error)


def _raise_append_failure(ctx: _Context, outputs: _Outputs, traj: int) -> None:
    """Every rank raises world rank 0's append failure as one :class:`StorageError`."""
    reason = ctx.grid.comm.bcast(outputs.failed, root=0)
    raise StorageError(
        f"{reason} (trajectory {traj}). The run stopped without a checkpoint; the files are "
        "intact up to the last checkpoint (a line cut by the failure is dropped on resume). "
        "Free space or raise the quota, then run again: it resumes from that checkpoint."
    )


def _open_outputs(
    ctx: _Context, traj: int, resume: bool, records_kept: list[str] | None = None
) -> _Outputs:
    """Open (and cut back to the checkpoint at ``traj``) every per-trajectory output;
    ``records_kept``: the records lines before ``traj`` as the start-up check read them
    (world rank 0 of a resume), None: read them again."""
    root, out = ctx.grid.is_world_root, ctx.out
    records = Records(out / RECORDS, ctx.grid)
    records.truncate(traj, records_kept)
    runlog = RunLog(out, root, traj)
    measurer = open_on_the_fly(ctx.deck, ctx.theory, out, root, traj)
    writers = open_ensembles(
        ctx.deck,
        ctx.grid,
        ctx.theory,
        ctx.chains,
        ctx.offset,
        out,
        resume=resume,
        flow_hash=ctx.run_info["flow"].get("hash"),
    )
    writers.truncate_after(traj - 1)
    if measurer is not None:  # measurement rows committed to the ensembles as they happen
        measurer.attach(writers, ctx.grid)
    return _Outputs(records, runlog, measurer, writers)


def _write_outputs(
    ctx: _Context, outputs: _Outputs, state: torch.Tensor, rec: Record, traj: int
) -> None:
    """Observables, the records line, run.log, on-the-fly measurements and saved
    configurations of trajectory ``traj``."""
    deck = ctx.deck
    therm = traj < deck.run.thermalization
    prod_index = traj - deck.run.thermalization
    measure = not therm and prod_index % deck.run.measure_every == 0
    per_chain = per_chain_columns(rec)
    physical = None
    if measure or therm:
        physical, per_chain["observables"] = _measure(
            ctx, state, rec, traj, outputs.writers, measure
        )
    merged = outputs.records.gather(per_chain)
    if merged is not None:
        line = {"trajectory": traj, "thermalization": therm, **merged, **scalar_columns(rec)}
        outputs.append(outputs.records.path, lambda: outputs.records.append(line))
        outputs.append(outputs.runlog.path, lambda: outputs.runlog.trajectory(line))
    measurer = outputs.measurer
    if measurer is not None and measurer.due(therm, prod_index):
        if physical is None:
            physical = ctx.sampler.to_physical(state)
        local = measurer.measure(physical)
        merged_m = outputs.records.gather(local)
        outputs.append(
            measurer.path, lambda: measurer.record(traj, merged_m, local), collective=True
        )
    save_every = deck.run.save_every
    if not therm and save_every > 0 and (prod_index + 1) % save_every == 0:
        _save(ctx, state, physical, traj, outputs.writers)


class _StopRequest:
    """SIGTERM (a scheduler's wall-time warning, ``scancel``, ``qdel``) asks the run to stop
    after the trajectory in progress with a checkpoint, as ``run.max_runtime`` does. The
    handler only sets a flag; the loop acts on it after the trajectory (all ranks agree
    through the same allreduce as ``max_runtime``). Installed only in the main thread;
    the previous handler comes back when the run returns."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run(deck: Deck, progress: bool | None = None) -> RunResult:
    """Run (or resume) the deck's ensemble generation. Collective over MPI.COMM_WORLD."""
    ctx, rng = _prepare(deck)
    grid, sampler, out = ctx.grid, ctx.sampler, ctx.out
    total, therm_n = deck.run.total_trajectories, deck.run.thermalization
    state, traj, ckpt = _start_state(ctx, rng)
    # before anything is cut or overwritten: do the directory's files agree with the start?
    chains_total = ctx.run_info["chains_total"]
    # (world rank 0 of a resume: the records lines it keeps, read once, cut to them below)
    kept = check_run_directory(deck, grid, out, chains_total, None if ckpt is None else traj)

    start_traj = traj
    outputs = _open_outputs(ctx, traj, resume=ckpt is not None, records_kept=kept)
    writers = outputs.writers
    if ckpt is None:  # checkpoint 0: a run killed before its first checkpoint resumes
        _checkpoint(ctx, state, traj, writers)

    bar = _progress_bar(ctx, traj, progress)
    t_start = time.perf_counter()
    n_acc = n_done = 0
    stop_request = _StopRequest().__enter__()
    try:
        while traj < total:
            therm = traj < therm_n
            tune = therm and deck.sampler.target_acceptance is not None
            if not therm and traj == therm_n and therm_n > 0:
                sampler.finish_tuning()
            state, rec = sampler.trajectory(state, traj, ctx.offset, tune=tune)
            n_acc += float(rec.accepted.double().sum())
            n_done += ctx.chains
            with _GroupError(grid) as caught:  # raised on every rank below
                _write_outputs(ctx, outputs, state, rec, traj)
            traj += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{n_acc / max(n_done, 1):.2f}", eps=f"{rec.step_size:.3g}")
            out_of_time = (
                deck.run.max_runtime is not None
                and time.perf_counter() - t_start > deck.run.max_runtime
            ) or stop_request.signal is not None
            # one allreduce per trajectory: bit 1 stop (time, signal), bit 2 an append failed,
            # bit 4 a replica group's error
            flags = grid.comm.allreduce(
                int(out_of_time)
                | (2 if outputs.failed is not None else 0)
                | (4 if caught.error is not None else 0),
                op=MPI.BOR,
            )
            if flags & 4:
                _raise_group_error(grid, caught.error)
            if flags & 2:
                _raise_append_failure(ctx, outputs, traj - 1)
            out_of_time = bool(flags & 1)
            if traj % deck.run.checkpoint_every == 0 or traj == total or out_of_time:
                _checkpoint(ctx, state, traj, writers)
            if out_of_time and traj < total:
                break
    finally:
        stop_request.__exit__()
        if bar is not None:
            bar.close()
    # a signal seen by any rank stopped the run: report it on every rank
    stopped_by = grid.comm.allreduce(stop_request.signal or 0, op=MPI.MAX) or None
    # chains of this replica, averaged over the replica groups
    acc = grid.replica_comm.allreduce(n_acc / max(n_done, 1), op=MPI.SUM) / grid.replicas
    stopped_by = stopped_by if traj < total else None
    return RunResult(traj, total, traj >= total, acc, out, start=start_traj, signal=stopped_by)
