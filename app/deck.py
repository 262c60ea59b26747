"""YAML input decks: the schema, validation with key paths and line numbers, overrides.

A deck has six sections (``theory``, ``lattice``, ``parallel``, ``sampler``, ``run``,
``output``; ``parallel`` and ``sampler`` may be left out)::

    theory:   {name: u1, beta: 2.0}
    lattice:  {shape: [16, 16]}
    parallel: {grid: [2, 1], replicas: 1, device: cpu}
    sampler:  {name: hmc, integrator: omelyan, steps: 10, trajectory_length: 1.0}
    run:      {seed: 1234, thermalization: 200, trajectories: 2000}
    output:   {directory: runs/u1_b2, formats: [hdf5]}

Every model forbids unknown keys and is strict (YAML gives native types: ``steps: 10.5``,
``steps: 1e3`` or ``beta: "2"`` are errors, an ``int`` is accepted where a ``float`` is
expected). Decks and ``--set`` values are read with :class:`DeckLoader`, PyYAML's safe loader
with YAML 1.2 floats (``1e-10``, ``1E5``, ``5e+3`` are numbers, not strings as in YAML 1.1).
Every number in a deck must be finite: ``.inf``, ``.nan`` or ``1e999`` are errors naming the
key (:func:`_nonfinite_problems`).
:func:`load_deck` reports every problem at once, each with its key path and its line in the
file (or the ``--set`` override that caused it), and suggests the nearest valid key or value
(:mod:`difflib`). Relative paths in a deck (``output.directory``, ``run.start``,
``sampler.flow.model``) are relative to the directory of the deck file, so a deck gives the
same run wherever it is launched from (:meth:`Deck.resolve`).

The reference (docs/deck.md) is generated from this schema by :mod:`app.deck_docs`.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from kernels.theories import REGISTRY as THEORY_REGISTRY
from kernels.theories import architectures as _architectures
from kernels.theories import descriptor as theory_descriptor
from kernels.theories.descriptor import Coupling, TheoryDescriptor

from .errors import InputError

KeyPath = tuple[str | int, ...]

#: number of lattice dimensions of each theory (from kernels/theories descriptors)
THEORY_DIMS = {name: d.dims for name, d in THEORY_REGISTRY.items()}
#: theories whose configurations ILDG / NERSC files can hold
GAUGE_FILE_THEORIES = tuple(n for n, d in THEORY_REGISTRY.items() if "ildg" in d.file_formats)
#: samplers that need a trained flow (``sampler.flow``)
FLOW_SAMPLERS = ("trivialized_hmc", "flow_metropolis")


# ---------------------------------------------------------------------------- errors
class Problem(NamedTuple):
    """One thing wrong with a deck: the key path, a message and where it came from."""

    path: KeyPath
    message: str
    where: str | None = None  # "line 12" or "--set run.seed=x"; filled in by load_deck


def dotted(path: Sequence[str | int]) -> str:
    """``("lattice", "shape", 0)`` -> ``"lattice.shape[0]"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


class DeckError(InputError):
    """An invalid deck. ``problems`` lists every problem with its key path and location."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        """The message: one line per problem with its location."""
        src = self.source or "input deck"
        lines = []
        for p in self.problems:
            where = f", {p.where}" if p.where else ""
            lines.append(f"{src}{where}: {dotted(p.path)}: {p.message}")
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in {src}:\n  " + "\n  ".join(lines)


def _suggest(word: str, choices: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for the nearest choice (difflib), or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------- schema
class _Section(BaseModel):
    # allow_inf_nan=False: a deck built in code gets the same finite-number check as a file
    # (loads_deck reports non-finite numbers first, by key: _nonfinite_problems)
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )


_THEORY_NAME_DOC = "Theory name; selects which couplings are allowed."


class _TheoryBase(_Section):
    """Base of the generated theory sections (one per registered theory descriptor)."""

    @property
    def descriptor(self) -> TheoryDescriptor:
        """The theory's facts (kernels/theories)."""
        return theory_descriptor(self.name)  # type: ignore[attr-defined]

    @property
    def couplings(self) -> dict[str, Any]:
        """The couplings by deck key (``lambda``, not ``lam``)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"name"})

    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the theory class."""
        return self.descriptor.constructor_kwargs(self.couplings)


def _coupling_field(c: Coupling) -> tuple[Any, Any]:
    """(annotation, Field) of one coupling for pydantic."""
    if c.choices:
        ann: Any = Literal[c.choices]  # type: ignore[valid-type]
    elif c.kind is list:
        item: Any = float
        if c.gt is not None or c.ge is not None:
            item = Annotated[float, Field(gt=c.gt, ge=c.ge)]
        ann = list[item]
    else:
        ann = c.kind
    bounds = {} if c.kind is list else {"gt": c.gt, "ge": c.ge}
    extra = {"alias": c.key} if c.argument != c.key else {}
    default = c.default
    if isinstance(default, list):
        value = list(default)
        return ann, Field(default_factory=lambda: list(value), description=c.description, **extra)
    return ann, Field(default, description=c.description, **bounds, **extra)


def _theory_section(desc: TheoryDescriptor) -> type[_TheoryBase]:
    fields: dict[str, Any] = {
        "name": (Literal[desc.name], Field(description=_THEORY_NAME_DOC))  # type: ignore[valid-type]
    }
    for c in desc.couplings:
        fields[c.argument] = _coupling_field(c)
    model = create_model(  # type: ignore[call-overload]
        f"{desc.name.capitalize()}Theory", __base__=_TheoryBase, **fields
    )
    model.__doc__ = desc.summary
    return model


