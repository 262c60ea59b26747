"""Generate docs/deck.md, the input-deck reference, from the schema in :mod:`app.deck`.

``python -m app.deck_docs`` rewrites docs/deck.md (``--check`` exits 1 if it is stale);
tests/test_deck.py checks that the committed file is up to date.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import parallel.settings as S

from . import deck as D

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "deck.md"

INTRO = """\
# Input deck reference

<!-- generated from app/deck.py by `python -m app.deck_docs`; do not edit by hand -->

A deck is a YAML file with the sections below; `parallel` and `sampler` may be left out.
Check one with `trivhmc validate deck.yaml`. Example (`inputs/u1.yaml`):

```yaml
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [16, 16]}
parallel: {grid: null, replicas: 1, device: cpu}
sampler:  {name: hmc, integrator: omelyan, steps: 10, trajectory_length: 1.0}
run:      {seed: 1234, thermalization: 200, trajectories: 2000}
output:   {directory: runs/u1_b2, formats: [hdf5]}
```

Rules:

- Unknown keys are errors; the message names the nearest valid key, the key path and the
  line (`deck.yaml, line 4: theory.lamda: unknown key 'lamda'; did you mean 'lambda'?`).
- Types are strict: `steps: 10.5` or `beta: "2"` are errors; an integer is accepted where a
  float is expected. `null` is YAML's None.
- Numbers are read as in YAML 1.2: `1e-10`, `1E5`, `5e+3` are floats (plain PyYAML, which
  follows YAML 1.1, would read them as strings), in the deck and in `--set` values alike. A
  float is not accepted where an integer is expected, whatever its value: `steps: 1e3` is an
  error, like `steps: 1000.0`; write `steps: 1000`.
- Every number must be finite: `.inf`, `.nan` or an overflowing `1e999` are errors naming the
  key, anywhere in the deck (free-form mappings such as `train.options` included).
- Every problem in a deck is reported at once. `trivhmc` exits with status 2 on a bad deck.
- Command-line overrides: `--set KEY.PATH=VALUE` (repeatable), VALUE parsed as YAML, e.g.
  `--set run.seed=7 --set lattice.shape=[8,8]`. Unknown paths are errors as above.
- Relative paths (`output.directory`, `run.start`, `sampler.flow.model`) are relative to the
  directory of the deck file, not to the working directory.
- Cross checks: the lattice has 2 dimensions for phi4 and u1, 4 for su3; `parallel.grid` has
  one entry per lattice axis and each non-zero entry divides its extent; trivialized_hmc and
  flow_metropolis need `sampler.flow`, hmc must not have one; ildg and nersc output is for
  su3 only; step-size tuning (`sampler.target_acceptance`) needs `run.thermalization > 0`;
  `run.start` is hot, cold or an existing file.
- A run makes `run.thermalization + run.trajectories` trajectories in total.
"""


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        for cls, attr, sym in (
            (at.Ge, "ge", ">="),
            (at.Gt, "gt", ">"),
            (at.Le, "le", "<="),
            (at.Lt, "lt", "<"),
        ):
            if isinstance(m, cls):
                out.append(f"{sym} {getattr(m, attr)}")
        if isinstance(m, at.MinLen) and m.min_length > 1:
            out.append(f"at least {m.min_length} entries")
        if isinstance(m, at.MinLen) and m.min_length == 1:
            out.append("non-empty")
        pattern = getattr(m, "pattern", None)
        if pattern:
            out.append(f"matches `{pattern}`")
    return out


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        inner = _type(args[0])
        cons = [c for a in args[1:] for c in _constraints(getattr(a, "metadata", [a]))]
        return f"{inner} ({', '.join(cons)})" if cons else inner
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is Union or type(annotation).__name__ == "UnionType":
        return " \\| ".join("null" if a is type(None) else _type(a) for a in args)
    if origin is list:
        return f"list[{_type(args[0])}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section defaults)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "**required**"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        typ = _type(field.annotation)
        cons = _constraints(field.metadata)
        if cons:
            typ += f" ({', '.join(cons)})"
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}.{key}` | {typ} | {_default(field)} | {desc} |")
    return rows


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def render() -> str:
    """The full text of docs/deck.md."""
    out = [INTRO]
    for section in D.SECTIONS:
        field = D.Deck.model_fields[section]
        models = D._submodels(D.Deck, section)
        required = "required" if field.is_required() else "optional"
        out.append(f"## `{section}` ({required})\n")
        if len(models) > 1:
            out.append(f"{field.description} One of:\n")
            for m in models:
                out.append(f"### `{section}.name: {D._tag(m)}`\n")
                out.append(_doc(m) + "\n")
                out += _table(m, section)
                out.append("")
        else:
            out.append(_doc(models[0]) + "\n")
            out += _table(models[0], section)
            out.append("")
            for key in models[0].model_fields:
                subs = D._submodels(models[0], key)
                if subs:
                    out.append(f"### `{section}.{key}`\n")
                    out.append(_doc(subs[0]) + "\n")
                    out += _table(subs[0], f"{section}.{key}")
                    out.append("")
    out += _environment()
    return "\n".join(out).rstrip() + "\n"


def _environment() -> list[str]:
    """The ``TRIVHMC_*`` environment variables (parallel/settings.py)."""
    rows = [
        "## Environment variables\n",
        "Settings outside the deck, read from the environment (`mpiexec` gives every rank the "
        "same). On/off switches take 1/0, true/false, yes/no or on/off, settings with a list "
        "of words one of those words, in any case; unset or empty gives the default. The "
        "command line checks both kinds when it starts: any other value stops it with exit "
        "status 2 before any output (docs/errors.md).\n",
        "| variable | kind | description |",
        "|---|---|---|",
    ]
    rows += [f"| `{k}` | on/off | {v} |" for k, v in S.SWITCHES.items()]
    bar = " \\| "  # a "|" inside a table cell
    kinds = {k: bar.join(words) for k, words in S.CHOICES.items()}
    rows += [f"| `{k}` | {kinds.get(k, 'value')} | {v} |" for k, v in S.OTHER_VARIABLES.items()]
    return rows + [""]


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) docs/deck.md; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m app.deck_docs", description=__doc__)
    ap.add_argument("--output", type=Path, default=DOC_PATH)
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run python -m app.deck_docs", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
