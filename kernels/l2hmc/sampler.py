"""The L2HMC sampler: an exact Metropolis-Hastings chain with a learned proposal map.

Extended state ``xi = (x, v, d)``, target ``p(xi) ~ exp(-S(x) - K(v)) / 2``,
``K = (1/2) sum v^2``. One trajectory of a batch of chains (:class:`L2HMC.trajectory`):

1. ``v`` standard normal (``theory.random_momentum``, site-keyed) and the direction
   ``d = +1`` if ``u_d < 1/2`` else ``-1``, ``u_d = chain_uniform(PURPOSE_DIRECTION, counter)``;
2. proposal ``xi' = (F^d(x, v), -d)`` with ``F = `` :meth:`L2HMCModel.forward_map` and
   ``F^{-1} = `` :meth:`L2HMCModel.inverse_map`. ``xi -> xi'`` is an involution, so the
   Metropolis-Hastings ratio is ``exp(-dH) |det dF^d/d(x, v)|``, ``dH = H(xi') - H(xi)``;
3. accept iff ``u < exp(-dH + log|J|)`` (:func:`kernels.samplers.protocol.metropolis`,
   ``u = chain_uniform(PURPOSE_ACCEPT, counter)``); ``v`` and ``d`` are then discarded.

Theories with auxiliary fields (the Schwinger model's pseudofermions) draw them at ``x`` before
step 2 (``theory.refresh``, counter = trajectory number, as HMC does); they are fixed during the
proposal, so ``H`` includes ``S_F = phi^+ (D^+ D)^{-1} phi`` and every v-update uses the full
force, pseudofermion force included; the CG work is in the record's ``costs``.

``dH``, ``log|J|`` and the non-finite flags are global sums broadcast from the domain root, so
every rank of a lattice takes the same decision. Accepted U(1) fields are wrapped into
``(-pi, pi]`` (``theory.project``); the proposal map commutes with ``2 pi`` shifts, so this
changes nothing but the representative.

Record: the shared core (``log_jacobian`` = ``log|J|``, ``n_force = N + 1``, ``n_steps = N``,
``step_size`` = mean ``eps_x``) and in ``extra``: ``direction`` and, for 2D U(1), the
proposal's charge changes ``dQ_int = Q_int(x') - Q_int(x)`` (geometric, rounded) and
``dQ_sin = Q(x') - Q(x)`` (sine definition), and ``action`` (of the returned field; for the
Schwinger model with the trajectory's pseudofermions).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from parallel import broadcast, global_sum, lattice_sum
from parallel.rng import PURPOSE_USER

from ..samplers.protocol import (
    NonFiniteTrajectoryWarning,
    Record,
    metropolis,
    report_nonfinite,
    take_accepted,
)
from ..theory import Theory
from .layers import L2HMCModel
from .networks import U1_LIKE

#: site-keyed RNG purposes of L2HMC (docs: PURPOSE_USER + 5, 6, 7)
PURPOSE_DIRECTION = PURPOSE_USER + 5
PURPOSE_L2HMC_ACCEPT = PURPOSE_USER + 6
PURPOSE_L2HMC_TRAIN = PURPOSE_USER + 7


class L2HMCNonFiniteWarning(NonFiniteTrajectoryWarning):
    """Some L2HMC chains had a non-finite proposal, energy change or log-Jacobian; rejected
    (the shared :class:`NonFiniteTrajectoryWarning`, raised by
    :func:`kernels.samplers.protocol.report_nonfinite`)."""


def directions(rng: Any, purpose: int, counter: int, batch: int, chain_offset: int) -> torch.Tensor:
    """``d = +-1`` per chain (float64), ``+1`` iff the chain's uniform is below 1/2."""
    u = rng.chain_uniform(purpose, counter, batch, chain_offset)
    return torch.where(u < 0.5, 1.0, -1.0).to(torch.float64)


def charge_change(theory: Theory, x0: torch.Tensor, x1: torch.Tensor) -> dict[str, torch.Tensor]:
    """``dQ_int`` (geometric, rounded) and ``dQ_sin`` between two 2D U(1) fields; ``{}`` else."""
    if getattr(theory, "name", "") not in U1_LIKE or theory.grid.ndim != 2:
        return {}
    q_int = theory.topological_charge_int(x1) - theory.topological_charge_int(x0)
    dq_sin = theory.topological_charge(x1) - theory.topological_charge(x0)
    return {"dQ_int": torch.round(q_int) + 0.0, "dQ_sin": dq_sin}  # + 0.0: no -0.0


def propose(
    model: L2HMCModel,
    theory: Theory,
    x: torch.Tensor,
    v: torch.Tensor,
    direction: torch.Tensor,
    action_scale: float = 1.0,
) -> dict[str, Any]:
    """The L2HMC proposal of every chain, differentiable (training) or not (``no_grad``).

    Returns ``x1, v1`` and the *global* per-chain ``log_jacobian``, ``dH`` (of the action
    ``action_scale * S``), ``n_force`` and the unscaled actions ``action0 = S(x)``,
    ``action1 = S(x1)``. The theory's auxiliary fields (pseudofermions) must have been drawn
    for ``x`` (``theory.refresh``); the force of every v-update is the whole ``dS/dx``, the
    pseudofermion force included. Used by the sampler and the trainer alike.
    """
    grid = theory.grid
    gamma = float(action_scale)

    def force(field: torch.Tensor) -> torch.Tensor:
        f = theory.force(field)
        return f if gamma == 1.0 else gamma * f

    x1, v1, logj_sites, n_force = model.directed_map(x, v, direction, force)
    logj = lattice_sum(logj_sites.movedim(1, -1), grid, 1)  # all sites and components
    s0, s1 = theory.action(x), theory.action(x1)
    h0 = gamma * s0 + theory.kinetic(v)
    h1 = gamma * s1 + theory.kinetic(v1)
    return {
        "x1": x1,
        "v1": v1,
        "log_jacobian": logj,
        "dH": h1 - h0,
        "n_force": n_force,
        "action0": s0,
        "action1": s1,
    }


