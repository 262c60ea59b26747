"""Flow-based samplers for the run loop: trivialized HMC and flow independence Metropolis.

Both load a trained flow from the model registry (``sampler.flow`` in the deck) and present
the interface the run loop uses (:class:`app.run.Sampler`): ``trajectory``, ``state_dict``,
``to_physical`` (``U = F(V)``, what is measured and saved) and ``from_physical``.

* ``trivialized_hmc``: plain :class:`kernels.samplers.hmc.HMC` on
  :class:`kernels.samplers.trivialized.TransformedTheory` (``S~(V) = S(F(V)) - log det``); the
  chain variable is ``V``; checkpoints hold ``V``.
* ``flow_metropolis``: :class:`kernels.samplers.flow_metropolis.FlowMetropolis`; the chain
  variable is ``U``; the record's ``dH`` is ``-(log w' - log w)`` (so ``exp(-dH)`` is the
  Metropolis ratio and ``<exp(-dH)> = 1`` holds as for HMC), ``n_steps = 0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.deck import Deck
from app.errors import InputError
from kernels.integrators import make_integrator
from kernels.samplers.hmc import HMC
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
    flow = flow.to(theory.device)
    flow.requires_grad_(False)
    return flow, card


def build_flow_sampler(deck: Deck, theory: Theory, rng) -> tuple[Any, dict[str, Any]]:
    """The deck's flow sampler (protocol object) and its flow reference ``{model, hash}``."""
    flow, card = load_flow(deck, theory)
    ref = {"model": deck.sampler.flow.model, "hash": card.get("hash")}
    s = deck.sampler
    if s.name == "trivialized_hmc":
        from kernels.samplers.trivialized import TransformedTheory

        tt = TransformedTheory(theory, flow)
        integ = make_integrator(tt, s.integrator, s.steps, s.trajectory_length)
        hmc = HMC(
            tt,
            integ,
            rng,
            trajectory_length=s.trajectory_length,
            target_acceptance=s.target_acceptance,
            reversibility_every=deck.run.check_reversibility,
        )
        return hmc, ref
    if s.name == "flow_metropolis":
        from kernels.flows.priors import prior_for
        from kernels.samplers.flow_metropolis import FlowMetropolis, FlowMetropolisSampler

        fm = FlowMetropolis(theory, flow, prior_for(theory), rng)
        return FlowMetropolisSampler(fm), ref
    raise InputError(f"sampler.name: unknown sampler {s.name!r}")
