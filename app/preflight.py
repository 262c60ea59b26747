"""Checks run before a command touches MPI, devices or files, so that a deck which cannot run
here fails at once with one message that says what would work (docs/errors.md).

Every check depends only on the deck, the rank count and files every rank can read, so under
MPI all ranks reach the same verdict (the errors are collective, see :mod:`app.errors`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from app.deck import Deck
from app.errors import DeviceError, LayoutError, MissingModelError


# ---------------------------------------------------------------------- layout
@functools.cache
def _grid_rank_counts(shape: tuple[int, ...]) -> frozenset[int]:
    """Every rank count per replica that some process grid splits ``shape`` over: the
    products ``d_0 d_1 ...`` of a divisor ``d_mu`` of each extent (empty for a shape that
    :func:`parallel.grid.choose_grid` refuses). Every grid ``choose_grid`` returns divides
    the lattice axis by axis, so its rank count is one of these; with a free grid every one
    of them fits."""
    if not shape or any(s < 1 for s in shape):
        return frozenset()
    counts = {1}
    for s in shape:
        small = [d for d in range(1, math.isqrt(s) + 1) if s % d == 0]
        divisors = set(small) | {s // d for d in small}
        counts = {c * d for c in counts for d in divisors}
    return frozenset(counts)


def _choose_grid(shape: Sequence[int], ranks: int, grid: Sequence[int] | None) -> tuple[int, ...]:
    """:func:`parallel.grid.choose_grid`, answering at once (with its message) when no grid
    of ``ranks`` ranks can divide the lattice: its search over every factorisation of a
    large rank count takes seconds."""
    from parallel.grid import GridError, choose_grid

    shape = tuple(int(s) for s in shape)
    counts = _grid_rank_counts(shape)
    if grid is None and counts and ranks >= 1 and ranks not in counts:
        raise GridError(
            f"no process grid of {ranks} ranks divides lattice {list(shape)}; "
            "use a rank count whose factors divide the lattice extents"
        )
    return choose_grid(shape, ranks, grid)


def _fits(shape: Sequence[int], ranks: int, replicas: int, grid: Sequence[int] | None) -> bool:
    from parallel.grid import GridError, choose_grid

    if ranks < 1 or ranks % replicas:
        return False
    shape = tuple(int(s) for s in shape)
    if ranks // replicas not in _grid_rank_counts(shape):
        return False
    if grid is None:  # choose_grid finds a divisor grid for every such count
        return True
    try:
        choose_grid(shape, ranks // replicas, grid)
    except GridError:
        return False
    return True


def fitting_rank_counts(
    shape: Sequence[int],
    ranks: int,
    replicas: int = 1,
    grid: Sequence[int] | None = None,
    step: int = 1,
) -> list[int]:
    """The valid rank counts nearest to ``ranks`` (the closest below and above), in units of
    ``step`` ranks (e.g. ranks per node); empty if none exists below ``4 (ranks + step)``.

    Only ``replicas x`` a product of divisors of the extents can fit
    (:func:`_grid_rank_counts`), so those candidates are tried, nearest first, instead of
    every count: the answer is the same as a scan of every multiple of ``step``, in
    milliseconds also for ``ranks`` in the hundreds of thousands."""
    shape = tuple(int(s) for s in shape)
    if replicas < 1 or step < 1:
        return []
    volume = math.prod(shape)
    limit = min(volume * replicas, 4 * (ranks + step))  # "nearest": look close by only
    candidates = sorted(
        c * replicas for c in _grid_rank_counts(shape) if (c * replicas) % step == 0
    )
    below = next(
        (n for n in reversed(candidates) if n < ranks and _fits(shape, n, replicas, grid)),
        None,
    )
    above = None
    for n in candidates:
        if n > limit:
            break
        if n > ranks and _fits(shape, n, replicas, grid):
            above = n
            break
    return [n for n in (below, above) if n is not None]


def check_layout(deck: Deck, ranks: int) -> tuple[int, ...]:
    """The process grid of ``deck`` on ``ranks`` ranks; :class:`LayoutError` naming the
    problem, the values and the nearest rank counts that work if it does not fit."""
    from parallel.grid import GridError

    shape = deck.lattice.shape
    reps = deck.parallel.replicas
    grid = deck.parallel.grid
    lattice = "x".join(map(str, shape))
    try:
        if ranks < 1 or ranks % reps:
            raise GridError(
                f"{ranks} rank(s) cannot be split into parallel.replicas = {reps} replica "
                "groups of equal size"
            )
        return _choose_grid(shape, ranks // reps, grid)
    except GridError as exc:
        problem = str(exc).replace(
            "; use a rank count whose factors divide the lattice extents", ""
        )
    hints = []
    near = fitting_rank_counts(shape, ranks, reps, grid)
    if near:
        hints.append("run on " + " or ".join(map(str, near)) + " ranks")
    if grid is not None and ranks % reps == 0 and _fits(shape, ranks, reps, None):
        hints.append(f"remove parallel.grid ({list(grid)}) to choose the grid automatically")
    if reps > 1 and ranks >= 1 and _fits(shape, ranks, 1, grid):
        hints.append("set parallel.replicas: 1")
    hint = "; ".join(hints) if hints else "change the lattice or the process grid"
    raise LayoutError(f"the {lattice} lattice does not fit on {ranks} rank(s): {problem}; {hint}")


# ---------------------------------------------------------------------- device
def check_device(device: str) -> None:
    """:class:`DeviceError` if torch cannot use ``device`` (cpu, cuda, xpu, mps) here."""
    import torch

    if device == "cpu":
        return
    build = torch.__version__
    where = f"parallel.device: {device}, but"
    if device == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise DeviceError(
                f"{where} this torch ({build}) was built without CUDA or ROCm; install a "
                "CUDA or ROCm build of torch (https://pytorch.org/get-started/locally/, e.g. "
                "`pip install torch --index-url https://download.pytorch.org/whl/cu124`) or "
                "set parallel.device: cpu"
            )
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{where} torch ({build}) sees no GPU on this node; check the job's GPU "
                "request and CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES, or set "
                "parallel.device: cpu"
            )
    elif device == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise DeviceError(
                f"{where} this torch ({build}) has no usable Intel GPU (torch.xpu); on Aurora "
                "load the frameworks module or install an XPU build of torch "
                "(https://pytorch.org/get-started/locally/), or set parallel.device: cpu"
            )
    elif device == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"{where} this torch ({build}) has no Apple GPU backend (MPS); set "
                "parallel.device: cpu"
            )


# ---------------------------------------------------------------------- models
FLOW_SAMPLERS = ("trivialized_hmc", "flow_metropolis")


class _ModelRef(NamedTuple):
    """The registry model a deck's sampler loads: the deck key that names it, the reference
    (``name``, ``name@hash`` or, for a flow, a model file), the registry directory, the
    ``train.objective`` that makes such a model and what chooses the registry."""

    key: str
    ref: str
    root: Path
    objective: str
    registry_keys: str


def _model_ref(deck: Deck) -> _ModelRef | None:
    """The model the deck's sampler loads, found as the run finds it (a flow:
    :func:`app.flow_samplers.load_flow`; an L2HMC model: :func:`app.l2hmc.build_l2hmc_sampler`,
    whose registry is ``train.registry``), or None for a sampler without a model."""
    from app.flow_samplers import registry_root

    s = deck.sampler
    if s.name in FLOW_SAMPLERS and s.flow is not None:
        root = registry_root(deck, s.flow.registry)
        keys = "sampler.flow.registry / $TRIVHMC_MODELS"
        return _ModelRef("sampler.flow.model", s.flow.model, root, "flow", keys)
    if s.name == "l2hmc" and s.model is not None:
        root = registry_root(deck, deck.train.registry if deck.train is not None else None)
        keys = "train.registry / $TRIVHMC_MODELS" if deck.train is not None else "$TRIVHMC_MODELS"
        return _ModelRef("sampler.model", s.model, root, "l2hmc", keys)
    return None


def _is_file_ref(m: _ModelRef) -> bool:
    """A flow given as a model file rather than a registry name."""
    return m.objective == "flow" and ("/" in m.ref or m.ref.endswith(".pt"))


def check_model(deck: Deck, deck_path: str) -> None:
    """:class:`MissingModelError` if the deck's sampler (a flow sampler's ``sampler.flow``,
    L2HMC's ``sampler.model``) names a model the registry does not hold (saying how to train
    one); other registry problems surface when it loads."""
    m = _model_ref(deck)
    if m is None:
        return
    from app.registry import versions as model_versions

    train = f"`trivhmc train {deck_path}`" if deck.train is not None else "`trivhmc train`"
    if _is_file_ref(m):  # a model file, not a registry name
        path = deck.resolve(m.ref)
        if not path.exists():
            raise MissingModelError(
                f"{m.key}: the model file {path} does not exist; train a model first with {train}"
            )
        return
    name, _, prefix = str(m.ref).partition("@")
    if m.objective == "l2hmc":
        from app.registry import _check_name

        _check_name(name)  # what loading it would say (RegistryError, exit 2)
    versions = model_versions(m.root, name)
    if not versions:
        t = deck.train
        how = f"with {train} (a deck with a train section)"
        if m.objective != "flow":
            how = f"with {train} (a deck with train.objective: {m.objective})"
        if t is not None and (t.model_name != name or t.objective != m.objective):
            wanted = f"train.model_name is {name!r}"
            stores = repr(t.model_name)
            if t.objective != m.objective:
                wanted += f" and train.objective is {m.objective}"
                stores = f"the {t.objective} model {t.model_name!r}"
            how = (
                f"with `trivhmc train` on a deck whose {wanted} (this deck's train section "
                f"stores {stores})"
            )
        raise MissingModelError(
            f"{m.key}: no model {name!r} in the registry {m.root}; train it first {how}, or "
            f"point {m.registry_keys} at the registry that holds it"
        )
    if prefix and not any(h.startswith(prefix.lower()) for h, _ in versions):
        have = ", ".join(f"{name}@{h[:16]}" for h, _ in versions)
        raise MissingModelError(
            f"{m.key}: the registry {m.root} holds no version {prefix!r} of {name!r} (it has "
            f"{have}); use one of those or train it with {train}"
        )


def model_warning(deck: Deck, deck_path: str) -> str | None:
    """:func:`check_model` for a command that does not run the deck yet (``validate``,
    ``jobscript``): a missing model that the deck's own ``train`` section stores (the same
    name, no version pinned, the same registry, the objective that makes this kind of model)
    is a warning to train it first, returned; any other missing model is the
    :class:`MissingModelError` (exit 7)."""
    try:
        check_model(deck, deck_path)
    except MissingModelError:
        m = _model_ref(deck)
        if m is None or not _trained_by_deck(deck, m):
            raise
        return (
            f"{m.key}: no model {m.ref!r} in the registry {m.root} yet; train it with "
            f"`trivhmc train {deck_path}` before `trivhmc run`"
        )
    return None


def _trained_by_deck(deck: Deck, m: _ModelRef) -> bool:
    """Whether ``trivhmc train DECK`` stores the model ``m`` that the deck's sampler loads."""
    from app.flow_samplers import registry_root

    train = deck.train
    if train is None or train.objective != m.objective or _is_file_ref(m) or "@" in m.ref:
        return False
    return m.ref == train.model_name and m.root == registry_root(deck, train.registry)


# ---------------------------------------------------------------------- warnings
def deck_warnings(deck: Deck) -> list[str]:
    """Settings that are valid but probably not meant (printed by validate and run)."""
    out = []
    if deck.parallel.dtype == "float32" and deck.sampler.name in ("hmc", "trivialized_hmc"):
        out.append(
            f"parallel.dtype: float32 with {deck.sampler.name}: the molecular dynamics is "
            "reversible and dH is accurate only to single precision (errors grow with the "
            "volume), which biases the accept/reject step; use float64 for production"
        )
    return out


def preflight(deck: Deck, deck_path: str, ranks: int | None = None) -> tuple[int, ...]:
    """Every check above for a command that runs the deck on ``ranks`` ranks (default: the
    MPI world); warnings go through :mod:`warnings`. Returns the process grid."""
    import warnings

    if ranks is None:
        from mpi4py import MPI

        ranks = MPI.COMM_WORLD.Get_size()
    grid = check_layout(deck, ranks)
    check_device(deck.parallel.device)
    check_model(deck, deck_path)
    for w in deck_warnings(deck):
        warnings.warn(w, stacklevel=2)
    return grid
