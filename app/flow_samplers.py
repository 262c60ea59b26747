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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


def build_flow_sampler(deck: Deck, theory: Theory, rng):
    from app.run import Sampler

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
        return Sampler(hmc, tt.to_physical, tt.from_physical, ref)
    if s.name == "flow_metropolis":
        from kernels.flows.priors import prior_for
        from kernels.samplers.flow_metropolis import FlowMetropolis

        fm = FlowMetropolis(theory, flow, prior_for(theory), rng)
        return Sampler(FlowMetropolisChain(fm), flow_ref=ref)
    raise InputError(f"sampler.name: unknown sampler {s.name!r}")


@dataclass
class FlowMetropolisRecord:
    """What the run loop reads of a step (the fields of an HMC TrajectoryRecord it uses)."""

    dH: torch.Tensor
    accepted: torch.Tensor
    exp_minus_dH: torch.Tensor
    wall_time: float
    ess: float
    step_size: float = 0.0
    n_steps: int = 0
    n_nonfinite: int = 0
    reversibility_field_error: Any = None
    reversibility_dH_error: Any = None


class FlowMetropolisChain:
    """Flow independence Metropolis with the run loop's sampler interface.

    The per-chain log weight ``log w = -S(U) - log q(U)`` of the current state is part of the
    checkpointed state, so a resumed chain continues bit for bit.
    """

    def __init__(self, fm) -> None:
        self.fm = fm
        self._state = None
        self._log_w: list[float] | None = None

    def trajectory(
        self,
        u: torch.Tensor,
        counter: int,
        chain_offset: int = 0,
        *,
        tune: bool = False,
        check_reversibility: bool | None = None,
    ):
        from kernels.samplers.flow_metropolis import FlowState

        start = time.perf_counter()
        if self._state is None or self._state.u is not u:
            if self._log_w is not None and len(self._log_w) == u.shape[0]:
                lw = torch.tensor(self._log_w, dtype=torch.float64, device=u.device)
                self._state = FlowState(u, lw.to(u.dtype.to_real()))
            else:
                self._state = self.fm.state_of(u)
        old = self._state.log_w
        new_state, rec = self.fm.step(self._state, counter, chain_offset)
        self._state = new_state
        self._log_w = None
        dh = -(rec.proposal_log_w - old)
        return new_state.u, FlowMetropolisRecord(
            dH=dh,
            accepted=rec.accepted,
            exp_minus_dH=torch.exp(-dh),
            wall_time=time.perf_counter() - start,
            ess=float(rec.ess),
        )

    def finish_tuning(self) -> None:
        """Nothing to tune."""

    def state_dict(self) -> dict[str, Any]:
        lw = None if self._state is None else [float(x) for x in self._state.log_w.double()]
        return {
            "sampler": "flow_metropolis",
            "log_w": lw,
            "n_accepted": self.fm.n_accepted,
            "n_proposed": self.fm.n_proposed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._log_w = state.get("log_w")
        self._state = None
        self.fm.n_accepted = int(state.get("n_accepted", 0))
        self.fm.n_proposed = int(state.get("n_proposed", 0))
