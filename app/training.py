"""``trivhmc train deck.yaml``: train a flow for the deck's theory and store it in the registry.

The deck's ``train`` section picks the architecture (a builder of kernels/flows), its
options, the loss and the optimiser settings. ``reverse_kl`` self-trains from the prior
(kernels/flows/train.py); ``force_matching`` makes the trivialized force small on the
configurations of existing HDF5 ensembles (kernels/flows/force_matching.py). Training is
distributed like the run: the lattice is split over each replica group, weights are
replicated and gradients all-reduced. The model (weights, card with architecture, couplings,
lattice, history, content hash) goes to the registry; the printed reference
``name@hash`` is what ``sampler.flow.model`` takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from app.deck import ARCHITECTURES, Deck
from app.errors import InputError
from app.flow_samplers import registry_root
from app.setup import build_grid, build_theory
from app.tracking import Tracker, tracking_uri
from kernels.flows.base import build_flow
from parallel import ProcessGrid
from parallel.rng import SiteRNG


def _ensemble_blocks(deck: Deck, grid: ProcessGrid, theory, key: str = "configurations"):
    """Every configuration of ``train.<key>`` (HDF5 ensembles), this rank's block."""
    from app.io.errors import ConfigFormatError
    from app.io.hdf5 import read_configs

    blocks = []
    for name in getattr(deck.train, key):
        path = deck.resolve(name)
        try:  # the committed configurations only (not a crashed writer's tail)
            blocks.append(read_configs(path, grid.local_slices(), theory.first - 1))
        except (OSError, KeyError, ConfigFormatError) as exc:
            raise InputError(f"train.{key}: cannot read {path}: {exc}") from None
    # shape and kind checked before the conversion: an SU(3) ensemble given to a U(1) deck
    # must be refused, not cast to real first (torch warns about the dropped imaginary part)
    want = tuple(theory.field_shape(1)[1:])
    for name, block in zip(getattr(deck.train, key), blocks, strict=True):
        if tuple(block.shape[1:]) != want:
            raise InputError(
                f"train.{key}: {deck.resolve(name)} holds fields of local shape "
                f"{tuple(block.shape[1:])}, the deck's theory {deck.theory.name} needs {want}"
            )
        if np.iscomplexobj(block) and not theory.dtype.is_complex:
            raise InputError(
                f"train.{key}: {deck.resolve(name)} holds complex fields, the deck's theory "
                f"{deck.theory.name} needs real ones"
            )
    return torch.from_numpy(np.concatenate(blocks)).to(theory.device, theory.dtype)


def _training_configurations(deck: Deck, grid: ProcessGrid, theory, key: str = "configurations"):
    """This rank's block of every configuration named in ``train.<key>``: all of an HDF5
    ensemble's (:func:`_ensemble_blocks`), or the one of an ILDG/NERSC file (SU(3); format
    from the file's first bytes, checksums and unitarity verified by app.io)."""
    from app.io.errors import ConfigFormatError
    from app.io.formats import detect_format

    names = list(getattr(deck.train, key))
    fmts = []
    for name in names:
        try:
            fmts.append(detect_format(deck.resolve(name)))
        except (OSError, ConfigFormatError) as exc:
            raise InputError(f"train.{key}: cannot read {deck.resolve(name)}: {exc}") from None
    if all(f == "hdf5" for f in fmts):
        return _ensemble_blocks(deck, grid, theory, key)
    if deck.theory.name != "su3":
        raise InputError(f"train.{key}: ILDG/NERSC files hold SU(3) links, not {deck.theory.name}")
    from app.io.ildg import read_ildg
    from app.io.nersc import read_nersc

    parts = []
    h5 = [n for n, f in zip(names, fmts, strict=True) if f == "hdf5"]
    if h5:
        sub = deck.model_copy(update={"train": deck.train.model_copy(update={key: h5})})
        parts.append(_ensemble_blocks(sub, grid, theory, key))
    for name, fmt in zip(names, fmts, strict=True):
        if fmt == "hdf5":
            continue
        reader = read_ildg if fmt == "ildg" else read_nersc
        try:
            block, _ = reader(deck.resolve(name), grid)
        except (OSError, ConfigFormatError) as exc:
            raise InputError(f"train.{key}: cannot read {deck.resolve(name)}: {exc}") from None
        parts.append(torch.as_tensor(np.asarray(block))[None].to(theory.device, theory.dtype))
    return torch.cat(parts)


