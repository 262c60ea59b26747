"""How a deck becomes objects: process grid, theory, sampler and the start field.

``build_grid`` -> ``build_theory`` (from the theory's descriptor, kernels/theories) ->
``build_sampler`` (a :class:`kernels.samplers.protocol.Sampler`: HMC with the deck's time
scales, or a flow sampler from the model registry, app/flow_samplers.py) -> ``initial_field``
(hot, cold, or a configuration file read by every rank and sliced to its block).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from app.deck import Deck
from app.errors import InputError, MissingDependency
from app.flow_samplers import load_flow
from kernels.flows.priors import prior_for
from kernels.integrators import Integrator, LevelSpec, make_integrator
from kernels.samplers.flow_metropolis import FlowMetropolis, FlowMetropolisSampler
from kernels.samplers.hmc import HMC
from kernels.samplers.protocol import Sampler
from kernels.samplers.trivialized import TransformedTheory
from kernels.theories import descriptor, make_theory
from kernels.theory import Theory
from parallel import ProcessGrid
from parallel.rng import SiteRNG
from parallel.settings import choice


def torch_dtype(theory_name: str, dtype: str) -> torch.dtype:
    """Field dtype of a theory at the deck's precision (real, or complex for SU(N))."""
    return descriptor(theory_name).torch_dtype(dtype)


def build_grid(deck: Deck) -> ProcessGrid:
    """The process grid of the deck (lattice, ranks per axis, replica groups)."""
    return ProcessGrid(deck.lattice.shape, deck.parallel.grid, deck.parallel.replicas)


def select_kernels(deck: Deck) -> None:
    """Activate the deck's kernel backend (``parallel.kernels``), if it names one, and the
    SU(3) halo/compute overlap (``parallel.overlap``)."""
    from kernels.theories.su3 import set_overlap

    choice("TRIVHMC_STOUT_KERNEL", "auto")  # a bad value fails here, before any output

    if deck.parallel.overlap is not None:
        set_overlap(deck.parallel.overlap)
    name = deck.parallel.kernels
    if name is None:
        from kernels.backends import get_backend

        get_backend()  # $TRIVHMC_KERNELS, else eager: a bad value fails here, before any output
        return
    from kernels.backends import BackendError, set_backend

    try:
        set_backend(name)
    except BackendError as exc:
        if "optional dependency" in str(exc):
            raise MissingDependency("numba", "fast", f"parallel.kernels: {name}") from None
        raise InputError(f"parallel.kernels: {exc}") from None


def build_theory(deck: Deck, grid: ProcessGrid) -> Theory:
    """The deck's theory on ``grid`` with its couplings, dtype and device (and the deck's
    kernel backend activated)."""
    select_kernels(deck)
    return make_theory(
        deck.theory.name,
        grid,
        **deck.theory.constructor_kwargs(),
        dtype=torch_dtype(deck.theory.name, deck.parallel.dtype),
        device=deck.parallel.device,
    )


def build_integrator(deck: Deck, theory: Theory) -> Integrator:
    """The molecular-dynamics integrator of ``sampler`` (one or several time scales)."""
    s = deck.sampler
    levels = None
    if s.levels:
        levels = [LevelSpec(tuple(lv.terms), lv.steps, lv.integrator) for lv in s.levels]
    try:
        return make_integrator(theory, s.integrator, s.steps, s.trajectory_length, levels)
    except ValueError as exc:
        raise InputError(f"sampler.levels: {exc}") from None


def build_hmc(deck: Deck, theory: Theory, rng: SiteRNG) -> HMC:
    """HMC on ``theory`` (the physical or a flow-transformed one) as the deck sets it up."""
    s = deck.sampler
    return HMC(
        theory,
        build_integrator(deck, theory),
        rng,
        trajectory_length=s.trajectory_length,
        target_acceptance=s.target_acceptance,
        reversibility_every=deck.run.check_reversibility,
    )


