"""Independence Metropolis with flow proposals (Albergo, Kanwar, Shanahan, PRD 100 (2019) 034515).

Each chain proposes ``U' = F(V')`` with ``V'`` drawn from the prior ``r``; the model density is
``log q(U') = log r(V') - log|det dF/dV|(V')``, and with ``log w = -S(U) - log q(U)`` the
proposal is accepted with probability

    min(1, w(U') / w(U)) = min(1, exp(log w' - log w)).

The per-chain uniform is ``rng.chain_uniform(PURPOSE_FLOW_ACCEPT, counter, B, chain_offset)``
(identical on every rank of a lattice), the prior draw uses ``PURPOSE_PROPOSAL`` with the same
counter, so any process grid makes the same proposals and decisions. The chain is exact for any
invertible flow with a normalised prior; its efficiency is set by how well ``q`` matches
``exp(-S)``. A chain can also start from a given configuration: :meth:`FlowMetropolis.state_of`
evaluates ``log q(U) = log r(F^{-1}(U)) + log|det dF^{-1}/dU|``.

Reported per step: acceptance, and the reweighting ESS of the proposals (over all replicas).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from parallel import broadcast
from parallel.rng import PURPOSE_PROPOSAL, PURPOSE_USER

from ..flows.base import Flow
from ..flows.metrics import ess_from_log_weights
from ..flows.priors import Prior
from ..theory import Theory
from .protocol import Record, metropolis, take_accepted

#: purpose of the accept/reject uniforms (distinct from HMC's ``PURPOSE_ACCEPT``)
PURPOSE_FLOW_ACCEPT = PURPOSE_USER + 2


@dataclass
class FlowState:
    """Current configurations ``u`` (physical) and their ``log w = -S(u) - log q(u)``."""

    u: torch.Tensor
    log_w: torch.Tensor


@dataclass
class FlowMetropolisRecord:
    """What one independence-Metropolis step did, per chain."""

    counter: int
    accepted: torch.Tensor
    acceptance_probability: torch.Tensor
    #: log weights of the proposals (for the ESS and reweighting)
    proposal_log_w: torch.Tensor
    #: reweighting ESS of this step's proposals over all replicas
    ess: float
    wall_time: float

    @property
    def acceptance(self) -> float:
        """Fraction of chains that accepted."""
        return float(self.accepted.double().mean())


class FlowMetropolis:
    """Independence Metropolis sampler with proposals from ``flow`` applied to ``prior``."""

    def __init__(self, theory: Theory, flow: Flow, prior: Prior, rng) -> None:
        self.theory = theory
        self.flow = flow
        self.prior = prior
        self.rng = rng
        self.grid = theory.grid
        self.n_steps = 0
        self.n_accepted = 0
        self.n_proposed = 0

    def propose(
        self, counter: int, batch: int, chain_offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U', log w')`` for a fresh batch of proposals keyed by ``counter``."""
        with torch.no_grad():
            v = self.prior.sample(self.rng, counter, batch, chain_offset, purpose=PURPOSE_PROPOSAL)
            u, logdet = self.flow(v)
            log_q = self.prior.log_prob(v) - logdet
            return u, -self.theory.action(u) - log_q

    def state_of(self, u: torch.Tensor) -> FlowState:
        """The state of given configurations (``log q`` through the inverse flow)."""
        with torch.no_grad():
            v, logdet_inv = self.flow.inverse(u)
            log_q = self.prior.log_prob(v) + logdet_inv
            return FlowState(u, -self.theory.action(u) - log_q)

    def initial_state(self, counter: int, batch: int, chain_offset: int = 0) -> FlowState:
        """Start the chains from one proposal each (a draw from ``q``)."""
        return FlowState(*self.propose(counter, batch, chain_offset))

    def step(
        self, state: FlowState, counter: int, chain_offset: int = 0
    ) -> tuple[FlowState, FlowMetropolisRecord]:
        """One independence-Metropolis step of every chain; ``counter`` keys all draws."""
        start = time.perf_counter()
        batch = state.u.shape[0]
        u_new, lw_new = self.propose(counter, batch, chain_offset)
        lw_new = broadcast(lw_new, self.grid)
        r = self.rng.chain_uniform(PURPOSE_FLOW_ACCEPT, counter, batch, chain_offset)
        r = r.to(device=lw_new.device)
        with torch.no_grad():
            # the shared Metropolis test with dH = -(log w' - log w)
            dh = -(lw_new - state.log_w)
            decision = metropolis(dh, r.to(dh.dtype), bad=~torch.isfinite(lw_new))
            accepted, prob = decision.accepted, decision.acceptance_probability
            u = take_accepted(accepted, u_new, state.u)
            lw = torch.where(accepted, lw_new, state.log_w)
        self.n_steps += 1
        self.n_accepted += int(accepted.sum())
        self.n_proposed += batch
        rec = FlowMetropolisRecord(
            counter=int(counter),
            accepted=accepted,
            acceptance_probability=prob,
            proposal_log_w=lw_new,
            ess=ess_from_log_weights(lw_new, self.grid),
            wall_time=time.perf_counter() - start,
        )
        return FlowState(u, lw), rec

    @property
    def acceptance(self) -> float:
        """Acceptance rate of this sampler so far (this replica's chains)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")


class FlowMetropolisSampler:
    """Flow independence Metropolis behind the sampler protocol (:mod:`.protocol`).

    The chain variable is the physical field ``U``. The record's ``dH`` is ``-(log w' -
    log w)``, so ``exp(-dH)`` is the Metropolis ratio and ``<exp(-dH)> = 1`` holds as for HMC;
    ``n_steps = 0``; ``extra["ess"]`` is the reweighting ESS of the proposals. The per-chain
    log weight ``log w = -S(U) - log q(U)`` of the current state is part of
    :meth:`state_dict`, so a resumed chain continues bit for bit.
    """

    name = "flow_metropolis"

    def __init__(self, fm: FlowMetropolis) -> None:
        self.fm = fm
        self._state: FlowState | None = None
        self._log_w: list[float] | None = None

    def to_physical(self, u: torch.Tensor) -> torch.Tensor:
        """The chain variable is the physical field."""
        return u

    def from_physical(self, u: torch.Tensor) -> torch.Tensor:
        """The chain variable is the physical field."""
        return u

    def trajectory(
        self, u: torch.Tensor, counter: int, chain_offset: int = 0, *, tune: bool = False
    ) -> tuple[torch.Tensor, Record]:
        """One independence-Metropolis step of every chain (``tune`` is ignored)."""
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
        # a non-finite proposal, or a broken current state (its dH is NaN: never accepted)
        bad = ~torch.isfinite(rec.proposal_log_w) | ~torch.isfinite(dh)
        record = Record(
            counter=int(counter),
            dH=dh,
            accepted=rec.accepted,
            acceptance_probability=rec.acceptance_probability,
            exp_minus_dH=torch.exp(-dh),
            nonfinite=bad,
            n_nonfinite=int(bad.sum()),
            wall_time=time.perf_counter() - start,
            extra={"ess": float(rec.ess)},
        )
        return new_state.u, record

    def finish_tuning(self) -> None:
        """Nothing to tune."""

    def state_dict(self) -> dict[str, Any]:
        """Log weights of the current states and acceptance counters, for checkpoints."""
        lw = None if self._state is None else [float(x) for x in self._state.log_w.double()]
        return {
            "sampler": "flow_metropolis",
            "log_w": lw,
            "n_accepted": self.fm.n_accepted,
            "n_proposed": self.fm.n_proposed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the log weights are re-attached at the next step)."""
        self._log_w = state.get("log_w")
        self._state = None
        self.fm.n_accepted = int(state.get("n_accepted", 0))
        self.fm.n_proposed = int(state.get("n_proposed", 0))
