"""The registry's index, queries, verification, export and import (``trivhmc models``).

``<root>/index.json`` (``format = "trivhmc-registry-index"``, ``version = 1``) caches one
summary per published version, keyed ``name@hash16``: ``name``, ``hash``, ``theory``,
``couplings``, ``lattice``, ``n_parameters``, ``created``, ``tags``, ``description``,
``layout`` (``dir`` or ``file``) and ``stamp`` (``[mtime_ns, size]`` of the card file, or of
the single-file model). It is a cache, never the truth: every read lists the registry's
directories (cheap, no card is opened) and compares; a missing or unreadable index, a version
not in it, an entry whose version is gone, or a card whose stamp changed makes it rebuild
those entries from the cards and rewrite it by atomic rename (a unique temporary name, so
concurrent rewriters need no lock; the last rename wins, and anything it lacks is re-added by
the next reader). A registry on a read-only file system is still listed (the index is just
not written). Summaries come from the cards without the hash check (that reads every weight
file); :func:`verify_models` and every load check the hash.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .io.atomic import atomic_write_bytes
from .registry import (
    CARD_FORMAT,
    HASH_LEN,
    INDEX_NAME,
    RESERVED_NAMES,
    RegistryError,
    _check_name,
    _load_verified,
    _read,
    content_hash,
    default_root,
    publish,
    resolve,
    versions,
)

INDEX_FORMAT = "trivhmc-registry-index"
INDEX_VERSION = 1
SUMMARY_KEYS = ("theory", "couplings", "lattice", "n_parameters", "created", "description")


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else default_root()


def _stamp(path: Path) -> list[int]:
    st = (path / "card.json" if path.is_dir() else path).stat()
    return [st.st_mtime_ns, st.st_size]


def _on_disk(root: Path) -> dict[str, Path]:
    """``name@hash16 -> path`` of every published version (directory listings only)."""
    out = {}
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if folder.name.lower() in RESERVED_NAMES:
            continue  # not a model (a stray directory where the index goes)
        for h, p in versions(root, folder.name):
            out[f"{folder.name}@{h}"] = p
    return out


def _summary(ref: str, path: Path) -> dict[str, Any]:
    """The index entry of one version, read from its card (no hash check)."""
    name, _, short = ref.partition("@")
    layout = "dir" if path.is_dir() else "file"
    entry: dict[str, Any] = {"name": name, "hash": short, "layout": layout}
    try:
        entry["stamp"] = _stamp(path)
        if path.is_dir():
            card = json.loads((path / "card.json").read_text())
        else:
            card, _ = _read(path)
        if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
            raise ValueError("not a trivhmc model card")
    except (OSError, ValueError, RegistryError) as exc:
        entry["problem"] = f"unreadable card: {exc}"
        return entry
    entry.update({k: card.get(k) for k in SUMMARY_KEYS})
    entry["tags"] = list(card.get("tags") or [])
    entry["hash"] = str(card.get("hash", short))
    return entry


def _read_index(root: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((root / INDEX_NAME).read_text())
        if data.get("format") != INDEX_FORMAT or data.get("version") != INDEX_VERSION:
            return {}
        entries = data["entries"]
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def load_index(root: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The index of ``root`` brought up to date with the cards: ``{name@hash16: entry}``.

    Rebuilds (and rewrites) the entries that are missing or stale; see the module docstring.
    """
    root = _root(root)
    disk = _on_disk(root)
    old = _read_index(root)
    new: dict[str, dict[str, Any]] = {}
    changed = set(old) != set(disk)
    for ref, path in disk.items():
        entry = old.get(ref)
        try:
            fresh = entry is not None and entry.get("stamp") == _stamp(path)
        except OSError:
            fresh = False
        if not fresh:
            entry = _summary(ref, path)
            changed = True
        new[ref] = entry
    if changed and root.is_dir():
        body = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "entries": new}
        try:
            atomic_write_bytes(root / INDEX_NAME, (json.dumps(body, indent=1) + "\n").encode())
        except OSError:
            pass  # a read-only registry: listing still works, the index is just not cached
    return new


def newest(root: str | os.PathLike | None, name: str, found: list[tuple[str, Path]]) -> Path:
    """The most recently created of the versions ``found`` of ``name`` (by the cards)."""
    index = load_index(root)
    created = []
    for h, p in found:
        entry = index.get(f"{name}@{h}") or _summary(f"{name}@{h}", p)
        if "problem" in entry:
            raise RegistryError(f"model {name}@{h} in {p}: {entry['problem']}")
        created.append((str(entry.get("created") or ""), h, p))
    return max(created)[2]


# ------------------------------------------------------------------ queries
def parse_lattice(text: str) -> list[int]:
    """``"8x8"``, ``"8,8"`` or ``"8 8"`` -> ``[8, 8]``."""
    parts = text.replace("x", " ").replace(",", " ").split()
    try:
        out = [int(v) for v in parts]
    except ValueError:
        out = []
    if not out or any(v <= 0 for v in out):
        raise RegistryError(f"--lattice {text!r}: expected sizes like 8x8")
    return out


