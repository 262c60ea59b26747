"""The flow of a deck's flow sampler, loaded from the model registry (``sampler.flow``).

:func:`load_flow` finds the registry (:func:`registry_root`), loads the model on the theory's
grid and checks its hash; :func:`app.setup.build_sampler` then builds the sampler, a
:class:`kernels.samplers.protocol.Sampler` (``trajectory``, ``state_dict``, ``to_physical``
(``U = F(V)``, what is measured and saved) and ``from_physical``):

* ``trivialized_hmc``: plain :class:`kernels.samplers.hmc.HMC` on
  :class:`kernels.samplers.trivialized.TransformedTheory` (``S~(V) = S(F(V)) - log det``); the
  chain variable is ``V``; checkpoints hold ``V``.
* ``flow_metropolis``: :class:`kernels.samplers.flow_metropolis.FlowMetropolisSampler`; the chain
  variable is ``U``; the record's ``dH`` is ``-(log w' - log w)`` (so ``exp(-dH)`` is the
  Metropolis ratio and ``<exp(-dH)> = 1`` holds as for HMC), ``n_steps = 0``.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.deck import Deck
from app.errors import InputError
from kernels.theory import Theory


def registry_root(deck: Deck, configured: str | None) -> Path:
    """The registry directory: the deck's setting, else $TRIVHMC_MODELS, else ./models."""
    if configured:
        return deck.resolve(configured)
    env = os.environ.get("TRIVHMC_MODELS")
    return Path(env) if env else deck.base_dir / "models"


def load_flow(deck: Deck, theory: Theory):
    """The deck's flow model on the theory's grid, checked against ``sha256`` if given."""
    from app.registry import load_model

    ref = deck.sampler.flow
    real = theory.dtype.to_real()
    flow, card = load_model(
        ref.model, theory.grid, theory, registry_root(deck, ref.registry), dtype=real
    )
    if ref.sha256 is not None and card.get("hash") != ref.sha256:
        raise InputError(
            f"sampler.flow: model {ref.model!r} has sha256 {card.get('hash')}, the deck "
            f"expects {ref.sha256}"
        )
    if ref.checkpoint_layers is not None:
        if not hasattr(flow, "checkpoint_layers"):
            raise InputError(
                f"sampler.flow.checkpoint_layers: model {ref.model!r} "
                f"({type(flow).__name__}) is not a composition of layers; remove the key"
            )
        flow.checkpoint_layers = ref.checkpoint_layers
    flow = flow.to(theory.device)
    flow.requires_grad_(False)
    return flow, card
