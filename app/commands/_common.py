"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse


def add_deck_arguments(parser: argparse.ArgumentParser) -> None:
    """``deck`` positional and repeatable ``--set KEY.PATH=VALUE`` overrides."""
    parser.add_argument("deck", help="YAML input deck")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a deck value (VALUE parsed as YAML), e.g. --set run.seed=7; repeatable",
    )
