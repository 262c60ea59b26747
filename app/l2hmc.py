"""L2HMC in the application: training from a deck, the model registry, the run-loop sampler.

* ``trivhmc train deck.yaml`` with ``train: {objective: l2hmc, ...}`` (:func:`train_l2hmc`;
  for a ``schwinger`` deck the model is a U(1) model trained on the quenched theory at the
  deck's ``beta``, which then runs the Schwinger model with the full force):
  builds an :class:`kernels.l2hmc.L2HMCModel` from ``train.options`` (``n_layers``,
  ``hidden``, ``kernel_size``, ``activation``, ``step_size``, ``init_scale``, ``dtype``),
  trains it with :class:`kernels.l2hmc.L2HMCTrainer` (loss options under ``train.l2hmc``) and
  saves it in the model registry (card: architecture, couplings, lattice, per-step metrics,
  training configuration, content hash). Every ``train.checkpoint_every`` steps the trainer
  state (weights, Adam state, step, the chains of every replica as global fields, history) is
  written atomically to ``<output.directory>/l2hmc_train.pt``; a later ``trivhmc train`` of
  the same deck resumes from it bit for bit (on any process grid) and the file is removed once
  the model is saved.
* ``sampler: {name: l2hmc, model: REF, leapfrog_layers: N}`` (:func:`build_l2hmc_sampler`):
  the registry model ``REF`` rebuilt on the run's grid in the run's dtype;
  ``leapfrog_layers`` (optional) must equal the model's layer count.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kernels.l2hmc import L2HMC, L2HMCModel, L2HMCTrainConfig, L2HMCTrainer
from kernels.l2hmc.layers import build_l2hmc_model
from kernels.l2hmc.sampler import model_fits
from kernels.l2hmc.su3 import SU3L2HMCModel
from kernels.theories import descriptor, make_theory
from parallel import ProcessGrid, broadcast_parameters
from parallel.reduce import gather_to_root, scatter_from_root

from .errors import InputError

BUILDER = "kernels.l2hmc.layers:build_l2hmc_model"
CHECKPOINT = "l2hmc_train.pt"
MODEL_OPTIONS = ("n_layers", "hidden", "kernel_size", "activation", "step_size", "init_scale")


# ------------------------------------------------------------------ registry
def load_l2hmc_model(
    ref: str,
    grid: ProcessGrid,
    theory,
    root: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[L2HMCModel | SU3L2HMCModel, dict[str, Any]]:
    """The registry model ``ref`` (hash verified) rebuilt on ``grid``: ``(model, card)``. A U(1)
    model also drives the Schwinger model (:func:`kernels.l2hmc.sampler.model_fits`)."""
    from app.registry import RegistryError, load_verified

    card, state = load_verified(ref, root)
    arch = card.get("architecture", {})
    if arch.get("builder") != BUILDER:
        raise RegistryError(
            f"model {ref!r} is not an L2HMC model (builder {arch.get('builder')!r}); "
            f"train one with train.objective: l2hmc"
        )
    if not model_fits(card["theory"], theory.name):
        raise RegistryError(
            f"model {ref!r} was trained for theory {card['theory']!r}, not {theory.name!r}"
        )
    try:
        model = build_l2hmc_model(grid, dtype=dtype, **arch["kwargs"])
        model.load_state_dict(state)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise RegistryError(
            f"cannot rebuild model {ref!r} on lattice {list(grid.shape)}: {exc}"
        ) from exc
    return model.to(theory.device), card


def build_l2hmc_sampler(deck, theory, rng) -> tuple[L2HMC, dict[str, Any]]:
    """The deck's L2HMC sampler and its model reference ``{model, hash}``."""
    from app.flow_samplers import registry_root

    s = deck.sampler
    real = theory.dtype.to_real()
    # the registry the deck's own training writes to, else the default one
    configured = deck.train.registry if deck.train is not None else None
    model, card = load_l2hmc_model(
        s.model, theory.grid, theory, registry_root(deck, configured), dtype=real
    )
    if s.leapfrog_layers is not None and s.leapfrog_layers != model.n_layers:
        raise InputError(
            f"sampler.leapfrog_layers: the deck asks for {s.leapfrog_layers} layers, model "
            f"{s.model!r} has {model.n_layers}"
        )
    return L2HMC(theory, model, rng), {"model": s.model, "hash": card.get("hash")}


# ------------------------------------------------------------------ training checkpoints
def _replica_roots(grid: ProcessGrid) -> list[int]:
    return [k * grid.ranks_per_replica for k in range(grid.replicas)]


