"""Browse and maintain the model registry: list, show, verify, export, import.

  trivhmc models list [--theory T] [--lattice 8x8] [--coupling beta=2.0] [--tag prod]
  trivhmc models show REF            the model card (hash checked)
  trivhmc models verify [REF ...]    recompute content hashes (default: every model)
  trivhmc models export REF DEST     one portable .pt file (card + weights)
  trivhmc models import FILE|DIR     add an exported model (hash checked)

The registry is --registry (before or after ACTION), else $TRIVHMC_MODELS, else ./models;
``list``, ``show``, ``verify`` and ``export`` exit 2 when it does not exist or is not a
directory (a mistyped path must not pass as an empty registry), ``import`` when it cannot be
written. ``verify`` exits 2 if any model is damaged; a damaged model is never loaded.
``export`` refuses to replace an existing file unless it holds exactly the same export, or
``--force`` is given (docs/registry.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import InputError

_REGISTRY_HELP = "registry directory (default: $TRIVHMC_MODELS, ./models)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc models``. ``--registry DIR`` goes before or after the action
    (``models --registry DIR import F`` = ``models import F --registry DIR``)."""
    parser.add_argument("--registry", default=None, help=_REGISTRY_HELP)
    # the same option on every action; SUPPRESS: an action that does not give it leaves the
    # value given before the action (or the default None) alone
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", default=argparse.SUPPRESS, help=_REGISTRY_HELP)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[registry])

    ls = action("list", "list models, optionally filtered")
    ls.add_argument("--name", default=None, help="only this model name")
    ls.add_argument("--theory", default=None, help="only this theory (e.g. u1, phi4, su3)")
    ls.add_argument("--lattice", default=None, help="only this training lattice, e.g. 8x8")
    ls.add_argument(
        "--coupling",
        action="append",
        default=[],
        metavar="K=V",
        help="only models with this coupling (numbers compared as numbers); repeatable",
    )
    ls.add_argument("--tag", action="append", default=[], help="only models with this tag")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    show = action("show", "print a model card (hash checked)")
    show.add_argument("ref", help="name or name@hash")
    show.add_argument("--history", action="store_true", help="include the training history")
    ver = action("verify", "check content hashes (exit 2 if any is damaged)")
    ver.add_argument("refs", nargs="*", help="models to check (default: all)")
    exp = action("export", "write a model as one portable .pt file")
    exp.add_argument("ref", help="name or name@hash")
    exp.add_argument("dest", help="output file, or an existing directory")
    exp.add_argument(
        "--force",
        action="store_true",
        help="replace an existing DEST (default: refused unless it is this very export)",
    )
    imp = action("import", "add exported models to the registry")
    imp.add_argument("sources", nargs="+", help="exported .pt files or version directories")


def _couplings(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"--coupling {item!r}: expected NAME=VALUE, e.g. beta=2.0")
        out[key.strip()] = value.strip()
    return out


def _check_registry(args: argparse.Namespace, write: bool = False) -> None:
    """Exit 2 (on every rank) when the registry does not exist or is not a directory, or,
    with ``write``, cannot be written; the message says where the path came from."""
    from mpi4py import MPI

    from ..registry import check_registry, default_root

    if args.registry is not None or os.environ.get("TRIVHMC_MODELS"):
        root = Path(args.registry) if args.registry is not None else default_root()
        source = "--registry" if args.registry is not None else "$TRIVHMC_MODELS"
        need = "a writable directory" if write else "an existing registry directory"
        hint = f"check the path given by {source} ({need})"
    else:
        root = default_root()
        hint = "it is the default registry (no --registry, $TRIVHMC_MODELS not set); give "
        hint += "--registry DIR" if write else "--registry DIR, or train a model first"
    check_registry(root, write=write, comm=MPI.COMM_WORLD, hint=hint)


def _list(args: argparse.Namespace) -> int:
    from ..registry_index import find_models, parse_lattice

    _check_registry(args)
    models = find_models(
        args.registry,
        name=args.name,
        theory=args.theory,
        lattice=parse_lattice(args.lattice) if args.lattice else None,
        couplings=_couplings(args.coupling),
        tags=args.tag,
        include_damaged=True,
    )
    damaged = [m for m in models if "problem" in m]
    good = [m for m in models if "problem" not in m]
    if args.json:
        print(json.dumps(good, indent=1))
    else:
        for m in good:
            lat = "x".join(str(v) for v in m.get("lattice") or [])
            coup = ",".join(f"{k}={v}" for k, v in (m.get("couplings") or {}).items())
            tags = ",".join(m.get("tags") or [])
            print(
                f"{m['ref']:<40} {m.get('theory')!s:<6} {lat:<9} {coup:<24} {tags:<12} "
                f"{m.get('created')}"
            )
    for m in damaged:
        print(f"trivhmc models: warning: {m['ref']}: {m['problem']}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..registry import read_card

    _check_registry(args)
    card = read_card(args.ref, args.registry)
    if not args.history:
        card["history"] = f"{len(card.get('history') or [])} steps (--history to print)"
    print(json.dumps(card, indent=1, sort_keys=True))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..registry_index import verify_models

    _check_registry(args)
    results = verify_models(args.registry, args.refs or None)
    bad = 0
    for ref, problem in results:
        if problem is None:
            print(f"ok       {ref}")
        else:
            bad += 1
            print(f"DAMAGED  {ref}: {problem}")
    print(f"{len(results)} model(s) checked, {bad} damaged")
    return 2 if bad else 0


def _export(args: argparse.Namespace) -> int:
    from ..registry_index import export_model

    _check_registry(args)
    print(export_model(args.ref, args.dest, args.registry, force=args.force))
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..registry_index import import_model

    _check_registry(args, write=True)
    for src in args.sources:
        ref, added = import_model(Path(src), args.registry)
        print(f"{ref}  {'imported' if added else 'already present'}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc models ACTION``; returns the exit status."""
    actions = {
        "list": _list,
        "show": _show,
        "verify": _verify,
        "export": _export,
        "import": _import,
    }
    return actions[args.action](args)
