"""Train a flow model for the theory of a deck and store it in the model registry."""

from __future__ import annotations

import argparse

from ..errors import NotAvailableError
from ._common import add_deck_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_deck_arguments(parser)


def main(args: argparse.Namespace) -> int:
    raise NotAvailableError("`trivhmc train` is not yet available in this build")