def transformed_theory(deck: Deck, theory: Theory, flow) -> TransformedTheory:
    """``S~`` for trivialized HMC: one pulled-back force per physical term (``TransformedTheory``:
    terms ``<t>`` and ``logdet``), or, when ``sampler.levels`` names ``flow_correction`` or
    ``<t>_plain`` terms, the NTHMC split (:class:`kernels.samplers.nthmc.FlowSplitTheory`):
    the plain forces of the ``<t>_plain`` terms at ``V`` (cheap, inner levels) and one
    ``flow_correction`` (everything else, pulled back through the flow, outer level)."""
    from kernels.samplers.nthmc import CORRECTION_TERM, PLAIN_SUFFIX, FlowSplitTheory

    names = [t for lv in deck.sampler.levels or [] for t in lv.terms]
    if not any(t == CORRECTION_TERM or t.endswith(PLAIN_SUFFIX) for t in names):
        return TransformedTheory(theory, flow)
    inner = [t.removesuffix(PLAIN_SUFFIX) for t in names if t.endswith(PLAIN_SUFFIX)]
    try:
        return FlowSplitTheory(theory, flow, inner=inner)
    except (ValueError, KeyError) as exc:
        raise InputError(
            f"sampler.levels: the split trivialized action needs `<term>_plain` terms of the "
            f"theory {theory.name!r} and `{CORRECTION_TERM}`: {exc}"
        ) from None


def build_sampler(deck: Deck, theory: Theory, rng: SiteRNG) -> tuple[Sampler, dict[str, Any]]:
    """The deck's sampler and the reference ``{model, hash}`` of its flow (``{}``: none)."""
    s = deck.sampler
    if s.name == "hmc":
        return build_hmc(deck, theory, rng), {}
    if s.name == "l2hmc":
        from app.l2hmc import build_l2hmc_sampler

        return build_l2hmc_sampler(deck, theory, rng)
    flow, card = load_flow(deck, theory)
    ref = {"model": s.flow.model, "hash": card.get("hash")}

    def trivialized_hmc() -> HMC:
        return build_hmc(deck, transformed_theory(deck, theory, flow), rng)

    if theory.name == "schwinger":  # gauge or joint (U, phi) flows (issue 11)
        from app.schwinger_flows import build_flow_sampler

        return build_flow_sampler(deck, theory, flow, rng, trivialized_hmc), ref
    if s.name == "trivialized_hmc":
        return trivialized_hmc(), ref
    if s.name == "flow_metropolis":
        fm = FlowMetropolis(theory, flow, prior_for(theory), rng)
        return FlowMetropolisSampler(fm), ref
    raise InputError(f"sampler.name: unknown sampler {s.name!r}")


def initial_field(deck: Deck, theory: Theory, rng: SiteRNG, chains: int) -> torch.Tensor:
    """The physical start field of this rank's chains (``run.start``)."""
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
    t = local_block(full, theory, f"run.start: {path}")
    return t.unsqueeze(0).expand((chains,) + tuple(t.shape)).contiguous()


def local_block(full, theory: Theory, what: str) -> torch.Tensor:
    """This rank's block of one global field ``full`` (numpy, the theory's layout without the
    batch axis) as a tensor of the theory's dtype and device; a clear error naming ``what``
    when its lattice is not the theory's."""
    grid = theory.grid
    expected = tuple(theory.field_shape(1)[1 : theory.first]) + grid.shape
    got = tuple(full.shape[: theory.first - 1 + grid.ndim])
    if got != expected:
        raise InputError(
            f"{what} holds a field of shape {tuple(full.shape)}; the deck needs lattice "
            f"{list(grid.shape)} ({theory.name})"
        )
    block = full[(slice(None),) * (theory.first - 1) + grid.local_slices()]
    return torch.from_numpy(block.copy()).to(device=theory.device, dtype=theory.dtype)
