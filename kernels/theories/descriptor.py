"""Theory descriptors: every fact about a theory that the rest of the code needs, in one place.

A :class:`TheoryDescriptor` names the theory's class, its lattice dimension, the kind of its
field (real, or complex group elements), the file formats its configurations can be written
in, its natural flow prior, the flow architectures that act on it and its couplings (the deck
section ``theory: {name: ..., <couplings>}``). The deck schema (app/deck.py), the run set-up
(field dtype), the model registry and :func:`kernels.flows.priors.prior_for` are all derived
from the registered descriptors, so adding a theory is one module plus one
:func:`kernels.theories.register_theory` call.

The couplings are described without any deck library (kernels knows nothing about decks):
:class:`Coupling` gives the key, its Python type, bounds or choices, a default and the
description that docs/deck.md shows; app/deck.py turns them into a strict pydantic model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

#: marker for a coupling without a default (required in a deck)
REQUIRED: Any = ...


@dataclass(frozen=True)
class Coupling:
    """One coupling of a theory as it appears in a deck's ``theory`` section.

    ``kind`` is ``float``, ``int``, ``str`` or ``list`` (of floats); ``choices`` restricts a
    ``str`` coupling; ``gt``/``ge`` bound numbers (every element of a list); ``arg`` is the
    keyword of the theory's constructor when it differs from the deck key (``lambda`` ->
    ``lam``).
    """

    key: str
    kind: type
    description: str
    default: Any = REQUIRED
    gt: float | None = None
    ge: float | None = None
    choices: tuple[str, ...] | None = None
    arg: str | None = None

    @property
    def argument(self) -> str:
        """The constructor keyword of this coupling."""
        return self.arg or self.key


@dataclass(frozen=True)
class TheoryDescriptor:
    """Everything the application needs to know about one theory (see module docstring)."""

    #: deck name (``theory.name``)
    name: str
    #: ``"module:Class"`` of the :class:`kernels.theory.Theory` implementation
    factory: str
    #: lattice dimensions
    dims: int
    #: the deck section's description (docs/deck.md)
    summary: str
    #: ``real`` (phi^4, U(1) angles) or ``complex`` (SU(N) matrices) field entries
    field_kind: Literal["real", "complex"] = "real"
    #: configuration file formats it can be written in
    file_formats: tuple[str, ...] = ("hdf5",)
    #: natural flow prior: ``normal`` or ``uniform_angle`` (Haar measure of U(1))
    prior: Literal["normal", "uniform_angle", "none"] = "normal"
    #: flow architectures acting on it: deck name -> ``"module:builder"``
    architectures: dict[str, str] = field(default_factory=dict)
    #: couplings (deck keys, in order)
    couplings: tuple[Coupling, ...] = ()

    def torch_dtype(self, precision: str) -> torch.dtype:
        """Field dtype for ``precision`` (``float64``/``float32``): real, or complex of it."""
        real = {"float64": torch.float64, "float32": torch.float32}[precision]
        if self.field_kind == "complex":
            return torch.complex128 if real == torch.float64 else torch.complex64
        return real

    def constructor_kwargs(self, couplings: dict[str, Any]) -> dict[str, Any]:
        """Deck couplings (by deck key) -> keyword arguments of the theory class."""
        by_key = {c.key: c for c in self.couplings}
        return {by_key[k].argument if k in by_key else k: v for k, v in couplings.items()}