#: one deck section per registered theory (kernels/theories), discriminated by ``name``
THEORY_SECTIONS = {name: _theory_section(d) for name, d in THEORY_REGISTRY.items()}
TheorySection = Annotated[
    Union[tuple(THEORY_SECTIONS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="name"),
]


class LatticeSection(_Section):
    """The global lattice."""

    shape: list[Annotated[int, Field(ge=2)]] = Field(
        min_length=1,
        description="Global extents [L_0, ..., L_{d-1}], lattice axis mu = direction mu "
        "(4D: x, y, z, t; the last axis is time). 2 entries for phi4 and u1, 4 for su3.",
    )


class ParallelSection(_Section):
    """How the lattice and the chains are spread over MPI ranks and devices."""

    grid: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        description="Process grid (ranks per lattice axis) of one replica group; entries 0 "
        "are filled in as by MPI_Dims_create. null: chosen automatically. Each entry must "
        "divide its lattice extent.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="Independent replica groups (Markov chains); the world is split into "
        "`replicas` groups of size/replicas ranks, each holding the whole lattice.",
    )
    device: Literal["cpu", "cuda", "xpu", "mps"] = Field(
        default="cpu",
        description="torch device type: cpu, cuda (NVIDIA and AMD ROCm builds), xpu (Intel), "
        "mps (float32 only: needs `dtype: float32`). Each rank uses the device its local rank "
        "is bound to (see the job scripts).",
    )
    dtype: Literal["float64", "float32"] = Field(
        default="float64",
        description="Real precision of fields (complex128 / complex64 for SU(3)). HMC needs "
        "float64 for reversibility.",
    )
    kernels: Literal["eager", "soa", "compiled", "numba", "vnode"] | None = Field(
        default=None,
        description="Gauge-kernel backend (kernels/backends): eager (reference), soa, compiled "
        "(torch.compile), numba (needs the `fast` extra), vnode (numba plus virtual-node SU(3) "
        "kernels on 4D lattices with even local extents, split axes through ghost planes; "
        "links kept in its layout through each HMC trajectory). null: "
        "$TRIVHMC_KERNELS, else eager. All give the same results to rounding; bit-identical "
        "records on every process grid need eager.",
    )
    overlap: bool | None = Field(
        default=None,
        description="SU(3) Wilson action on the `eager` kernel backend: compute the interior "
        "staples while the halo faces travel (parallel.halo_begin/halo_end). Same results to "
        "rounding, bit-identical on every process grid; improved actions and other theories "
        "ignore it, and so do the fused backends (their force is faster; `vnode`'s resident "
        "MD layout overlaps its own face exchange, `TRIVHMC_VNODE_OVERLAP`). null: "
        "$TRIVHMC_OVERLAP, else off.",
    )
    gpu_aware_mpi: bool | None = Field(
        default=None,
        description="Pass device buffers to MPI directly. null: follow the environment "
        "variable TRIVHMC_GPU_AWARE_MPI (set by the job scripts).",
    )


class FlowRef(_Section):
    """A trained flow model used by trivialized HMC / flow Metropolis."""

    model: str = Field(
        min_length=1,
        description="Model registry reference (name or name@version) or a path to a saved "
        "model file (relative to the deck's directory).",
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected SHA-256 of the model; the run refuses a model that differs.",
    )
    registry: str | None = Field(
        default=None,
        min_length=1,
        description="Model registry directory (relative to the deck's directory); null: "
        "$TRIVHMC_MODELS, else ./models next to the deck.",
    )
    checkpoint_layers: bool | None = Field(
        default=None,
        description="Recompute each flow layer's activations in the backward pass of the "
        "trivialized force instead of storing them (per-layer activation checkpointing: "
        "less memory, one more flow forward per force; docs/performance.md). null: the "
        "model's own setting.",
    )


class LevelSection(_Section):
    """One time scale of a nested integrator (Sexton-Weingarten): the action terms whose
    force kicks on it, its step count and scheme."""

    terms: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="Action terms integrated on this level (the theory's term names, e.g. "
        "gauge, fermion, hasenbusch_0; logdet for trivialized HMC). Every term on exactly "
        "one level.",
    )
    steps: int = Field(
        ge=1,
        description="Steps per trajectory on the outermost level; steps per drift of the "
        "level above on inner levels.",
    )
    integrator: Literal["leapfrog", "omelyan", "forest_ruth"] | None = Field(
        default=None, description="Scheme of this level; null: sampler.integrator."
    )


class SamplerSection(_Section):
    """The Markov chain: HMC on the original or the flow-transformed (trivialized) action."""

    name: Literal["hmc", "trivialized_hmc", "flow_metropolis", "l2hmc"] = Field(
        default="hmc",
        description="hmc; trivialized_hmc (HMC on S(F(V)) - log det J_F, needs `flow`); "
        "flow_metropolis (independence Metropolis with flow proposals, needs `flow`); "
        "l2hmc (learned generalized leapfrog, needs `model`; docs/l2hmc.md).",
    )
    integrator: Literal["leapfrog", "omelyan"] = Field(
        default="omelyan",
        description="Molecular-dynamics integrator: leapfrog or Omelyan 2MN (lambda = 0.1931833).",
    )
    steps: int = Field(default=10, ge=1, description="Integration steps per trajectory.")
    trajectory_length: float = Field(
        default=1.0,
        gt=0,
        description="Trajectory length tau; the step size is tau / steps.",
    )
    target_acceptance: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="If set, the step size is tuned towards this acceptance during "
        "thermalization only (production uses the tuned value, stored in checkpoints).",
    )
    flow: FlowRef | None = Field(
        default=None, description="Trained flow; required by trivialized_hmc, flow_metropolis."
    )
    levels: list[LevelSection] | None = Field(
        default=None,
        description="Nested time scales, outermost first (expensive, small forces outside, "
        "e.g. [{terms: [fermion], steps: 8}, {terms: [gauge], steps: 4}]); null: one level "
        "with the whole force and `steps` steps. With levels, levels[0].steps replaces "
        "`steps`. trivialized_hmc: the terms are the theory's plus `logdet` (each pulled back "
        "through the flow), or the NTHMC split `flow_correction` (outer) and `<term>_plain` "
        "(that term's plain force at V, inner; e.g. [{terms: [flow_correction], steps: 4}, "
        "{terms: [gauge_plain], steps: 3}]).",
    )
    # --- l2hmc (docs/l2hmc.md)
    model: str | None = Field(
        default=None,
        min_length=1,
        description="l2hmc only: registry reference (name or name@hash) of a model trained "
        "with train.objective: l2hmc (registry: train.registry, else $TRIVHMC_MODELS, else "
        "./models next to the deck).",
    )
    leapfrog_layers: int | None = Field(
        default=None,
        ge=1,
        description="l2hmc only: expected number of leapfrog layers of the model (checked).",
    )

    @property
    def outer_steps(self) -> int:
        """Steps per trajectory of the outermost level."""
        return self.levels[0].steps if self.levels else self.steps

    @property
    def step_size(self) -> float:
        """Outer step size ``trajectory_length / outer_steps``."""
        return self.trajectory_length / self.outer_steps