def model_fits(model_theory: str, theory: str) -> bool:
    """Whether a model built for ``model_theory`` can drive ``theory``: the same theory, or a
    U(1) model on the Schwinger model (same link angles and layers; the networks then see the
    whole force, pseudofermions included, and the chain is exact whatever they learned)."""
    return model_theory == theory or (model_theory == "u1" and theory == "schwinger")


class L2HMC:
    """L2HMC sampler of the sampler protocol (:mod:`kernels.samplers.protocol`).

    ``model`` is an :class:`L2HMCModel` of the theory (its parameters are cast to the theory's
    dtype: float64 sampling). ``project`` wraps accepted fields (see ``theory.project``).
    """

    name = "l2hmc"

    def __init__(self, theory: Theory, model: L2HMCModel, rng: Any, project: bool = True) -> None:
        if not model_fits(model.theory_name, theory.name):
            raise ValueError(
                f"L2HMC model was built for theory {model.theory_name!r}, not {theory.name!r}"
            )
        if tuple(model.grid.shape) != tuple(theory.grid.shape):
            raise ValueError(
                f"L2HMC model lattice {list(model.grid.shape)} differs from the theory's "
                f"{list(theory.grid.shape)}"
            )
        self.theory = theory
        real = theory.dtype.to_real() if theory.dtype.is_complex else theory.dtype
        self.model = model.to(dtype=real, device=theory.device)
        self.model.requires_grad_(False)
        self.rng = rng
        self.project = bool(project)
        self.n_trajectories = 0
        self.n_nonfinite_total = 0

    @property
    def grid(self):
        """The theory's process grid."""
        return self.theory.grid

    # ------------------------------------------------------------ protocol
    def to_physical(self, state: torch.Tensor) -> torch.Tensor:
        """The chain variable is the field itself."""
        return state

    def from_physical(self, field: torch.Tensor) -> torch.Tensor:
        """The chain variable is the field itself."""
        return field

    def finish_tuning(self) -> None:
        """Nothing to tune: the step sizes are learned."""

    def trajectory(
        self,
        state: torch.Tensor,
        counter: int,
        chain_offset: int = 0,
        *,
        tune: bool = False,
    ) -> tuple[torch.Tensor, Record]:
        """One L2HMC update of every chain in ``state`` (see the module docstring)."""
        start = time.perf_counter()
        theory, grid = self.theory, self.grid
        x = state.detach()
        batch = x.shape[0]
        v = theory.random_momentum(self.rng, counter, batch, chain_offset)
        d = directions(self.rng, PURPOSE_DIRECTION, counter, batch, chain_offset)
        # auxiliary fields (pseudofermions) for this trajectory, drawn at the start field
        theory.reset_costs()
        theory.refresh(x, self.rng, counter, chain_offset)
        with torch.no_grad():
            prop = propose(self.model, theory, x, v, d.to(x.device))
            x1, dh, logj = prop["x1"], prop["dH"], prop["log_jacobian"]
            finite_local = torch.isfinite(x1.reshape(batch, -1)).all(dim=1)
            bad = global_sum((~finite_local).to(dh.dtype), grid) > 0
            bad = bad | ~torch.isfinite(dh) | ~torch.isfinite(logj)
            dh, logj, bad = broadcast(dh, grid), broadcast(logj, grid), broadcast(bad, grid)
            u = self.rng.chain_uniform(PURPOSE_L2HMC_ACCEPT, counter, batch, chain_offset)
            dec = metropolis(dh, u, log_jacobian=logj, bad=bad)
            accepted = dec.accepted
            extra: dict[str, Any] = {"direction": d}
            extra.update(charge_change(theory, x, torch.where(_rows(bad, x), x, x1)))
            new = take_accepted(accepted, x1, x, theory.project if self.project else None)
            extra["action"] = torch.where(accepted, prop["action1"], prop["action0"])
        n_bad = report_nonfinite(
            "L2HMC", counter, bad, chain_offset, grid.is_root, L2HMCNonFiniteWarning
        )
        self.n_nonfinite_total += n_bad
        self.n_trajectories += 1
        eps_v, eps_x = self.model.step_sizes()
        record = Record(
            counter=int(counter),
            dH=dh,
            accepted=accepted,
            acceptance_probability=dec.acceptance_probability,
            exp_minus_dH=dec.exp_minus_dH,
            nonfinite=bad,
            n_nonfinite=n_bad,
            step_size=float(sum(eps_x) / len(eps_x)),
            n_steps=self.model.n_layers,
            n_force=int(prop["n_force"]),
            wall_time=time.perf_counter() - start,
            log_jacobian=logj,
            extra=extra,
            costs=theory.costs(),
        )
        return new, record

    # ------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Counters for checkpoints (the weights live in the model registry)."""
        return {
            "n_trajectories": self.n_trajectories,
            "n_nonfinite_total": self.n_nonfinite_total,
            "n_layers": self.model.n_layers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.n_trajectories = int(state.get("n_trajectories", 0))
        self.n_nonfinite_total = int(state.get("n_nonfinite_total", 0))


def _rows(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.to(like.device).view((like.shape[0],) + (1,) * (like.ndim - 1))
