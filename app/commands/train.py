"""Train a flow model for the theory of a deck and store it in the model registry."""

from __future__ import annotations

import argparse
import json

from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc train``."""
    add_deck_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc train``; returns the exit status."""
    from mpi4py import MPI

    from ..deck import load_deck
    from ..training import check_train_registry, train

    deck = load_deck(args.deck, args.overrides)
    from ..preflight import check_device, check_layout

    check_layout(deck, MPI.COMM_WORLD.Get_size())
    check_device(deck.parallel.device)
    # before any training: a model that cannot be saved is not trained (exit 2, every rank)
    check_train_registry(deck, MPI.COMM_WORLD)
    ref, last = train(deck, progress=not args.no_progress)
    if MPI.COMM_WORLD.Get_rank() == 0:
        summary = {k: last[k] for k in ("loss", "kl", "ess", "force_rms") if k in last}
        print(f"trained model: {ref}  {json.dumps(summary)}")
        if deck.train.objective == "l2hmc":
            print(f"use it with:  sampler: {{name: l2hmc, model: {ref}}}")
            return 0
        # the deck's own flow sampler if it names one, else trivialized HMC
        name = deck.sampler.name if deck.sampler.name != "hmc" else "trivialized_hmc"
        print(f"use it with:  sampler: {{name: {name}, flow: {{model: {ref}}}}}")
    return 0
