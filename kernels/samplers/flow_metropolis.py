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

import torch

from parallel import broadcast
from parallel.rng import PURPOSE_PROPOSAL, PURPOSE_USER

from ..flows.base import Flow
from ..flows.metrics import ess_from_log_weights
from ..flows.priors import Prior
from ..theory import Theory

#: purpose of the accept/reject uniforms (distinct from HMC's ``PURPOSE_ACCEPT``)
PURPOSE_FLOW_ACCEPT = PURPOSE_USER + 2


@dataclass
class FlowState:
    """Current configurations ``u`` (physical) and their ``log w = -S(u) - log q(u)``."""

    u: torch.Tensor
    log_w: torch.Tensor


@dataclass
class FlowMetropolisRecord:
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
            log_ratio = lw_new - state.log_w
            prob = torch.exp(torch.clamp(log_ratio, max=0.0))
            prob = torch.where(torch.isfinite(lw_new), prob, torch.zeros_like(prob))
            accepted = (r.to(prob.dtype) < prob) & torch.isfinite(lw_new)
            mask = accepted.view((batch,) + (1,) * (state.u.ndim - 1))
            u = torch.where(mask, u_new, state.u)
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
