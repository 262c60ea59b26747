"""Check an input deck: every problem with its key path and line; exit 2 if invalid.

With ``--ranks N`` also check that the lattice can be split over N ranks (process grid and
replicas; exit 4 if not). The sampler's model (a flow sampler's ``sampler.flow.model``, L2HMC's
``sampler.model``) must be in the registry (exit 7), unless the deck's own train section stores
it (then a warning: train it first). ``--print`` / ``--json``
show the complete deck with every default filled in, after the same checks.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..deck import Deck, load_deck
from ..errors import InputError
from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc validate``."""
    add_deck_arguments(parser)
    parser.add_argument("--ranks", type=int, help="also check the layout on this many ranks")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--print", action="store_true", help="print the full deck as YAML")
    out.add_argument("--json", action="store_true", help="print the full deck as JSON")


def check_ranks(deck: Deck, ranks: int) -> tuple[int, ...]:
    """The process grid ``deck`` gets on ``ranks`` ranks (LayoutError if none fits)."""
    from ..preflight import check_layout

    return check_layout(deck, ranks)


def summary(deck: Deck) -> str:
    """One line that says what the deck will run."""
    t, s, r = deck.theory, deck.sampler, deck.run
    couplings = ", ".join(f"{k}={v}" for k, v in t.couplings.items())
    shape = "x".join(map(str, deck.lattice.shape))
    if s.name == "flow_metropolis":  # independence proposals: no molecular dynamics
        how = f"{s.name} (model {s.flow.model})"
    elif s.name == "l2hmc":  # learned layers and step sizes
        layers = "" if s.leapfrog_layers is None else f", {s.leapfrog_layers} layers"
        how = f"l2hmc (model {s.model}{layers})"
    else:
        how = f"{s.name} {s.integrator} {s.outer_steps} steps (eps = {s.step_size:.4g})"
    return (
        f"{t.name} ({couplings}) on {shape}; {how}; {r.thermalization} + {r.trajectories} "
        "trajectories x "
        f"{r.chains} chain(s) x {deck.parallel.replicas} replica(s); output {deck.output_dir}"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc validate``; returns the exit status.

    Every check applies whatever is printed: the deck (exit 2), ``--ranks`` (exit 4) and the
    sampler's model, flow or L2HMC (exit 7; a model the deck's own ``train`` section stores is
    a warning)."""
    if args.ranks is not None and args.ranks < 1:
        raise InputError(f"--ranks must be >= 1 (got {args.ranks})")
    deck = load_deck(args.deck, args.overrides)
    grid = None if args.ranks is None else check_ranks(deck, args.ranks)
    from ..preflight import deck_warnings, model_warning

    warning = model_warning(deck, args.deck)
    if args.print:
        print(deck.to_yaml(), end="")
        return 0
    if args.json:
        print(json.dumps(deck.to_dict(), indent=2))
        return 0
    for w in ([warning] if warning else []) + deck_warnings(deck):
        print(f"trivhmc validate: warning: {w}", file=sys.stderr)
    print(f"{args.deck}: valid")
    print("  " + summary(deck))
    if grid is not None:
        reps = deck.parallel.replicas
        print(f"  {args.ranks} ranks: {reps} replica group(s) x process grid {list(grid)}")
    return 0
