"""Model registry: trained flows saved with a model card and loaded by reference.

Layout under the registry root (default ``$TRIVHMC_MODELS`` or ``./models``)::

    <root>/<name>/<hash16>/card.json      directory layout: JSON model card
    <root>/<name>/<hash16>/model.pt       torch state_dict
    <root>/<name>/<hash16>.pt             single-file layout: {"card": ..., "state_dict": ...}

A reference is ``name`` (the most recently created version) or ``name@<hash prefix>``.

Shared store (issue 12). The registry is meant to live on a parallel file system (Lustre,
GPFS) shared by many jobs on many nodes, where POSIX locks are unreliable, so it takes no
locks: a version is written under a unique temporary name (``.<hash16>.tmp-<host>-<pid>-<random>``)
and published by one atomic ``rename`` to its content address ``<name>/<hash16>``. Two
writers of different models, or of different versions of one name, never touch the same
path; two writers of the *same* content race on one rename, the loser finds the version
already published and discards its copy. A killed writer leaves only a dot-named temporary
that readers ignore. ``<root>/index.json`` is a cache of the cards' summaries for listing and
queries (:mod:`app.registry_index`), rebuilt from the cards when it is missing or stale; it is
never trusted for loading: every load recomputes the content hash.

Model card (JSON, ``format = "trivhmc-flow-card"``, ``version = 1``): ``name``, ``theory``
(deck name), ``couplings``, ``lattice`` (global shape trained on), ``architecture``
(``{"builder": "module:function", "kwargs": {...}}``, enough to rebuild the flow on any grid,
see :func:`kernels.flows.base.build_flow`), ``n_parameters``, ``dtype``, ``history`` (per-step
training metrics), ``train_config``, ``created`` (UTC ISO 8601), ``code_version``,
``description``, ``tags`` (a list of strings; absent on cards written before tags
existed) and ``hash``.

Content hash: ``sha256`` of the canonical parameter bytes followed by the canonical card:
for every state_dict entry in sorted key order ``key \\0 dtype \\0 shape \\0`` and the raw
little-endian bytes of the contiguous CPU tensor; then the card without its ``hash`` field as
JSON with sorted keys and no spaces. Loading recomputes it and refuses a mismatch (a corrupt
or edited file), and refuses a model whose ``theory`` differs from the requested one.

The flows of :mod:`kernels.flows` are local (convolutions, plaquette stencils), so a model
trained at ``L`` loads and runs on any lattice its masks allow (e.g. ``2L``): same
parameters, new grid. Writes happen on the world root, atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernels.flows.base import Flow, FlowError, build_flow
from parallel import ProcessGrid

from . import code_version
from .errors import InputError, TrivhmcError
from .io.atomic import atomic_write_bytes, fsync_dir, is_storage_error
from .io.collective import on_root

CARD_FORMAT = "trivhmc-flow-card"
CARD_VERSION = 1
HASH_LEN = 16
#: the registry's own file at its root (app.registry_index)
INDEX_NAME = "index.json"
#: names a model cannot have: they would collide with the registry's own files (compared in
#: lower case, for case-insensitive file systems)
RESERVED_NAMES = frozenset({INDEX_NAME})


class RegistryError(InputError):
    """A model reference cannot be resolved or loaded (unknown, ambiguous, corrupt, theory)."""


def default_root() -> Path:
    """``$TRIVHMC_MODELS`` or ``./models``."""
    return Path(os.environ.get("TRIVHMC_MODELS", "models"))


# ------------------------------------------------------------------ hashing
def canonical_parameter_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Parameters as bytes in a canonical order (see the module docstring)."""
    out = io.BytesIO()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        out.write(f"{key}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        arr = t.numpy()
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
            arr = arr.byteswap()
        out.write(arr.tobytes())
    return out.getvalue()


def canonical_card_bytes(card: dict[str, Any]) -> bytes:
    """The card as canonical JSON bytes (sorted keys, no ``hash``), for the content hash."""
    body = {k: v for k, v in card.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def content_hash(state_dict: dict[str, torch.Tensor], card: dict[str, Any]) -> str:
    """SHA-256 over the canonical parameter bytes and the canonical card: the model's
    content address."""
    h = hashlib.sha256()
    h.update(canonical_parameter_bytes(state_dict))
    h.update(canonical_card_bytes(card))
    return h.hexdigest()


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, torch.dtype):
        return str(x).removeprefix("torch.")
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable in a model card: {type(x).__name__}")


def _jsonable(x: Any) -> Any:
    """Round-trip through JSON so the stored card equals the hashed one."""
    return json.loads(json.dumps(x, default=_json_default))


# ------------------------------------------------------------------ cards
def make_card(
    flow: Flow,
    theory,
    name: str,
    history: list[dict[str, Any]] | None = None,
    train_config: dict[str, Any] | None = None,
    description: str = "",
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """The model card of ``flow`` trained for ``theory`` (without the hash)."""
    if flow.architecture is None:
        raise RegistryError(
            "this flow has no architecture record (build it with a kernels.flows builder)"
        )
    _check_name(name)
    params = list(flow.parameters())
    return _jsonable(
        {
            "format": CARD_FORMAT,
            "version": CARD_VERSION,
            "name": name,
            "theory": theory.name,
            "couplings": dict(theory.params),
            "lattice": list(theory.grid.shape),
            "architecture": flow.architecture,
            "n_parameters": flow.n_parameters(),
            "dtype": str(params[0].dtype).removeprefix("torch.") if params else "float64",
            "history": list(history or []),
            "train_config": dict(train_config or {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "code_version": code_version(),
            "description": description,
            "tags": _check_tags(tags),
        }
    )


def _check_name(name: str) -> None:
    if not name or "@" in name or "/" in name or name.startswith("."):
        raise RegistryError(f"invalid model name {name!r} (no '@', '/', leading '.')")
    if name.lower() in RESERVED_NAMES:
        raise RegistryError(
            f"invalid model name {name!r}: reserved for the registry's own {INDEX_NAME}; "
            "choose another name"
        )


# ------------------------------------------------------------------ registry directory
def _usable_dir(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


_NAME_REMEDY = "; move that file away or choose another model name"


def registry_problem(root: str | os.PathLike, name: str | None = None, write: bool = False):
    """Why the registry ``root`` cannot be read (``write=False``: it must be an existing
    directory) or written (``write=True``: a writable directory, or one that can be created,
    whose entry ``name``, if given and present, is a writable directory), or ``None``
    (this process's view; :func:`check_registry` makes it collective)."""
    root = Path(root)
    if root.is_symlink() and not root.exists():
        return f"registry {root} is a broken symbolic link"
    if not root.exists():
        if not write:
            return f"registry {root} does not exist"
        parent = root.parent  # created on the first save: the nearest existing ancestor
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"registry {root} cannot be created: {parent} is not a directory"
        if not _usable_dir(parent):
            return f"registry {root} cannot be created: {parent} is not writable"
        return None
    if not root.is_dir():
        return f"registry {root} is not a directory"
    if not write:
        return None
    if not _usable_dir(root):
        return f"registry {root} is not writable"
    if name is not None:
        folder = root / name
        if folder.is_symlink() and not folder.exists():
            return f"registry {root}: {folder} is a broken symbolic link"
        if folder.exists() and not folder.is_dir():
            return (
                f"registry {root} holds a file {name!r} where the versions of model {name!r} "
                f"go (a directory){_NAME_REMEDY}"
            )
        if folder.exists() and not _usable_dir(folder):
            return f"registry {root}: {folder} is not writable"
    return None


def check_registry(
    root: str | os.PathLike,
    name: str | None = None,
    write: bool = False,
    comm=None,
    hint: str = "",
) -> None:
    """Raise one :class:`RegistryError` (exit status 2) on every rank of ``comm`` (default:
    this process alone) when the registry ``root`` cannot be used (:func:`registry_problem`;
    with ``name`` also an invalid or reserved model name). Rank 0 decides, the others
    follow, so the ranks never disagree. ``hint`` (what would work) ends the message."""
    from mpi4py import MPI

    def check() -> None:
        if name is not None:
            _check_name(name)
        problem = registry_problem(root, name, write)
        if problem is not None:
            own = problem.endswith(_NAME_REMEDY)  # a remedy of its own
            raise RegistryError(problem + (f"; {hint}" if hint and not own else ""))

    on_root(check, MPI.COMM_SELF if comm is None else comm, broadcast=False)


def _check_tags(tags: list[str] | None) -> list[str]:
    out = []
    for t in tags or []:
        if not isinstance(t, str) or not t or any(c in t for c in ",=@/") or t != t.strip():
            raise RegistryError(f"invalid model tag {t!r} (non-empty, no ',', '=', '@', '/')")
        if t not in out:
            out.append(t)
    return out


# ------------------------------------------------------------------ save
def _tmp_dir(folder: Path, short: str) -> Path:
    """A temporary name unique across nodes (host, pid, random), dot-named so readers skip it."""
    host = socket.gethostname().split(".")[0].replace("/", "_") or "host"
    return folder / f".{short}.tmp-{host}-{os.getpid()}-{secrets.token_hex(4)}"


def publish(root: Path, name: str, card: dict[str, Any], state: dict[str, torch.Tensor]) -> bool:
    """Write a verified ``(card, state)`` as ``<root>/<name>/<hash16>/`` by one atomic rename.

    No locks: the version is written in full under a unique temporary name, then renamed to
    its content address. If another process published the same content first, the rename
    fails, the copy is discarded and the existing version kept. Returns ``True`` if this call
    published it, ``False`` if it was already there.
    """
    short = str(card["hash"])[:HASH_LEN]
    root = Path(root)
    return _guarded_write(root, name, short, lambda: _publish(root, name, card, state, short))


def _guarded_write(root: Path, name: str, short: str, write):
    """``write()`` into the registry after checking it (:func:`registry_problem`); a
    registry that is a file, a file with the model's name, or any other ``OSError`` but a
    full disk is one :class:`RegistryError` (a full disk stays a storage error, exit 8)."""
    _check_name(name)
    problem = registry_problem(root, name, write=True)
    if problem is not None:
        raise RegistryError(f"cannot save {name}@{short}: {problem}")
    try:
        return write()
    except OSError as exc:
        if isinstance(exc, TrivhmcError) or is_storage_error(exc):
            raise  # disk full, quota: exit 8 (docs/errors.md)
        raise RegistryError(
            f"cannot save {name}@{short} in registry {root}: {exc.strerror or exc}"
            + (f": {exc.filename}" if exc.filename else "")
        ) from exc


def _publish(root: Path, name: str, card: dict[str, Any], state, short: str) -> bool:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / short
    if (folder / f"{short}.pt").is_file():
        return False  # already there in the single-file layout
    tmp = _tmp_dir(folder, short)
    tmp.mkdir()
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
        with open(tmp / "model.pt", "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "card.json", "w") as f:
            f.write(json.dumps(card, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / "card.json").exists():
                return False  # the same content, published by another writer first
            raise
        fsync_dir(folder)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_model(
    flow: Flow,
    theory,
    name: str,
    root: str | os.PathLike | None = None,
    history: list[dict[str, Any]] | None = None,
    train_config: dict[str, Any] | None = None,
    description: str = "",
    single_file: bool = False,
    grid: ProcessGrid | None = None,
    tags: list[str] | None = None,
) -> str:
    """Save ``flow`` with its card; returns the reference ``name@<hash16>``.

    Only the world root of ``grid`` (default: the theory's grid) writes; every rank gets the
    reference, or the same :class:`RegistryError` (a registry that is a file, a file with the
    model's name; exit 2) or storage error (exit 8) when the write fails. The card's creation
    time is hashed too, so every save is a new version. Several processes may save into one
    registry at once (see the module docstring).
    """
    grid = grid or theory.grid
    root = Path(root) if root is not None else default_root()
    card = make_card(flow, theory, name, history, train_config, description, tags)
    state = {k: v.detach().cpu().clone() for k, v in flow.state_dict().items()}
    digest = content_hash(state, card)
    card["hash"] = digest
    short = digest[:HASH_LEN]

    def write_file() -> None:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"card": card, "state_dict": state}, buf)
        atomic_write_bytes(folder / f"{short}.pt", buf.getvalue())

    def write() -> str:
        if single_file:
            _guarded_write(root, name, short, write_file)
        else:
            publish(root, name, card, state)
        return short

    # a failure on the root fails every rank; every rank gets the root's hash (the card's
    # creation time, hashed too, differs between ranks)
    short = on_root(write, grid.comm)
    return f"{name}@{short}"


# ------------------------------------------------------------------ find and load
def versions(root: str | os.PathLike, name: str) -> list[tuple[str, Path]]:
    """``(hash16, path)`` of every published version of ``name`` under ``root`` (a directory
    listing only: cards are not read, temporaries and other dot names are skipped)."""
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir() and (p / "card.json").exists():
            out.append((p.name, p))
        elif p.is_file() and p.suffix == ".pt":
            out.append((p.stem, p))
    return out


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


_NOT_WEIGHTS = "it holds objects other than tensors"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's text (torch's are paragraphs), or its type."""
    text = str(exc).strip()
    if "Weights only load failed" in text:  # torch's multi-paragraph weights_only refusal
        return _NOT_WEIGHTS
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0].strip().rstrip(".")


def _torch_load(path: Path, not_torch: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`RegistryError` s:
    ``not_torch`` (``{kind}`` filled in) for a file that is no torch archive at all (a deck,
    an ILDG or HDF5 file, an empty file), "unreadable or corrupt" for a damaged one."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != _ZIP_MAGIC:
        raise RegistryError(
            not_torch.format(kind="an empty file" if not head else "not a torch archive")
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged archive
        why = _first_line(exc)
        if why == _NOT_WEIGHTS and "{kind}" in not_torch:
            raise RegistryError(not_torch.format(kind=why)) from None  # e.g. a checkpoint
        raise RegistryError(f"model file {path} is unreadable or corrupt: {why}") from None


def _read(path: Path, source: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(card, state_dict)`` of a version directory (``card.json``, ``model.pt``) or of a
    single file ``{"card", "state_dict"}``, unchecked; one-line :class:`RegistryError` if it
    is not one or cannot be read. ``source``: ``path`` is a file given to import (the
    messages say it is not an exported model rather than a damaged registry file)."""
    if path.is_dir():
        if not (path / "card.json").is_file():
            raise RegistryError(f"{path} is not a trivhmc model version (no card.json in it)")
        try:
            card = json.loads((path / "card.json").read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(
                f"model card {path / 'card.json'} is unreadable or corrupt: {_first_line(exc)}"
            ) from None
        state = _torch_load(
            path / "model.pt", f"model file {path / 'model.pt'} is unreadable or corrupt ({{kind}})"
        )
    else:
        not_torch = (
            f"{path} is not an exported trivhmc model ({{kind}})"
            if source
            else f"model file {path} is unreadable or corrupt ({{kind}})"
        )
        blob = _torch_load(path, not_torch)
        if not isinstance(blob, dict) or "card" not in blob or "state_dict" not in blob:
            raise RegistryError(
                f"{path} is not an exported trivhmc model (a torch file without a model card)"
            )
        card, state = blob["card"], blob["state_dict"]
    if not isinstance(card, dict) or not isinstance(state, dict):
        raise RegistryError(f"{path} is not a trivhmc model (no model card and weights)")
    return card, state


def resolve(ref: str, root: str | os.PathLike | None = None) -> Path:
    """Path of the model ``name`` or ``name@hashprefix`` under ``root``."""
    root = Path(root) if root is not None else default_root()
    name, _, prefix = ref.partition("@")
    _check_name(name)
    found = versions(root, name)
    if not found:
        raise RegistryError(f"no model {name!r} in registry {root}")
    if prefix:
        hits = [(h, p) for h, p in found if h.startswith(prefix.lower())]
        if not hits:
            raise RegistryError(f"model {name!r} has no version with hash {prefix!r} in {root}")
        if len({h for h, _ in hits}) > 1:
            raise RegistryError(f"hash prefix {prefix!r} of {name!r} is ambiguous: {hits}")
        return hits[0][1]
    if len(found) == 1:
        return found[0][1]
    from .registry_index import newest

    return newest(root, name, found)


def read_card(ref: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model card of ``ref`` (hash verified)."""
    return _load_verified(resolve(ref, root))[0]


def load_verified(
    ref: str, root: str | os.PathLike | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(card, state_dict)`` of the model ``ref``, its content hash checked (any model kind:
    flows, L2HMC models); :class:`RegistryError` if it is missing, unreadable or corrupt."""
    return _load_verified(resolve(ref, root))


def _load_verified(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    card, state = _read(path)
    if card.get("format") != CARD_FORMAT:
        raise RegistryError(f"{path} is not a trivhmc model card (format {card.get('format')!r})")
    stored = str(card.get("hash", ""))
    digest = content_hash(state, card)
    if digest != stored:
        raise RegistryError(
            f"model {path} is corrupt: content hash {digest[:HASH_LEN]} does not match the "
            f"card's {stored[:HASH_LEN] or '(none)'}"
        )
    if not digest.startswith(path.stem if path.is_file() else path.name):
        raise RegistryError(f"model {path} is stored under a name that is not its hash")
    return card, state


def load_model(
    ref: str,
    grid: ProcessGrid,
    theory: str | Any | None = None,
    root: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Flow, dict[str, Any]]:
    """Rebuild the flow ``ref`` on ``grid`` (any lattice its layers allow) with its parameters.

    ``theory`` (a theory object or its name) must match the card's theory. Every rank reads
    the file; returns ``(flow, card)``.
    """
    path = resolve(ref, root)
    card, state = _load_verified(path)
    if theory is not None:
        want = theory if isinstance(theory, str) else theory.name
        if card["theory"] != want:
            raise RegistryError(
                f"model {ref!r} was trained for theory {card['theory']!r}, not {want!r}"
            )
    try:
        flow = build_flow(card["architecture"], grid)
        flow.load_state_dict(state)
    except (FlowError, ValueError, RuntimeError) as exc:
        raise RegistryError(
            f"cannot rebuild model {ref!r} on lattice {list(grid.shape)}: {exc}"
        ) from exc
    if dtype is not None:
        flow = flow.to(dtype)
    return flow, card


def load_model_and_theory(
    ref: str,
    root: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float64,
    grid: ProcessGrid | None = None,
) -> tuple[Any, Flow, dict[str, Any]]:
    """The card's theory with its couplings and the flow ``ref`` on it: ``(theory, flow,
    card)``, on the lattice the model was trained on (a new :class:`ProcessGrid` over all
    ranks) or on ``grid``; theory and flow in ``dtype``."""
    from kernels.theories import make_theory

    card = read_card(ref, root)
    grid = grid if grid is not None else ProcessGrid(tuple(card["lattice"]))
    try:
        theory = make_theory(card["theory"], grid, **card["couplings"], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"model {ref!r}: cannot build theory {card['theory']!r} with couplings "
            f"{card['couplings']}: {exc}"
        ) from exc
    flow, card = load_model(ref, grid, theory, root=root, dtype=dtype)
    return theory, flow, card


def list_models(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Short summaries (ref, theory, couplings, lattice, parameters, created, tags) of every
    readable model, from the index (:func:`app.registry_index.find_models`)."""
    from .registry_index import find_models

    return find_models(root)