def _coupling_matches(have: Any, want: str) -> bool:
    try:
        return math.isclose(float(have), float(want), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(have) == want


def _matches(entry: dict[str, Any], query: dict[str, Any]) -> bool:
    if query.get("name") and entry.get("name") != query["name"]:
        return False
    if query.get("theory") and entry.get("theory") != query["theory"]:
        return False
    if query.get("lattice") and list(entry.get("lattice") or []) != list(query["lattice"]):
        return False
    couplings = entry.get("couplings") or {}
    for k, v in (query.get("couplings") or {}).items():
        if k not in couplings or not _coupling_matches(couplings[k], str(v)):
            return False
    return set(query.get("tags") or ()) <= set(entry.get("tags") or ())


def find_models(
    root: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    theory: str | None = None,
    lattice: list[int] | None = None,
    couplings: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    include_damaged: bool = False,
) -> list[dict[str, Any]]:
    """Summaries of the models matching every given filter (couplings compared as numbers,
    all ``tags`` required), oldest first; each with ``ref`` = ``name@hash16``. Versions with
    an unreadable card are left out unless ``include_damaged`` (they carry ``problem``)."""
    query = {"name": name, "theory": theory, "lattice": lattice, "couplings": couplings}
    query["tags"] = tags
    out = []
    for ref, entry in load_index(root).items():
        if "problem" in entry:
            if include_damaged:
                out.append({"ref": ref, **entry})
            continue
        if _matches(entry, query):
            out.append({"ref": ref, **{k: v for k, v in entry.items() if k != "stamp"}})
    out.sort(key=lambda e: (str(e.get("created") or ""), e["ref"]))
    return out


# ------------------------------------------------------------------ verify
def verify_models(
    root: str | os.PathLike | None = None, refs: list[str] | None = None
) -> list[tuple[str, str | None]]:
    """``(ref, problem or None)`` for ``refs`` (default: every published version): the
    content hash of each recomputed from its weight file and card."""
    root = _root(root)
    if refs:
        targets = []
        for r in refs:
            path = resolve(r, root)
            name = r.partition("@")[0]
            targets.append((f"{name}@{path.stem if path.is_file() else path.name}", path))
    else:
        targets = list(_on_disk(root).items())
    out = []
    for ref, path in targets:
        try:
            _load_verified(path)
            out.append((ref, None))
        except RegistryError as exc:
            out.append((ref, str(exc)))
    return out


# ------------------------------------------------------------------ export / import
def export_model(
    ref: str,
    dest: str | os.PathLike,
    root: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Write the model ``ref`` (hash checked first) as one portable file,
    ``{"card": ..., "state_dict": ...}`` saved by :func:`torch.save` (the registry's
    single-file layout). ``dest`` is a file, or an existing directory that gets
    ``<name>@<hash16>.pt``.

    An existing file at the destination is left alone if it already holds exactly these bytes
    (exporting again changes nothing) and refused otherwise (:class:`RegistryError`, exit 2)
    unless ``force``; a destination whose directory is missing or not writable is refused
    (:class:`app.io.paths.OutputPathError`, exit 2) before the model is read, and so is a
    destination inside the registry (where it would pose as the index or a version).
    """
    import io

    from .io.paths import check_output_dir

    text = os.fspath(dest)
    dest = Path(dest)
    if dest.is_dir():
        check_output_dir(dest / "model.pt")  # the directory must be writable
    elif text.endswith(("/", os.sep)):
        raise RegistryError(
            f"cannot write into {text}: the directory does not exist; create it first "
            f"(mkdir -p {dest})"
        )
    else:
        check_output_dir(dest)
    registry = _root(root).resolve()
    if dest.resolve() == registry or registry in dest.resolve().parents:
        raise RegistryError(
            f"cannot export into the registry {_root(root)} itself ({dest}): its files are "
            "the registry's own; give a destination outside it"
        )
    path = resolve(ref, root)
    card, state = _load_verified(path)
    if dest.is_dir():
        dest = dest / f"{card['name']}@{card['hash'][:HASH_LEN]}.pt"
    buf = io.BytesIO()
    torch.save({"card": card, "state_dict": state}, buf)
    data = buf.getvalue()
    if dest.is_dir():
        raise RegistryError(f"cannot write {dest}: it is a directory")
    if (dest.exists() or dest.is_symlink()) and not force:
        try:
            same = dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data
        except OSError:
            same = False
        if same:
            return dest  # this very export is already there
        raise RegistryError(
            f"{dest} exists and is not this export of {card['name']}@"
            f"{card['hash'][:HASH_LEN]}; remove it, give another destination, or --force to "
            "replace it"
        )
    atomic_write_bytes(dest, data)
    return dest


def import_model(src: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[str, bool]:
    """Add the model in ``src`` (an exported ``.pt`` file or a version directory with
    ``card.json`` and ``model.pt``) to the registry ``root`` under its own name and hash;
    refused if its content hash does not match its card. Returns ``(ref, newly_added)``;
    importing a model that is already there (also concurrently) changes nothing."""
    src = Path(src)
    if not src.exists():
        raise RegistryError(f"cannot import {src}: no such file or directory")
    card, state = _read(src, source=True)
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise RegistryError(f"{src} is not a trivhmc model (no model card)")
    digest = content_hash(state, card)
    if digest != card.get("hash"):
        raise RegistryError(
            f"{src} is corrupt: content hash {digest[:HASH_LEN]} does not match its card's "
            f"{str(card.get('hash', ''))[:HASH_LEN] or '(none)'}; not imported"
        )
    name = str(card.get("name", ""))
    _check_name(name)
    added = publish(_root(root), name, card, state)
    return f"{name}@{digest[:HASH_LEN]}", added