def _target(deck: Deck, grid: ProcessGrid, theory):
    """``train.target_beta``: the plain force of the deck's theory at that beta, or None."""
    t = deck.train
    if t.target_beta is None:
        return None
    from kernels.flows.force_matching import CouplingTarget
    from kernels.theories import make_theory

    kwargs = {**deck.theory.constructor_kwargs(), "beta": float(t.target_beta)}
    target = make_theory(deck.theory.name, grid, **kwargs, dtype=theory.dtype, device=theory.device)
    return CouplingTarget(theory, target)


def _make_trainer(deck: Deck, grid: ProcessGrid, theory, flow, rng: SiteRNG):
    """The trainer for ``deck.train.loss`` (reverse KL, Q-jump, force norm or force matching),
    all sharing the deck's optimiser settings."""
    t = deck.train
    optimiser = {
        "steps": t.steps,
        "batch": t.batch,
        "lr": t.lr,
        "lr_schedule": t.lr_schedule,
        "grad_clip": t.grad_clip,
    }
    if t.loss == "reverse_kl":
        from kernels.flows.train import TrainConfig, Trainer

        cfg = TrainConfig(**optimiser, anneal_steps=t.anneal_steps, anneal_start=t.anneal_start)
        if theory.name == "schwinger":
            from app.schwinger_flows import reverse_kl_trainer

            trainer = reverse_kl_trainer(flow, theory, cfg, rng)
        else:
            trainer = Trainer(flow, theory, cfg, rng=rng)
    elif t.loss == "qjump":  # NTHMC (issue 15), 2D U(1)
        from kernels.flows.nthmc_qjump import QJumpConfig, QJumpTrainer

        cfg = QJumpConfig(**optimiser, seed=deck.run.seed, **t.qjump.model_dump())
        blocks = _training_configurations
        val = blocks(deck, grid, theory, "validation") if t.validation else None
        trainer = QJumpTrainer(flow, theory, blocks(deck, grid, theory), cfg, validation=val)
    elif t.loss == "force_norm" or t.target_beta is not None:  # NTHMC (issue 15)
        from kernels.flows.force_norm import ForceNormConfig, ForceNormTrainer

        cfg = ForceNormConfig(**optimiser, **t.force_norm.model_dump(exclude={"fermion_force"}))
        blocks = _training_configurations
        physical = None
        if (
            theory.name == "schwinger"
        ):  # NTHMC on the full force (kernels/flows/force_norm_fermions.py)
            from kernels.flows.force_norm_fermions import FullForce

            physical = FullForce(theory, deck.run.seed, t.force_norm.fermion_force)
        val = blocks(deck, grid, theory, "validation") if t.validation else None
        trainer = ForceNormTrainer(
            flow,
            theory,
            blocks(deck, grid, theory),
            cfg,
            validation=val,
            target=_target(deck, grid, theory),
            physical=physical,
        )
    else:
        from kernels.flows.force_matching import ForceMatchingConfig, ForceMatchingTrainer

        cfg = ForceMatchingConfig(**optimiser)
        trainer = ForceMatchingTrainer(flow, theory, _ensemble_blocks(deck, grid, theory), cfg)
    return trainer


