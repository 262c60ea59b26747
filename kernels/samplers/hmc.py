"""Hybrid Monte Carlo for any :class:`kernels.theory.Theory`, batched and distributed.

One trajectory for a batch of ``B`` independent chains (Duane, Kennedy, Pendleton, Roweth,
Phys. Lett. B195 (1987) 216):

1. momenta ``pi ~ exp(-K)`` from ``theory.random_momentum(rng, counter, B, chain_offset)``
   (keyed by global site, so any process grid draws the same global field); the auxiliary
   fields of the theory's action terms (pseudofermions, :mod:`kernels.action`) are drawn by
   ``theory.refresh(phi, rng, counter, chain_offset)`` and the terms' work counters reset;
2. ``H0 = K(pi) + S(phi)`` (``S`` the sum of the terms, with those auxiliary fields);
   integrate the equations of motion over the trajectory length
   with the :class:`kernels.integrators.Integrator`; ``H1 = K(pi') + S(phi')``;
3. Metropolis: chain ``b`` accepts the proposal iff ``u_b < exp(-dH_b)``,
   ``dH = H1 - H0``, ``u_b = rng.chain_uniform(PURPOSE_ACCEPT, counter, B, chain_offset)``.
   ``dH`` is a global sum and ``u`` is the same on every rank; in addition ``dH`` and the
   decisions are broadcast from the domain root, so all ranks of a lattice take the same
   decision even if the all-reduce were not bitwise identical everywhere. The test is the
   shared :func:`kernels.samplers.protocol.metropolis`; HMC implements the sampler protocol
   (``name`` is ``trivialized_hmc`` on a flow-transformed theory, whose ``to_physical`` gives
   ``U = F(V)``), and its record carries the per-term ``costs`` (e.g. CG iterations).

Non-finite policy: a chain whose force (on any rank, any level, any step) or ``dH`` is NaN/Inf
is rejected (keeps its old field), counted in the record (``nonfinite``, ``n_nonfinite``) and in
:attr:`HMC.n_nonfinite_total`, and reported with a :class:`NonFiniteTrajectoryWarning`
(domain root only). The other chains of the batch are unaffected (all operations are per
chain).

Accepted proposals pass through ``theory.project`` (reunitarisation; off with
``project=False``): the integrator itself never projects, so it stays exactly reversible.

Reversibility check (optional): from the end point, flip the momenta, integrate the same time
again and compare with the start: ``max |phi_back - phi_0|`` (global, per chain) and
``|H_back - H0|``; costs one more trajectory.

Step-size tuning (thermalisation only): with ``target_acceptance`` set, ``trajectory(...,
tune=True)`` feeds the mean acceptance probability ``<min(1, exp(-dH))>`` (averaged over the
chains of all replicas, so every rank keeps one step size) to a dual-averaging controller on
``log eps`` (:mod:`kernels.samplers.stepsize`). The trajectory length stays fixed, so the step
size is quantised: ``n_steps = round(tau / eps)`` outer steps of size ``tau / n_steps``.
:meth:`HMC.finish_tuning` freezes the averaged step size. The tuned step count and the
controller state are in :meth:`HMC.state_dict` for checkpoints.

Replicas: ``chain_offset`` selects the chains' random streams; give each replica group its
own range (e.g. ``grid.replica * B``), or replicas run identical chains.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from mpi4py import MPI

from parallel import broadcast, global_max, global_sum
from parallel.rng import PURPOSE_ACCEPT

from ..integrators import Integrator
from ..theory import Theory
from .protocol import (
    NonFiniteTrajectoryWarning,  # noqa: F401  (re-exported: kernels.samplers.hmc API)
    Record,
    metropolis,
    report_nonfinite,
    take_accepted,
)
from .stepsize import DualAveraging


@dataclass(kw_only=True)
class TrajectoryRecord(Record):
    """What one HMC trajectory did: the shared :class:`Record` core plus the HMC specifics.

    All per-chain tensors are global quantities, identical on every rank of a domain group.
    """

    trajectory_length: float
    #: action ``S`` of the returned field, per chain
    action: torch.Tensor
    #: force evaluations per integrator level (outermost first)
    force_evaluations: list[int] = field(default_factory=list)
    #: True when the step size was being tuned during this trajectory
    tuning: bool = False


class HMC:
    """Hybrid Monte Carlo sampler.

    Parameters
    ----------
    theory:
        Any :class:`Theory` (also a flow-transformed one): ``action``, ``kinetic``,
        ``random_momentum`` are used here; forces and drifts by the integrator.
    integrator:
        The molecular-dynamics integrator (its outer level's ``n_steps`` is the initial
        step count).
    rng:
        A :class:`parallel.rng.SiteRNG`.
    trajectory_length:
        ``tau``; default ``integrator.trajectory_length``.
    target_acceptance:
        Target of the step-size tuning (``None``: no tuning).
    reversibility_every:
        Run the reversibility check on trajectories whose ``counter`` is a multiple of this
        (0: never, unless asked per call).
    max_steps:
        Upper bound of the tuned outer step count.
    project:
        Pass accepted proposals through ``theory.project`` (reunitarise SU(N) links, wrap
        U(1) angles), so rounding errors do not accumulate over a long run; rejected chains
        keep their field bit for bit.
    """

    def __init__(
        self,
        theory: Theory,
        integrator: Integrator,
        rng: Any,
        trajectory_length: float | None = None,
        target_acceptance: float | None = None,
        reversibility_every: int = 0,
        max_steps: int = 10_000,
        project: bool = True,
    ) -> None:
        self.theory = theory
        self.integrator = integrator
        self.rng = rng
        tau = integrator.trajectory_length if trajectory_length is None else trajectory_length
        if not tau > 0:
            raise ValueError(f"trajectory_length must be > 0, got {tau}")
        self.trajectory_length = float(tau)
        self.n_steps = integrator.n_steps
        self.max_steps = int(max_steps)
        self.project = bool(project)
        self.reversibility_every = int(reversibility_every)
        if target_acceptance is not None and not 0.0 < target_acceptance < 1.0:
            raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
        self.target_acceptance = target_acceptance
        self.tuner: DualAveraging | None = None
        self.n_trajectories = 0
        self.n_nonfinite_total = 0

    # ------------------------------------------------------------ protocol
    @property
    def name(self) -> str:
        """``trivialized_hmc`` on a flow-transformed theory, else ``hmc``."""
        return "trivialized_hmc" if hasattr(self.theory, "flow") else "hmc"

    def to_physical(self, field: torch.Tensor) -> torch.Tensor:
        """The measured field: ``U = F(V)`` for a transformed theory, else the field itself."""
        fn = getattr(self.theory, "to_physical", None)
        return field if fn is None else fn(field)

    def from_physical(self, field: torch.Tensor) -> torch.Tensor:
        """The chain variable of a physical field (``V = F^{-1}(U)`` or the field itself)."""
        fn = getattr(self.theory, "from_physical", None)
        return field if fn is None else fn(field)

    # ------------------------------------------------------------ step size
    @property
    def grid(self):
        """The process grid of the theory."""
        return self.theory.grid

    @property
    def step_size(self) -> float:
        """Outer step size ``trajectory_length / n_steps``."""
        return self.trajectory_length / self.n_steps

    def set_step_size(self, eps: float) -> None:
        """Use the step size closest to ``eps`` that divides the trajectory length."""
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"step size must be finite and > 0, got {eps}")
        self.n_steps = int(min(max(round(self.trajectory_length / eps), 1), self.max_steps))

    def finish_tuning(self) -> None:
        """End the adaptation: freeze the dual-averaged step size."""
        if self.tuner is not None:
            self.set_step_size(self.tuner.final_step_size)

    def _tune(self, acceptance_probability: torch.Tensor) -> None:
        if self.target_acceptance is None:
            raise ValueError("tune=True needs HMC(target_acceptance=...)")
        if self.tuner is None:
            self.tuner = DualAveraging(self.step_size, self.target_acceptance)
        # one step size everywhere: average over the chains of all replica groups
        local = float(acceptance_probability.double().mean())
        comm = self.grid.replica_comm
        mean = comm.allreduce(local, op=MPI.SUM) / comm.Get_size()
        self.set_step_size(self.tuner.update(mean))

    # ------------------------------------------------------------ trajectory
    def hamiltonian(self, field: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
        """``H = K + S`` per chain (global)."""
        with torch.no_grad():
            return self.theory.kinetic(momentum) + self.theory.action(field)

    def trajectory(
        self,
        field: torch.Tensor,
        counter: int,
        chain_offset: int = 0,
        *,
        tune: bool = False,
        check_reversibility: bool | None = None,
    ) -> tuple[torch.Tensor, TrajectoryRecord]:
        """One HMC trajectory of every chain in the batch ``field`` (shape ``(B, ...)``).

        ``counter`` keys the momentum and accept/reject draws (use the trajectory number;
        never reuse one within a run). Returns the new fields and the record.
        """
        start = time.perf_counter()
        theory, grid = self.theory, self.grid
        batch = field.shape[0]
        field = field.detach()
        tau, n_steps, eps = self.trajectory_length, self.n_steps, self.step_size

        p0 = theory.random_momentum(self.rng, counter, batch, chain_offset)
        # auxiliary fields (pseudofermions) for this trajectory, drawn at the start field
        theory.reset_costs()
        theory.refresh(field, self.rng, counter, chain_offset)
        # the actions from the integrator's resident layout where the theory has one (the
        # same numbers, without converting the links: kernels.theory.ResidentMD.action);
        # elsewhere S(start) before the trajectory, as always (solvers keep state)
        resident = self.integrator.theory is theory and theory.has_resident_md()
        s0 = None
        if not resident:
            with torch.no_grad():
                s0 = theory.action(field)
        res = self.integrator.integrate(field, p0, tau, n_steps, actions=resident)
        proposal = res.field.detach()
        with torch.no_grad():
            if s0 is None:
                s0 = theory.action(field) if res.initial_action is None else res.initial_action
            h0 = theory.kinetic(p0) + s0
            s1 = theory.action(proposal) if res.final_action is None else res.final_action
            dh = (theory.kinetic(res.momentum) + s1) - h0
        bad_force = global_sum(res.nonfinite.to(dh.dtype), grid) > 0
        bad = bad_force | ~torch.isfinite(dh)
        # the decision of the domain root is the decision of the lattice
        dh, bad = broadcast(dh, grid), broadcast(bad, grid)

        u = self.rng.chain_uniform(PURPOSE_ACCEPT, counter, batch, chain_offset)
        decision = metropolis(dh, u, bad=bad)
        accepted, prob, exp_mdh = (
            decision.accepted,
            decision.acceptance_probability,
            decision.exp_minus_dH,
        )
        new_field = take_accepted(
            accepted, proposal, field, theory.project if self.project else None
        )
        action = torch.where(accepted, s1, s0)

        rev_field = rev_dh = None
        if check_reversibility is None:
            every = self.reversibility_every
            check_reversibility = every > 0 and counter % every == 0
        if check_reversibility:
            rev_field, rev_dh = self._reversibility(field, p0, h0, res, tau, n_steps)

        n_bad = report_nonfinite("HMC", counter, bad, chain_offset, grid.is_root)
        self.n_nonfinite_total += n_bad
        if tune:
            self._tune(prob)
        self.n_trajectories += 1
        record = TrajectoryRecord(
            counter=int(counter),
            dH=dh,
            accepted=accepted,
            acceptance_probability=prob,
            exp_minus_dH=exp_mdh,
            nonfinite=bad,
            n_nonfinite=n_bad,
            step_size=eps,
            n_steps=n_steps,
            n_force=int(sum(res.force_evaluations)),
            trajectory_length=tau,
            wall_time=time.perf_counter() - start,
            action=action,
            force_evaluations=res.force_evaluations,
            tuning=bool(tune),
            reversibility_field_error=rev_field,
            reversibility_dH_error=rev_dh,
            costs=theory.costs(),
        )
        return new_field, record

    def _reversibility(
        self,
        field: torch.Tensor,
        p0: torch.Tensor,
        h0: torch.Tensor,
        res: Any,
        tau: float,
        n_steps: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        back = self.integrator.integrate(res.field, -res.momentum, tau, n_steps)
        batch = field.shape[0]
        with torch.no_grad():
            diff = (back.field - field).abs().reshape(batch, -1).amax(dim=1)
            field_err = global_max(diff, self.grid)
            dh_err = (self.hamiltonian(back.field, back.momentum) - h0).abs()
        return broadcast(field_err, self.grid), broadcast(dh_err, self.grid)

    # ------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Sampler state for checkpoints (plain Python values)."""
        return {
            "trajectory_length": self.trajectory_length,
            "n_steps": self.n_steps,
            "step_size": self.step_size,
            "target_acceptance": self.target_acceptance,
            "tuner": None if self.tuner is None else self.tuner.state_dict(),
            "n_trajectories": self.n_trajectories,
            "n_nonfinite_total": self.n_nonfinite_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; with another trajectory length the step size is kept."""
        if float(state["trajectory_length"]) == self.trajectory_length:
            self.n_steps = int(state["n_steps"])
        else:
            self.set_step_size(float(state["step_size"]))
        tuner = state.get("tuner")
        self.tuner = None if tuner is None else DualAveraging.from_state_dict(tuner)
        self.n_trajectories = int(state.get("n_trajectories", 0))
        self.n_nonfinite_total = int(state.get("n_nonfinite_total", 0))