def save_checkpoint(trainer: L2HMCTrainer, path: Path, first: int) -> None:
    """Trainer state with the chains of every replica as global fields, written atomically by
    the world root (collective)."""
    from app.io.atomic import atomic_write_bytes

    grid = trainer.theory.grid
    # host copies: device tensors would travel as pickles (and be rebuilt on the root's device)
    full = gather_to_root(trainer.chains.detach().cpu(), grid, first)
    per_rank = grid.comm.gather(full, root=0)
    if grid.comm.Get_rank() == 0:
        state = trainer.state_dict()
        state["chains"] = [per_rank[r] for r in _replica_roots(grid)]
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())
    grid.comm.Barrier()


def load_checkpoint(trainer: L2HMCTrainer, path: Path, first: int) -> None:
    """Restore :func:`save_checkpoint` on any process grid with the same replica count."""
    grid = trainer.theory.grid
    state = None
    if grid.comm.Get_rank() == 0:
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        if len(state["chains"]) != grid.replicas:
            raise InputError(
                f"{path}: training checkpoint of {len(state['chains'])} replica(s), the deck "
                f"has {grid.replicas}; remove it to start over"
            )
    state = grid.comm.bcast(state, root=0)
    glob = state["chains"][grid.replica] if grid.rank == 0 else None
    state["chains"] = scatter_from_root(glob, grid, first, like=trainer.chains).to(trainer.chains)
    trainer.load_state_dict(state)
    broadcast_parameters(trainer.model, grid)


# ------------------------------------------------------------------ training
def train_config(t) -> L2HMCTrainConfig:
    """The kernel's training configuration from the deck's ``train`` section."""
    extra = dict(t.l2hmc or {})
    gamma_start = extra.pop("gamma_start", 1.0)
    try:
        return L2HMCTrainConfig(
            steps=t.steps,
            batch=t.batch,
            lr=t.lr,
            lr_final_factor=0.1 if t.lr_schedule == "cosine" else 1.0,
            gamma_start=gamma_start,
            anneal_steps=t.anneal_steps or None,
            clip_grad=t.grad_clip,
            **extra,
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"train.l2hmc: {exc}") from None


def train_l2hmc(deck, progress: bool = True) -> tuple[str, dict[str, Any]]:
    """Train and save an L2HMC model for the deck; ``(reference, last metrics)``. Collective."""
    from app.flow_samplers import registry_root
    from app.registry import save_model
    from app.setup import build_grid
    from parallel.rng import SiteRNG

    t = deck.train
    grid = build_grid(deck)
    options = dict(t.options)
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(
        str(options.pop("dtype", "float64"))
    )
    if dtype is None:
        raise InputError("train.options.dtype: float32 or float64")
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise InputError(f"train.options: unknown L2HMC option(s) {unknown}; known {MODEL_OPTIONS}")
    name = deck.theory.name
    couplings = deck.theory.model_dump(exclude={"name"})
    if name == "schwinger":
        # trained on the quenched theory at the deck's beta (no gradient through the
        # pseudofermion solves); the U(1) model then runs the Schwinger model exactly
        name, couplings = "u1", {"beta": couplings["beta"]}
    precision = "float32" if dtype == torch.float32 else "float64"
    field_dtype = descriptor(name).torch_dtype(precision)
    theory = make_theory(name, grid, **couplings, dtype=field_dtype, device=deck.parallel.device)
    try:
        torch.manual_seed(deck.run.seed)
        model = build_l2hmc_model(grid, theory.name, dtype=dtype, **options).to(theory.device)
    except (TypeError, ValueError) as exc:
        raise InputError(f"train.options: {exc}") from None
    broadcast_parameters(model, grid)
    cfg = train_config(t)
    rng = SiteRNG(deck.run.seed)
    offset = grid.replica * cfg.batch
    try:
        trainer = L2HMCTrainer(model, theory, rng, cfg, chain_offset=offset)
    except ValueError as exc:
        raise InputError(f"train: {exc}") from None
    out = deck.output_dir
    path = out / CHECKPOINT
    if path.exists():
        load_checkpoint(trainer, path, theory.first)
    elif grid.is_world_root:
        out.mkdir(parents=True, exist_ok=True)
    every = max(int(deck.run.checkpoint_every), 1)
    bar = None
    if progress and grid.is_world_root:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=trainer.step_count, unit="step", disable=None)
    try:
        while trainer.step_count < cfg.steps:
            m = trainer.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{m[k]:.3g}" for k in ("loss", "acceptance") if k in m})
            if trainer.step_count % every == 0 or trainer.step_count == cfg.steps:
                save_checkpoint(trainer, path, theory.first)
    finally:
        if bar is not None:
            bar.close()
    train_cfg = {"objective": "l2hmc", **asdict(cfg), "model_options": t.options}
    ref = save_model(
        model,
        theory,
        t.model_name,
        registry_root(deck, t.registry),
        trainer.history,
        train_config=train_cfg,
        grid=grid,
        tags=t.tags,
    )
    if grid.is_world_root and path.exists():
        path.unlink()
    grid.comm.Barrier()
    return ref, (trainer.history[-1] if trainer.history else {})