def check_train_registry(deck: Deck, comm=None) -> None:
    """Refuse, before any training, a registry the trained model could not be saved in: the
    registry a file, or holding a file with the model's name, not writable, or a reserved
    model name (``index.json``). One :class:`app.registry.RegistryError` (exit 2) on every
    rank of ``comm`` (default MPI.COMM_WORLD), decided on rank 0."""
    from mpi4py import MPI

    from app.registry import check_registry

    t = deck.train
    if t is None:
        raise InputError("the deck has no `train` section (see docs/deck.md)")
    if t.registry:
        hint = "set train.registry to a writable directory"
    else:
        hint = "set train.registry (or $TRIVHMC_MODELS) to a writable directory"
    root = registry_root(deck, t.registry)
    check_registry(root, t.model_name, write=True, comm=comm or MPI.COMM_WORLD, hint=hint)


def train(deck: Deck, progress: bool = True) -> tuple[str, dict[str, Any]]:
    """Train and save; returns ``(reference, last metrics)``. Collective over MPI.COMM_WORLD.
    The registry is checked first (:func:`check_train_registry`), so a model that could not
    be saved is not trained."""
    from app.registry import save_model

    t = deck.train
    if t is None:
        raise InputError("the deck has no `train` section (see docs/deck.md)")
    check_train_registry(deck)
    if t.objective == "l2hmc":
        from app.l2hmc import train_l2hmc

        return train_l2hmc(deck, progress)
    grid = build_grid(deck)
    theory = build_theory(deck, grid)
    real = theory.dtype.to_real()
    options = {"dtype": str(real).removeprefix("torch."), **t.options}
    try:
        flow = build_flow({"builder": ARCHITECTURES[t.architecture][1], "kwargs": options}, grid)
    except TypeError as exc:
        raise InputError(f"train.options: {exc}") from None
    flow = flow.to(theory.device)
    if t.architecture == "u1_sweep":
        from kernels.flows.u1_sweep import init_marginal

        init_marginal(flow, theory.beta, seed=deck.run.seed)
    rng = SiteRNG(deck.run.seed)
    show = progress and grid.is_world_root
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, unit="step", disable=None)

    tracker = Tracker(tracking_uri(t.tracking), grid.is_world_root)
    couplings = deck.theory.model_dump(exclude={"name"})
    tracker.start(
        t.model_name,
        {
            **t.model_dump(mode="json"),
            "theory": deck.theory.name,
            **{f"theory.{k}": v for k, v in couplings.items()},
        },
    )

    def callback(m: dict[str, float]) -> None:
        tracker.log_step(m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{m[k]:.4g}" for k in ("loss", "ess", "force_rms") if k in m})

    if theory.name == "schwinger":  # flows with fermions (issue 11)
        from app.schwinger_flows import check_loss

        check_loss(t.loss, t.architecture, t.target_beta)
    try:
        trainer = _make_trainer(deck, grid, theory, flow, rng)
        history = trainer.train(callback=callback)
    except BaseException:
        tracker.close(failed=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    ref = save_model(
        flow,
        theory,
        t.model_name,
        registry_root(deck, t.registry),
        history,
        train_config=t.model_dump(mode="json"),
        grid=grid,
        tags=t.tags,
    )
    if tracker.on:
        from app.registry import load_verified, resolve

        root = registry_root(deck, t.registry)
        tracker.finish(ref, resolve(ref, root), load_verified(ref, root)[0])
    return ref, (history[-1] if history else {})


def save_trainer_checkpoint(trainer, path) -> None:
    """Write a trainer's state (flow, optimiser, scheduler, RNG, history) atomically on the
    world root (temp file, fsync, rename); collective over the trainer's grid."""
    import io

    from app.io.atomic import atomic_write_bytes

    if trainer.grid.comm.Get_rank() == 0:
        buf = io.BytesIO()
        torch.save(trainer.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
    trainer.grid.comm.Barrier()


def load_trainer_checkpoint(trainer, path) -> None:
    """Restore :func:`save_trainer_checkpoint` (every rank reads it; weights re-broadcast)."""
    from parallel import broadcast_parameters

    state = torch.load(str(path), map_location="cpu", weights_only=False)
    trainer.load_state_dict(state)
    broadcast_parameters(trainer.flow, trainer.grid)
