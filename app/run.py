"""The run loop behind ``trivhmc run deck.yaml``: generate an ensemble, resumable at any time.

Trajectories are numbered ``0 .. thermalization + trajectories - 1``; the number keys every
random draw (momenta, accept/reject), so a run resumed from a checkpoint, on any number of
ranks, repeats exactly what the uninterrupted run would have done.

Run directory (docs/run-output.md)::

    records.jsonl              one JSON object per trajectory (all chains), appended by rank 0
    ensemble_c<chain>.h5       HDF5 ensemble of each chain (configs + observables), if "hdf5"
    configs/<name>_c<chain>_<traj>.lime|.nersc   SU(3) files, if "ildg" / "nersc"
    checkpoints/ckpt_<traj>.h5, checkpoints/LATEST
    progress.json              {"trajectory", "total", "finished"} (for chained jobs)

Order of writes at a checkpoint: configurations and ensemble files first, then the
checkpoint (verified), then ``progress.json``. A kill at any moment leaves the previous
checkpoint and everything it points to intact; on resume, records and ensemble rows after the
checkpoint are dropped and regenerated (bitwise identical).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mpi4py import MPI

from app import code_version
from app.checkpoint import (
    Checkpoint,
    CheckpointError,
    compare_physics,
    find_latest,
    read_local_fields,
    write_checkpoint,
)
from app.deck import Deck
from app.errors import InputError
from app.io.atomic import atomic_write_bytes
from app.progress import write_progress
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
from kernels.samplers.protocol import Sampler
from kernels.theories import make_theory
from kernels.theory import Theory
from parallel import ProcessGrid, set_gpu_aware
from parallel.rng import SiteRNG

RECORDS = "records.jsonl"


# ------------------------------------------------------------------ building blocks
def torch_dtype(theory_name: str, dtype: str) -> torch.dtype:
    """Field dtype: real for phi^4 / U(1) angles, complex for SU(3) links."""
    real = {"float64": torch.float64, "float32": torch.float32}[dtype]
    if theory_name == "su3":
        return torch.complex128 if real == torch.float64 else torch.complex64
    return real


def build_grid(deck: Deck) -> ProcessGrid:
    return ProcessGrid(deck.lattice.shape, deck.parallel.grid, deck.parallel.replicas)


def build_theory(deck: Deck, grid: ProcessGrid) -> Theory:
    couplings = deck.theory.model_dump(exclude={"name"})
    return make_theory(
        deck.theory.name,
        grid,
        **couplings,
        dtype=torch_dtype(deck.theory.name, deck.parallel.dtype),
        device=deck.parallel.device,
    )


def build_sampler(deck: Deck, theory: Theory, rng: SiteRNG) -> tuple[Sampler, dict[str, Any]]:
    """The deck's sampler (protocol :class:`kernels.samplers.protocol.Sampler`) and the
    reference of its flow model (``{}`` without one)."""
    s = deck.sampler
    if s.name == "hmc":
        integ = make_integrator(theory, s.integrator, s.steps, s.trajectory_length)
        hmc = HMC(
            theory,
            integ,
            rng,
            trajectory_length=s.trajectory_length,
            target_acceptance=s.target_acceptance,
            reversibility_every=deck.run.check_reversibility,
        )
        return hmc, {}
    if s.name == "l2hmc":
        from app.l2hmc import build_l2hmc_sampler

        return build_l2hmc_sampler(deck, theory, rng)
    from app.flow_samplers import build_flow_sampler

    return build_flow_sampler(deck, theory, rng)


def initial_field(deck: Deck, theory: Theory, rng: SiteRNG, chains: int) -> torch.Tensor:
    start = deck.run.start
    offset = theory.grid.replica * chains
    if start == "cold":
        return theory.cold_start(chains)
    if start == "hot":
        return theory.hot_start(rng, 0, chains, offset)
    return load_start_field(deck.resolve(start), theory, chains)


def load_start_field(path: Path, theory: Theory, chains: int) -> torch.Tensor:
    """Every chain starts from the configuration in ``path`` (ILDG, NERSC or HDF5: the last
    configuration of a trivhmc ensemble file), read by every rank and sliced to its block."""
    from app.io.errors import ConfigFormatError
    from app.io.formats import detect_format
    from app.io.hdf5 import read_config, read_metadata

    grid = theory.grid
    try:
        fmt = detect_format(path)
        if fmt == "hdf5":
            meta = read_metadata(path)
            if meta.get("theory") != theory.name:
                raise InputError(
                    f"run.start: {path} holds a {meta.get('theory')!r} "
                    f"ensemble, the deck's theory is {theory.name!r}"
                )
            full = read_config(path, -1)
        else:
            from app.io.convert import read_any

            full, _ = read_any(path)
    except (ConfigFormatError, OSError, IndexError) as exc:
        raise InputError(f"run.start: cannot read {path}: {exc}") from None
    expected = tuple(theory.field_shape(1)[1 : theory.first]) + grid.shape
    got = tuple(full.shape[: theory.first - 1 + grid.ndim])
    if got != expected:
        raise InputError(
            f"run.start: {path} holds a field of shape {full.shape}; the deck "
            f"needs lattice {list(grid.shape)} ({theory.name})"
        )
    block = full[(slice(None),) * (theory.first - 1) + grid.local_slices()]
    t = torch.from_numpy(block.copy()).to(device=theory.device, dtype=theory.dtype)
    return t.unsqueeze(0).expand((chains,) + tuple(t.shape)).contiguous()


# ------------------------------------------------------------------ output
def _plain(x: torch.Tensor) -> Any:
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


# ------------------------------------------------------------------ the run
@dataclass
class RunResult:
    trajectory: int
    total: int
    finished: bool
    acceptance: float
    directory: Path


def physics_of(deck: Deck) -> dict[str, Any]:
    return json.loads(json.dumps(deck.physics(), sort_keys=True))


def run(deck: Deck, progress: bool | None = None) -> RunResult:
    """Run (or resume) the deck's ensemble generation. Collective over MPI.COMM_WORLD."""
    if deck.parallel.gpu_aware_mpi is not None:
        set_gpu_aware(deck.parallel.gpu_aware_mpi)
    grid = build_grid(deck)
    theory = build_theory(deck, grid)
    rng = SiteRNG(deck.run.seed)
    chains = deck.run.chains
    offset = grid.replica * chains
    total = deck.run.total_trajectories
    out = deck.output_dir
    world0 = grid.is_world_root
    if world0:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "configs").mkdir(exist_ok=True)
    grid.comm.Barrier()

    sampler, flow_ref = build_sampler(deck, theory, rng)
    physics = physics_of(deck)
    run_info = {
        "seed": deck.run.seed,
        "chains_total": grid.replicas * chains,
        "sampler": deck.sampler.name,
        "flow": flow_ref,
    }

    ckpt = find_latest(out / "checkpoints") if world0 else None
    ckpt = grid.comm.bcast(ckpt, root=0)
    if ckpt is not None:
        diffs = compare_physics(ckpt.physics, physics)
        if ckpt.run.get("seed") != deck.run.seed:
            diffs.append(f"seed: checkpoint has {ckpt.run.get('seed')}, deck has {deck.run.seed}")
        if ckpt.run.get("sampler") != deck.sampler.name:
            diffs.append(
                f"sampler: checkpoint has {ckpt.run.get('sampler')!r}, "
                f"deck has {deck.sampler.name!r}"
            )
        if ckpt.run.get("flow", {}).get("hash") != flow_ref.get("hash"):
            diffs.append("flow model: the checkpoint was made with another flow model")
        if diffs:
            raise CheckpointError(
                f"refusing to resume {out} from {ckpt.path.name}: the deck changed the "
                "physics of the run:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new output.directory for a new run."
            )
        # checkpoints hold the chain variable (V for trivialized HMC), not U = F(V)
        field_v = read_local_fields(ckpt, grid, theory.first, chains, theory.device)
        field_v = field_v.to(theory.dtype)
        sampler.load_state_dict(ckpt.sampler_state)
        start_traj = ckpt.trajectory
    else:
        if world0 and (out / RECORDS).exists():
            raise CheckpointError(
                f"{out} holds records of an earlier run but no usable checkpoint; "
                "move it away or choose another output.directory"
            )
        field_v = sampler.from_physical(initial_field(deck, theory, rng, chains))
        start_traj = 0

    records = Records(out / RECORDS, grid)
    records.truncate(start_traj)
    writers = _open_ensembles(
        deck,
        grid,
        theory,
        chains,
        offset,
        out,
        resume=ckpt is not None,
        flow_hash=flow_ref.get("hash"),
    )
    writers.truncate_after(start_traj - 1)

    show = deck.output.progress if progress is None else progress
    bar = None
    if show and world0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_traj, unit="traj", dynamic_ncols=True, disable=None)
    t_start = time.perf_counter()
    n_acc = n_done = 0
    traj = start_traj
    try:
        while traj < total:
            therm = traj < deck.run.thermalization
            tune = therm and deck.sampler.target_acceptance is not None
            if not therm and traj == deck.run.thermalization and deck.run.thermalization > 0:
                sampler.finish_tuning()
            field_v, rec = sampler.trajectory(field_v, traj, offset, tune=tune)
            n_acc += float(rec.accepted.double().sum())
            n_done += chains
            prod_index = traj - deck.run.thermalization
            measure = not therm and prod_index % deck.run.measure_every == 0
            per_chain: dict[str, Any] = {
                "dH": _plain(rec.dH),
                "accepted": _plain(rec.accepted),
                "exp_minus_dH": _plain(rec.exp_minus_dH),
            }
            physical = None
            if measure or therm:
                physical = sampler.to_physical(field_v)
                with torch.no_grad():
                    obs = flatten_observables(theory.observables(physical))
                per_chain["observables"] = {k: _plain(v) for k, v in obs.items()}
                for w, b in writers:
                    if measure:
                        row = {k: float(v[b]) for k, v in obs.items()}
                        row.update(
                            dH=float(rec.dH[b]),
                            accepted=float(rec.accepted[b]),
                            exp_minus_dH=float(rec.exp_minus_dH[b]),
                        )
                        w.append_observables(traj, row)
            merged = records.gather(per_chain)
            if merged is not None:
                line = {
                    "trajectory": traj,
                    "thermalization": therm,
                    **merged,
                    "step_size": rec.step_size,
                    "n_steps": rec.n_steps,
                    "wall_time": rec.wall_time,
                    "n_nonfinite": rec.n_nonfinite,
                }
                if rec.reversibility_field_error is not None:
                    line["reversibility_field_error"] = _plain(rec.reversibility_field_error)
                    line["reversibility_dH_error"] = _plain(rec.reversibility_dH_error)
                records.append(line)
            save = (
                not therm
                and deck.run.save_every > 0
                and (prod_index + 1) % deck.run.save_every == 0
            )
            if save:
                if physical is None:
                    physical = sampler.to_physical(field_v)
                _save_configs(deck, grid, theory, physical, traj, offset, out, writers)
            traj += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{n_acc / max(n_done, 1):.2f}", eps=f"{rec.step_size:.3g}")
            out_of_time = (
                deck.run.max_runtime is not None
                and time.perf_counter() - t_start > deck.run.max_runtime
            )
            out_of_time = bool(grid.comm.allreduce(out_of_time, op=MPI.LOR))
            if traj % deck.run.checkpoint_every == 0 or traj == total or out_of_time:
                for w, _ in writers:
                    w.set_rng_counters({"next_trajectory": traj})
                    w.flush()
                ck = Checkpoint(traj, physics, run_info, sampler.state_dict())
                write_checkpoint(out / "checkpoints", ck, field_v, grid, theory.first)
                _write_progress(out, traj, total, grid)
            if out_of_time and traj < total:
                break
    finally:
        if bar is not None:
            bar.close()
    # chains of this replica, averaged over the replica groups
    acc = grid.replica_comm.allreduce(n_acc / max(n_done, 1), op=MPI.SUM) / grid.replicas
    return RunResult(traj, total, traj >= total, acc, out)