class RunSection(_Section):
    """Length of the run, seeds, measurements and checkpoints."""

    seed: int = Field(
        ge=0,
        le=2**64 - 1,
        description="Seed of the counter-based RNG (required). Every random number is a "
        "function of (seed, purpose, counter, global site, chain), so results do not depend "
        "on the process grid.",
    )
    thermalization: int = Field(
        default=100,
        ge=0,
        description="Trajectories before production; not measured into the ensemble, "
        "used for step-size tuning.",
    )
    trajectories: int = Field(
        ge=1, description="Production trajectories after thermalization (required)."
    )
    chains: int = Field(
        default=1,
        ge=1,
        description="Independent chains per replica group, simulated as one batch.",
    )
    measure_every: int = Field(
        default=1, ge=1, description="Measure observables every N production trajectories."
    )
    save_every: int = Field(
        default=100,
        ge=0,
        description="Save a configuration every N production trajectories (0: never).",
    )
    checkpoint_every: int = Field(
        default=50, ge=1, description="Write a checkpoint every N trajectories."
    )
    start: str = Field(
        default="hot",
        min_length=1,
        description="hot (random), cold (ordered) or a path to a configuration file "
        "(ILDG, NERSC or HDF5; relative to the deck's directory).",
    )
    check_reversibility: int = Field(
        default=0,
        ge=0,
        description="Run the reversibility check (forward, flip momenta, back) every N "
        "trajectories (0: never).",
    )
    max_runtime: float | None = Field(
        default=None,
        gt=0,
        description="Wall-clock seconds after which the run writes a checkpoint and stops "
        "cleanly (exit 0) so that a chained job can resume it; null: no limit. The job "
        "scripts set it from the wall time.",
    )

    @property
    def total_trajectories(self) -> int:
        """Thermalization plus production trajectories."""
        return self.thermalization + self.trajectories


class OutputSection(_Section):
    """Where and how the ensemble is written."""

    directory: str = Field(
        min_length=1,
        description="Run directory (required; relative to the deck's directory): ensemble "
        "files, records.jsonl, checkpoints, progress.json.",
    )
    formats: list[Literal["hdf5", "ildg", "nersc"]] = Field(
        default_factory=lambda: ["hdf5"],
        description="Configuration formats: hdf5 (every theory); ildg and nersc (su3 only).",
    )
    ildg_precision: Literal[32, 64] = Field(
        default=64, description="Floating-point bits of ILDG binary data: 32 or 64."
    )
    ildg_lfn: str | None = Field(
        default=None,
        description="Logical file name prefix for the ildg-data-lfn record; the trajectory "
        "number is appended. null: the file name.",
    )
    progress: bool = Field(default=True, description="Show a progress bar on rank 0.")


#: flow architectures (builders in kernels/flows) and the theories they act on
ARCHITECTURES = _architectures()


class ForceNormSection(_Section):
    """Settings of ``train.loss: force_norm`` (kernels/flows/force_norm.py, docs/nthmc.md)."""

    objective: Literal["force_p", "force_linf"] = Field(
        default="force_p",
        description="force_p: mean |F~|^power; force_linf: log-mean-exp soft maximum of |F~|.",
    )
    power: float = Field(default=2.0, gt=0, description="Exponent p of force_p.")
    kappa: float = Field(default=2.0, gt=0, description="Sharpness of the soft maximum.")
    linf_weight: float = Field(default=0.0, ge=0, description="force_p: + weight * soft max.")
    validate_every: int = Field(default=10, ge=0, description="Validate every N steps.")
    patience: int = Field(
        default=0, ge=0, description="Stop after N validations without improvement (0: never)."
    )
    min_delta: float = Field(default=0.0, ge=0, description="Smallest improvement that counts.")
    fermion_force: bool = Field(
        default=True,
        description="schwinger: the objective acts on the full trivialized force (gauge + "
        "pseudofermion + log-det; pseudofermions redrawn per step at each training "
        "configuration); false: gauge + log-det only (docs/nthmc.md). Other theories: unused.",
    )


class QJumpSection(_Section):
    """Settings of ``train.loss: qjump`` (kernels/flows/nthmc_qjump.py, docs/nthmc.md)."""

    n_md: int = Field(default=4, ge=1, description="Leapfrog steps of the short trajectory.")
    step_size: float = Field(default=0.25, gt=0, description="Its step size.")
    q_scale: float = Field(default=1.0, gt=0, description="Scale q0 of the charge jump.")
    reciprocal_weight: float = Field(
        default=1.0, ge=0, description="Weight lambda of the reciprocal term q0^2/(A dQ^2)."
    )
    validate_every: int = Field(default=10, ge=0, description="Validate every N steps.")
    patience: int = Field(
        default=0, ge=0, description="Stop after N validations without improvement (0: never)."
    )


