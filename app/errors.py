"""Exceptions the command line maps to exit codes.

:class:`InputError` (and subclasses such as :class:`app.deck.DeckError`) means the user gave
bad input: a deck, a file, an option. ``trivhmc`` prints its message without a traceback and
exits with status 2. Anything else is a bug or an environment problem (status 1).

``InputError`` deliberately does *not* derive from ``ValueError``: pydantic would otherwise
swallow it inside validators and turn it into a generic validation message.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input (deck, file, command-line option): exit status 2, no traceback."""

    exit_code = 2


class NotAvailableError(Exception):
    """A subcommand exists in the interface but is not implemented in this build (status 1)."""

    exit_code = 1