def _write_progress(out: Path, traj: int, total: int, grid: ProcessGrid) -> None:
    if grid.is_world_root:
        write_progress(out, traj, total)
    grid.comm.Barrier()


def _open_ensembles(deck, grid, theory, chains, offset, out, resume, flow_hash=None):
    """One HDF5 ensemble per chain (``ensemble_c<chain>.h5``), written by its domain root."""
    if "hdf5" not in deck.output.formats:
        return _Writers()
    from app.io.hdf5 import EnsembleWriter

    writers = []
    for b in range(chains):
        path = out / f"ensemble_c{offset + b}.h5"
        exists = path.exists() if grid.is_root else False
        exists = grid.cart.bcast(exists, root=0)
        w = EnsembleWriter(
            path,
            deck.theory.name,
            deck.theory.model_dump(mode="json", by_alias=True, exclude={"name"}),
            deck.lattice.shape,
            deck.sampler.model_dump(mode="json", by_alias=True),
            deck.run.seed,
            code_version(),
            deck_text=deck.text,
            flow_hash=flow_hash,
            grid=grid,
            mode="a" if (resume and exists) else "w",
        )
        writers.append((w, b))
    return _Writers(writers)


class _Writers(list):
    """List of (writer, chain) with a truncate applied to every writer."""

    def truncate_after(self, trajectory: int) -> None:
        for w, _ in self:
            w.truncate_after(trajectory)


def _save_configs(deck, grid, theory, physical, traj, offset, out, writers) -> None:
    for w, b in writers:
        w.append_config(physical[b], traj, grid, first=theory.first - 1)
    fmts = deck.output.formats
    if "ildg" in fmts or "nersc" in fmts:
        name = deck.output_dir.name
        for b in range(physical.shape[0]):
            links = physical[b]
            stem = out / "configs" / f"{name}_c{offset + b}_{traj:06d}"
            if "ildg" in fmts:
                from app.io.ildg import write_ildg

                lfn = f"{deck.output.ildg_lfn}{traj}" if deck.output.ildg_lfn else None
                prec = "double" if deck.output.ildg_precision == 64 else "single"
                write_ildg(stem.with_suffix(".lime"), links, grid, precision=prec, lfn=lfn)
            if "nersc" in fmts:
                from app.io.nersc import write_nersc

                write_nersc(stem.with_suffix(".nersc"), links, grid)