class TrainSection(_Section):
    """Training of a flow model by ``trivhmc train deck.yaml`` (docs/flows.md)."""

    objective: Literal["flow", "l2hmc"] = Field(
        default="flow",
        description="flow: train a flow (`architecture`, `loss`); l2hmc: train an L2HMC "
        "sampler (options: n_layers, hidden, kernel_size, activation, step_size, init_scale, "
        "dtype; loss settings in `l2hmc`; a schwinger deck trains a U(1) model on the "
        "quenched theory at its beta; docs/l2hmc.md).",
    )
    architecture: Literal[tuple(ARCHITECTURES)] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Flow architecture (objective flow, required); must act on the deck's "
        "theory (phi4_*, u1_*, su3_*, schwinger_*). u1_sweep (2D) starts from the fitted "
        "single-plaquette map before training.",
    )
    l2hmc: dict[str, Any] | None = Field(
        default=None,
        description="objective l2hmc: loss and annealing (charge_weight, plaquette_weight, "
        "field_weight, loss_form: esjd|levy, levy_scale, gamma_start; the action is scaled by "
        "gamma from gamma_start to 1 over anneal_steps).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the architecture's builder (e.g. n_layers, hidden).",
    )
    loss: Literal["reverse_kl", "force_matching", "force_norm", "qjump"] = Field(
        default="reverse_kl",
        description="reverse_kl: self-training from the prior; force_matching: make the "
        "trivialized force small on the configurations of `configurations`; force_norm "
        "(NTHMC, docs/nthmc.md): |F~|^p or soft-max force objective on `configurations`, "
        "settings in `force_norm`, held-out `validation`; qjump (NTHMC, 2D u1): "
        "acceptance-weighted topological-charge jump of short trivialized trajectories, "
        "settings in `qjump`.",
    )
    configurations: list[str] = Field(
        default_factory=list,
        description="HDF5 ensemble files (relative to the deck) for force_matching/force_norm.",
    )
    # ---- NTHMC (issue 15): loss force_norm
    validation: list[str] = Field(
        default_factory=list,
        description="force_norm (and force_matching with target_beta): held-out "
        "configuration files for validation/early stopping.",
    )
    target_beta: float | None = Field(
        default=None,
        gt=0,
        description="force_matching/force_norm: match the trivialized force to the plain force "
        "of the deck's theory at this (coarser) beta (nthmc's SU(3) recipe, docs/nthmc.md); "
        "settings, validation and early stopping as for force_norm. null: make it small.",
    )
    force_norm: ForceNormSection = Field(
        default_factory=lambda: ForceNormSection(),
        description="force_norm settings (objective force_p|force_linf, power, kappa, ...).",
    )
    qjump: QJumpSection = Field(
        default_factory=lambda: QJumpSection(),
        description="qjump settings (n_md, step_size, q_scale, reciprocal_weight, ...).",
    )
    steps: int = Field(default=500, ge=0, description="Optimizer steps.")
    batch: int = Field(default=64, ge=1, description="Samples (chains) per step and replica.")
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine", description="Learning-rate schedule over the steps."
    )
    grad_clip: float | None = Field(default=None, gt=0, description="Gradient-norm clip.")
    anneal_steps: int = Field(
        default=0,
        ge=0,
        description="Anneal beta linearly from anneal_start over these steps (reverse_kl only).",
    )
    anneal_start: float = Field(default=0.0, ge=0, description="Starting beta of annealing.")
    model_name: str = Field(
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="Registry name the trained model is stored under (required; letters, "
        "digits, `_`, `-` and `.`, not first; not `index.json`, the registry's own file).",
    )
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:+-]+$")]] = Field(
        default_factory=list,
        description="Tags stored in the model card, for `trivhmc models list --tag`.",
    )
    tracking: str | None = Field(
        default=None,
        min_length=1,
        description="MLflow tracking URI (the `tracking` extra; docs/registry.md); null: "
        "$MLFLOW_TRACKING_URI if set, else no tracking.",
    )
    registry: str | None = Field(
        default=None,
        min_length=1,
        description="Model registry directory (relative to the deck's directory); null: "
        "$TRIVHMC_MODELS, else ./models next to the deck.",
    )


# ---------------------------------------------------------------- measure (issue 14)
def _measure_problems(deck: Deck) -> list[Problem]:
    """The measure section against the theory and the lattice."""
    m = deck.measure
    if m is None:
        return []
    out = []
    su3_only = {"flow": m.flow, "wilson_loops": m.wilson_loops, "polyakov": m.polyakov or None}
    for key, value in su3_only.items():
        if value is not None and deck.theory.name != "su3":
            out.append(Problem(("measure", key), f"{key} needs theory su3, not {deck.theory.name}"))
    if m.flow is not None:
        f = m.flow
        for i, tq in enumerate(f.charge_times):
            k = round(tq / f.eps)
            if not 0 <= tq <= f.t_max or abs(k * f.eps - tq) > 1e-9 * max(1.0, tq):
                out.append(
                    Problem(
                        ("measure", "flow", "charge_times", i),
                        f"{tq} is not a multiple of eps = {f.eps} in [0, t_max = {f.t_max}]",
                    )
                )
        k = round(f.t_max / f.eps)
        if k < 3 or abs(k * f.eps - f.t_max) > 1e-9 * max(1.0, f.t_max):
            out.append(
                Problem(
                    ("measure", "flow", "t_max"),
                    f"t_max = {f.t_max} must be a multiple of eps = {f.eps} (at least 3 steps)",
                )
            )
    w = m.wilson_loops
    if w is not None and deck.theory.name == "su3":
        shape = deck.lattice.shape
        if w.t_max > shape[-1] or any(w.r_max > n for n in shape[:-1]):
            out.append(
                Problem(
                    ("measure", "wilson_loops"),
                    f"loops up to {w.r_max} x {w.t_max} do not fit the lattice {shape}",
                )
            )
    if m.correlators and deck.theory.name in ("su3", "u1"):  # phi4 (and registered ones)
        out.append(
            Problem(("measure", "correlators"), f"theory {deck.theory.name} has no correlators")
        )
    return out


class FlowMeasurement(_Section):
    """Wilson (gradient) flow of SU(3) fields: t0, w0, histories, clover Q (docs/measure.md)."""

    t_max: float = Field(gt=0, description="Flow time to flow to (lattice units, required).")
    eps: float = Field(default=0.02, gt=0, description="Flow step (Luscher's RK3).")
    charge_times: list[float] = Field(
        default_factory=list,
        description="Flow times (multiples of eps, <= t_max) at which the clover "
        "topological charge Q is measured (columns Q@t=T).",
    )
    scales: bool = Field(
        default=True,
        description="Determine t0 (t^2 E = 0.3) and w0 (t d/dt t^2 E = 0.3); NaN with a "
        "warning when t_max is too short.",
    )
    history: bool = Field(
        default=True, description="Store the t^2 E(t) and t d/dt t^2 E(t) histories."
    )


class WilsonLoopMeasurement(_Section):
    """Rectangular Wilson loops W(R, T), R x T up to r_max x t_max (static potential)."""

    r_max: int = Field(default=2, ge=1, description="Largest spatial extent R.")
    t_max: int = Field(default=2, ge=1, description="Largest temporal extent T.")


class MeasureSection(_Section):
    """Measurements beyond the theory's own observables (``trivhmc measure``, docs/measure.md).
    On the fly every ``every`` production trajectories, or offline over saved
    configurations."""

    every: int = Field(
        default=0,
        ge=0,
        description="Measure on the fly every N production trajectories (0: only offline "
        "with `trivhmc measure`).",
    )
    flow: FlowMeasurement | None = Field(default=None, description="Wilson flow (su3).")
    wilson_loops: WilsonLoopMeasurement | None = Field(
        default=None, description="Wilson loops W(R, T) (su3)."
    )
    polyakov: bool = Field(default=False, description="Polyakov loop (su3).")
    correlators: bool = Field(
        default=False,
        description="The theory's correlators (phi4: two_point; others: see docs/measure.md).",
    )


class Deck(_Section):
    """A validated input deck. Build it with :func:`load_deck` or :func:`loads_deck`."""

    theory: TheorySection = Field(description="The lattice theory and its couplings.")
    lattice: LatticeSection
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    run: RunSection
    output: OutputSection
    train: TrainSection | None = Field(
        default=None, description="Flow training settings (for `trivhmc train`)."
    )
    measure: MeasureSection | None = Field(
        default=None, description="Extra measurements (`trivhmc measure`, docs/measure.md)."
    )

    _source: Path | None = PrivateAttr(default=None)
    _base_dir: Path | None = PrivateAttr(default=None)
    _text: str = PrivateAttr(default="")
    _overrides: list[str] = PrivateAttr(default_factory=list)

    # ------------------------------------------------------------------ cross checks
    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Deck:
        problems = [
            *self._lattice_problems(),
            *self._device_problems(),
            *self._train_problems(),
            *self._sampler_problems(),
            *self._output_problems(),
            *self._start_problems((info.context or {}).get("base_dir")),
            *_measure_problems(self),  # measure (issue 14)
        ]
        if problems:
            raise DeckError(problems)
        return self

    def _lattice_problems(self) -> list[Problem]:
        problems = []
        shape = self.lattice.shape
        need = THEORY_DIMS[self.theory.name]
        if len(shape) != need:
            problems.append(
                Problem(
                    ("lattice", "shape"),
                    f"theory {self.theory.name} needs a {need}D lattice, got {len(shape)} "
                    f"dimensions {shape}",
                )
            )
        grid = self.parallel.grid
        if grid is None:
            return problems
        if len(grid) != len(shape):
            problems.append(
                Problem(
                    ("parallel", "grid"),
                    f"process grid {grid} has {len(grid)} entries but the lattice "
                    f"{shape} has {len(shape)} dimensions",
                )
            )
            return problems
        for mu, (g, n) in enumerate(zip(grid, shape)):
            if g > 0 and n % g:
                problems.append(
                    Problem(
                        ("parallel", "grid", mu),
                        f"{g} ranks do not divide the lattice extent {n} of axis {mu}",
                    )
                )
        return problems

    def _device_problems(self) -> list[Problem]:
        p = self.parallel
        if p.device == "mps" and p.dtype == "float64":  # torch's MPS backend has no float64
            msg = (
                "mps has no float64 (torch's MPS backend), and parallel.dtype is float64 (what "
                "HMC needs for reversibility): use cpu, or set parallel.dtype: float32"
            )
            return [Problem(("parallel", "device"), msg)]
        return []

    def _train_problems(self) -> list[Problem]:
        t = self.train
        if t is None:
            return []
        problems = []
        from .registry import INDEX_NAME, RESERVED_NAMES

        if t.model_name.lower() in RESERVED_NAMES:  # as app.registry compares them
            problems.append(
                Problem(
                    ("train", "model_name"),
                    f"invalid model name {t.model_name!r}: reserved for the registry's own "
                    f"{INDEX_NAME}; choose another name",
                )
            )
        if t.objective == "l2hmc":
            if self.theory.name not in ("u1", "phi4", "su3", "schwinger"):
                msg = f"l2hmc training is for u1, schwinger, phi4 and su3, not {self.theory.name}"
                problems.append(Problem(("train", "objective"), msg))
            return problems
        if t.architecture is None:
            problems.append(Problem(("train", "architecture"), "objective flow needs one"))
            return problems
        if ARCHITECTURES[t.architecture][0] != self.theory.name:
            problems.append(
                Problem(
                    ("train", "architecture"),
                    f"architecture {t.architecture} acts on {ARCHITECTURES[t.architecture][0]}"
                    f", the deck's theory is {self.theory.name}",
                )
            )
        if t.loss in ("force_matching", "force_norm", "qjump") and not t.configurations:
            problems.append(Problem(("train", "configurations"), f"{t.loss} needs configurations"))
        if t.loss == "qjump" and (self.theory.name != "u1" or len(self.lattice.shape) != 2):
            msg = "qjump needs the 2D u1 theory (its topological charge)"
            problems.append(Problem(("train", "loss"), msg))
        if t.target_beta is not None:
            if t.loss not in ("force_matching", "force_norm"):
                msg = f"target_beta needs loss force_matching or force_norm, not {t.loss}"
                problems.append(Problem(("train", "target_beta"), msg))
            if "beta" not in self.theory.constructor_kwargs():
                msg = f"theory {self.theory.name} has no coupling beta"
                problems.append(Problem(("train", "target_beta"), msg))
        return problems

    def _sampler_problems(self) -> list[Problem]:
        s = self.sampler
        problems = []
        if s.name in FLOW_SAMPLERS and s.flow is None:
            problems.append(
                Problem(("sampler", "flow"), f"sampler {s.name} needs a flow: {{model: ...}}")
            )
        if s.name not in FLOW_SAMPLERS and s.flow is not None:
            problems.append(
                Problem(
                    ("sampler", "flow"),
                    f"sampler {s.name} does not use a flow; use trivialized_hmc or "
                    "flow_metropolis, or set flow: null",
                )
            )
        if (s.name == "l2hmc") != (s.model is not None):
            msg = "sampler l2hmc needs model: REF"
            if s.name != "l2hmc":
                msg = f"sampler {s.name} does not use an l2hmc model"
            problems.append(Problem(("sampler", "model"), msg))
        if s.levels and s.name == "l2hmc":
            problems.append(Problem(("sampler", "levels"), "l2hmc has its own learned layers"))
        if s.levels and "steps" in s.model_fields_set:
            problems.append(
                Problem(
                    ("sampler", "steps"),
                    "with sampler.levels the outer step count is levels[0].steps; "
                    "remove sampler.steps",
                )
            )
        if s.levels and s.name == "flow_metropolis":
            problems.append(
                Problem(("sampler", "levels"), "flow_metropolis has no molecular dynamics")
            )
        if s.target_acceptance is not None and self.run.thermalization == 0:
            problems.append(
                Problem(
                    ("sampler", "target_acceptance"),
                    "step-size tuning happens during thermalization, but run.thermalization is 0",
                )
            )
        return problems

    def _output_problems(self) -> list[Problem]:
        problems = []
        fmts = self.output.formats
        allowed = THEORY_REGISTRY[self.theory.name].file_formats
        for i, f in enumerate(fmts):
            if f in fmts[:i]:
                problems.append(Problem(("output", "formats", i), f"format {f} listed twice"))
            elif f not in allowed:
                problems.append(
                    Problem(
                        ("output", "formats", i),
                        f"{f} files hold SU(3) gauge fields; theory {self.theory.name} can "
                        f"be written as {', '.join(allowed)} only",
                    )
                )
        return problems

    def _start_problems(self, base: Any) -> list[Problem]:
        if self.run.start in ("hot", "cold"):
            return []
        p = Path(self.run.start)
        if base is not None and not p.is_absolute():
            p = Path(base) / p
        if p.is_file():
            return []
        return [
            Problem(
                ("run", "start"),
                f"expected hot, cold or an existing configuration file; {str(p)!r} "
                "does not exist" + _suggest(self.run.start, ["hot", "cold"]),
            )
        ]

    # ------------------------------------------------------------------ helpers
    @property
    def ndim(self) -> int:
        """Number of lattice dimensions."""
        return len(self.lattice.shape)

    @property
    def volume(self) -> int:
        """Number of lattice sites."""
        return math.prod(self.lattice.shape)

    @property
    def source(self) -> Path | None:
        """The deck file this deck was read from (None for a string)."""
        return self._source

    @property
    def text(self) -> str:
        """The deck text as read (before overrides); stored in ensembles."""
        return self._text

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` overrides applied on top of :attr:`text`."""
        return list(self._overrides)

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the deck are relative to."""
        return self._base_dir if self._base_dir is not None else Path.cwd()

    def resolve(self, path: str | Path) -> Path:
        """A path from the deck, made absolute relative to :attr:`base_dir`."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def output_dir(self) -> Path:
        """The run directory (``output.directory`` resolved against the deck's directory)."""
        return self.resolve(self.output.directory)

    @property
    def ranks_per_replica(self) -> int | None:
        """Ranks of one replica group if ``parallel.grid`` fixes it (no 0 entries)."""
        g = self.parallel.grid
        if g is None or 0 in g:
            return None
        return math.prod(g)

    def to_dict(self) -> dict[str, Any]:
        """The full deck with defaults filled in (deck key names, JSON/YAML-safe)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        """The deck as YAML (overrides applied), as stored in ensembles and checkpoints."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def physics(self) -> dict[str, Any]:
        """What defines the target distribution: theory with couplings and lattice shape.
        A resumed run must have the same value."""
        return {
            "theory": self.theory.model_dump(mode="json", by_alias=True),
            "lattice": list(self.lattice.shape),
        }


SECTIONS = ("theory", "lattice", "parallel", "sampler", "run", "output", "train", "measure")


# ---------------------------------------------------------------------------- schema walking
def _key_of(name: str, info: Any) -> str:
    return info.alias or name


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Deck key (alias) -> FieldInfo."""
    return {_key_of(n, f): f for n, f in model.model_fields.items()}


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin is Union or type(annotation).__name__ == "UnionType":
        return [t for a in typing.get_args(annotation) for t in _flatten(a)]
    return [annotation]


def _submodels(model: type[BaseModel], key: str) -> list[type[BaseModel]]:
    """Models a value of ``model.key`` can be (several for the theory union)."""
    field = _fields(model)[key]
    return [
        t for t in _flatten(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)
    ]


def _tag(model: type[BaseModel]) -> str | None:
    f = model.model_fields.get("name")
    if f is None or typing.get_origin(f.annotation) is not Literal:
        return None
    return typing.get_args(f.annotation)[0]


def _pick(models: list[type[BaseModel]], value: Any) -> type[BaseModel] | None:
    if len(models) == 1:
        return models[0]
    if isinstance(value, dict):
        for m in models:
            if _tag(m) is not None and value.get("name") == _tag(m):
                return m
    return None


def _allowed(models: list[type[BaseModel]], value: Any) -> tuple[type[BaseModel] | None, list]:
    m = _pick(models, value)
    if m is not None:
        return m, list(_fields(m))
    keys: list[str] = []
    for mm in models:
        keys += [k for k in _fields(mm) if k not in keys]
    return None, keys


def _unknown_key(path: KeyPath, key: Any, allowed: list[str], model: Any) -> Problem:
    section = "sampler" if path[:1] == ("sampler",) else "theory"  # the models with a name tag
    what = f" for {section} {_tag(model)}" if model is not None and _tag(model) else ""
    return Problem(
        path,
        f"unknown key {key!r}{what}{_suggest(str(key), allowed)} "
        f"(valid keys: {', '.join(sorted(allowed))})",
    )


def _check_keys(data: Any, models: list[type[BaseModel]], path: KeyPath) -> list[Problem]:
    """Unknown keys anywhere in ``data`` with nearest-name suggestions."""
    if not isinstance(data, dict):
        return []
    model, allowed = _allowed(models, data)
    problems = []
    for k, v in data.items():
        if not isinstance(k, str):
            problems.append(Problem(path + (str(k),), f"keys must be strings, got {k!r}"))
        elif k not in allowed:
            problems.append(_unknown_key(path + (k,), k, allowed, model))
        elif model is not None and _submodels(model, k):
            problems += _check_keys(v, _submodels(model, k), path + (k,))
    return problems


def _clean_loc(loc: Sequence[Any]) -> KeyPath:
    """Drop pydantic's union tags (``theory.u1.beta`` -> ``theory.beta``)."""
    out: list[Any] = []
    model: type[BaseModel] | None = Deck
    i = 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        if model is not None and isinstance(part, str) and part in _fields(model):
            subs = _submodels(model, part)
            tags = {_tag(m): m for m in subs}
            if len(subs) > 1 and i + 1 < len(loc) and loc[i + 1] in tags:
                model = tags[loc[i + 1]]
                i += 1
            else:
                model = subs[0] if len(subs) == 1 else None
        elif not isinstance(part, int):
            model = None
        i += 1
    return tuple(out)


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _from_pydantic(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        path = _clean_loc(e["loc"])
        kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
        if kind == "extra_forbidden":
            continue  # reported with suggestions by _check_keys
        if kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_not_found":
            msg = f"the key 'name' is missing (one of {ctx.get('expected_tags', '')})"
            path = path + ("name",)
        elif kind == "union_tag_invalid":
            choices = _quoted(str(ctx.get("expected_tags", "")))
            msg = f"unknown name {ctx.get('tag')!r}{_suggest(str(ctx.get('tag')), choices)}"
            msg += f" (valid: {', '.join(choices)})"
            path = path + ("name",)
        elif kind == "literal_error":
            expected = str(ctx.get("expected", ""))
            hint = _suggest(str(value), _quoted(expected)) if isinstance(value, str) else ""
            msg = f"invalid value {value!r}{hint} (expected {expected})"
        elif kind == "finite_number":
            msg = _NONFINITE.format(value=value)
        elif kind == "int_type" and isinstance(value, float) and value.is_integer():
            msg = (
                f"{e['msg']} (got {value!r}); write an integer without a decimal point or "
                f"exponent, e.g. {int(value)}"
            )
        elif isinstance(value, dict | list) and kind.endswith("_type"):
            msg = f"{e['msg']} (got a {'mapping' if isinstance(value, dict) else 'list'})"
        else:
            msg = f"{e['msg']} (got {value!r})"
        problems.append(Problem(path, msg))
    return problems


_NONFINITE = "must be a finite number (got {value!r})"


def _nonfinite_problems(data: Any, path: KeyPath = ()) -> list[Problem]:
    """Every non-finite number (``.inf``, ``.nan``, ``1e999``) anywhere in raw deck data,
    free-form mappings such as ``train.options`` included: none has a meaning in a deck."""
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(path, _NONFINITE.format(value=data))]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _nonfinite_problems(v, path + (str(k),))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _nonfinite_problems(v, path + (i,))]
    return []


# ---------------------------------------------------------------------------- YAML with lines
_FLOAT_TAG = "tag:yaml.org,2002:float"
#: YAML 1.2 core-schema floats (an exponent without a point or a sign: ``1e-10``, ``1E5``,
#: ``5e+3``), plus YAML 1.1's forms that PyYAML already reads (``1_000.5``, base 60). It
#: never matches an integer, so integers stay ``int``.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class DeckLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-10``, ``1E5`` and ``5e+3`` are floats
    (YAML 1.1, and so plain PyYAML, reads an exponent without a point or sign as a string).
    Used for deck files and ``--set`` values alike."""


DeckLoader.yaml_implicit_resolvers = {
    first: [(tag, _FLOAT_RE if tag == _FLOAT_TAG else rx) for tag, rx in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`DeckLoader` (YAML 1.2 floats)."""
    return yaml.load(text, Loader=DeckLoader)


def _yaml_error(exc: yaml.YAMLError, source: str) -> DeckError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    return DeckError([Problem((), f"YAML syntax error: {problem}", where)], source)


def parse_yaml(text: str, source: str = "<deck>") -> tuple[Any, dict[KeyPath, int]]:
    """Parse deck text: ``(data, lines)`` where ``lines`` maps key paths to 1-based lines
    (a key's own line for mappings, an item's line for sequences). Duplicate keys are an
    error (plain PyYAML would silently keep the last one)."""
    try:
        node = yaml.compose(text, Loader=DeckLoader)
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    lines: dict[KeyPath, int] = {(): 1}
    problems = []

    def walk(n: yaml.Node, path: KeyPath) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                line = k.start_mark.line + 1
                if key in seen:
                    problems.append(
                        Problem(
                            path + (key,),
                            f"duplicate key (first given on line {seen[key]})",
                            f"line {line}",
                        )
                    )
                seen[key] = line
                lines[path + (key,)] = line
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if node is not None:
        lines[()] = node.start_mark.line + 1
        walk(node, ())
    if problems:
        raise DeckError(problems, source)
    return data, lines


# ---------------------------------------------------------------------------- overrides
def apply_override(data: dict[str, Any], spec: str, source: str = "<deck>") -> KeyPath:
    """Apply ``KEY.PATH=VALUE`` (VALUE parsed as YAML) to raw deck data in place.

    Every path segment must be a valid key of the schema at that level (nearest-name
    suggestion otherwise). Missing sections are created. Returns the key path.
    """
    where = f"--set {spec}"
    if "=" not in spec:
        raise DeckError([Problem((), "expected KEY.PATH=VALUE, e.g. run.seed=7", where)], source)
    key, raw = spec.split("=", 1)
    parts = tuple(p.strip() for p in key.strip().split("."))
    if not all(parts):
        raise DeckError([Problem((), f"bad key path {key!r}", where)], source)
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as exc:
        raise DeckError(
            [Problem(parts, f"value is not valid YAML: {exc}", where)], source
        ) from None
    models: list[type[BaseModel]] = [Deck]
    node = data
    for i, part in enumerate(parts):
        if not models:
            raise DeckError(
                [Problem(parts[:i], "is a value, not a section; cannot set keys below it", where)],
                source,
            )
        model, allowed = _allowed(models, node)
        if part not in allowed:
            raise DeckError(
                [_unknown_key(parts[: i + 1], part, allowed, model)._replace(where=where)], source
            )
        if i == len(parts) - 1:
            node[part] = value
            break
        sub = node.get(part)
        if not isinstance(sub, dict):
            sub = {}
            node[part] = sub
        if model is None:  # theory with an unknown name: keys of any theory
            model = next(m for m in models if part in _fields(m))
        models = _submodels(model, part)
        node = sub
    return parts


# ---------------------------------------------------------------------------- loading
def _locate(problem: Problem, lines: dict[KeyPath, int], overridden: dict[KeyPath, str]) -> Problem:
    if problem.where:
        return problem
    path = problem.path
    for opath, spec in overridden.items():
        if path[: len(opath)] == opath:
            return problem._replace(where=f"--set {spec}")
    n = next(n for n in range(len(path), -1, -1) if path[:n] in lines or n == 0)
    # an override that reaches deeper into this path than any deck line (e.g. --set
    # sampler.name=... on a deck without a sampler section) is the cause, not line 1
    best = max(overridden, key=lambda o: _common(o, path), default=None)
    if best is not None and _common(best, path) > n:
        return problem._replace(where=f"--set {overridden[best]}")
    if path[:n] in lines:
        return problem._replace(where=f"line {lines[path[:n]]}")
    return problem


def _common(a: KeyPath, b: KeyPath) -> int:
    """Length of the common prefix of two key paths."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def loads_deck(
    text: str,
    source: str = "<deck>",
    overrides: Sequence[str] = (),
    base_dir: str | Path | None = None,
) -> Deck:
    """Validate deck ``text``; :class:`DeckError` lists every problem with path and line."""
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeckError([Problem((), "a deck must be a mapping of sections", "line 1")], source)
    overridden: dict[KeyPath, str] = {}
    for spec in overrides:
        overridden[apply_override(data, spec, source)] = spec
    problems = _check_keys(data, [Deck], ()) + _nonfinite_problems(data)
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd()}
    deck = None
    try:
        deck = Deck.model_validate(data, context=context)
    except ValidationError as exc:
        problems += _from_pydantic(exc)
    except DeckError as exc:  # cross-section checks
        problems += exc.problems
    if problems or deck is None:
        problems = list(dict.fromkeys(problems))  # a non-finite number is found twice
        located = [_locate(p, lines, overridden) for p in problems]
        located.sort(key=lambda p: int(p.where[5:]) if p.where and p.where[:5] == "line " else 0)
        raise DeckError(located, source)
    deck._base_dir = Path(base_dir).resolve() if base_dir is not None else None
    deck._text = text
    deck._overrides = list(overrides)
    return deck


def load_deck(path: str | Path, overrides: Sequence[str] = ()) -> Deck:
    """Read and validate the deck file ``path`` with ``--set`` style ``overrides``."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read deck {path}: {exc}") from None
    deck = loads_deck(text, source=str(path), overrides=overrides, base_dir=path.parent)
    deck._source = path.resolve()
    return deck
