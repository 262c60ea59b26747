"""Joint flow on ``(U, phi)`` of the Schwinger model (Abbott et al., arXiv:2207.08945): a
marginal gauge flow ``U = F(V)`` composed with the conditional pseudofermion flow
``phi = f_c(chi | U)`` of :mod:`.schwinger_pf`, its reverse-KL training and independence
Metropolis on ``(U, phi)``.

Target (docs/conventions.md, "Schwinger model"): with ``M = D^+ D`` (the operator of the
theory's pseudofermion, whose heatbath is ``phi = D^+ chi``, so ``<phi phi^+> = M``),

    p(U, phi) = exp(-S(U, phi)) / Z,   S(U, phi) = S_G(U) + phi^+ M^{-1} phi + 2 V log(pi),

normalised so that ``int d^{4V}phi exp(-S) = exp(-S_G) det M``: ``Z`` is the partition
function of the marginal ``exp(-S_G) det(D^+ D)`` and ``U`` is distributed like the Nf = 2
theory. (Hasenbusch kappas of the theory are not used: one pseudofermion of ``D(kappa)``.)

Model: ``V ~`` Haar, ``chi ~`` complex Gaussian (:class:`.schwinger_pf.ComplexGaussianPrior`),

    log q(U, phi) = log r(V) + log r(chi) - log|det dF/dV| - log|det d f_c / d chi|.

Loss ``E_q[log q + S] = KL(q || p) - log Z`` (as :mod:`.train`). The pseudofermion action
costs one CG on ``M`` per sample (:func:`pseudofermion_action`): the solve runs outside
autograd and the backward pass uses its solution ``X = M^{-1} phi`` (no differentiation through
the solver): ``dS/dphi = 2 X`` (real and imaginary parts) and ``dS/dtheta`` the analytic
fermion force ``-G[D X, X; kappa]`` of :mod:`kernels.theories.schwinger`.

Independence Metropolis (:class:`JointFlowMetropolis`): proposals ``(U', phi')`` from the
joint flow, accepted with ``min(1, w'/w)``, ``log w = -S(U, phi) - log q(U, phi)``; the chain
variable reported is ``U`` (exact for any flow; ``phi`` is only carried in ``log w``).
A chain started from a given ``U`` gets ``phi = D^+ chi`` from the heatbath and ``log q`` through
the exact inverses of both flows.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from parallel import ProcessGrid
from parallel.rng import PURPOSE_PROPOSAL, PURPOSE_USER

from ..fermions.cg import conjugate_gradient, redot
from ..samplers.flow_metropolis import FlowMetropolis, FlowState
from ..theories.schwinger import PURPOSE_PSEUDOFERMION, Schwinger, hopping_derivative
from .base import Flow, build_flow
from .priors import PURPOSE_TRAIN, UniformAnglePrior
from .schwinger_pf import ComplexGaussianPrior, ConditionalPseudofermionFlow, pseudofermion_flow
from .train import Trainer

#: RNG purposes of the ``chi`` draws (training, proposals); docs/rng.md
PURPOSE_CHI_TRAIN = PURPOSE_USER + 12
PURPOSE_CHI_PROPOSAL = PURPOSE_USER + 13


class CGCounter:
    """CG iterations and failures summed over the solves of :func:`pseudofermion_action`."""

    def __init__(self) -> None:
        self.solves = 0
        self.iterations = 0
        self.failures = 0


class _PseudofermionAction(torch.autograd.Function):
    """``phi^+ M^{-1} phi`` per chain with the CG solution reused in the backward pass."""

    @staticmethod
    def forward(ctx, phi, theta, theory, counter):  # type: ignore[override]
        op = theory.dirac(theta.detach())
        res = conjugate_gradient(
            op.normal, phi.detach(), theory.grid, theory.cg_tol, theory.cg_max_iter
        )
        if counter is not None:
            counter.solves += int(phi.shape[0])
            counter.iterations += int(res.iterations.sum())
            counter.failures += int((~res.converged).sum())
        s = redot(phi.detach(), res.x, theory.grid)
        s = torch.where(res.converged, s, torch.full_like(s, math.nan))
        ctx.save_for_backward(res.x, theta.detach())
        ctx.theory = theory
        return s.to(theta.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, theta = ctx.saved_tensors
        g = grad.view(-1, 1, 1, 1)
        grad_phi = grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_phi = 2.0 * x * g.to(x.real.dtype)
        if ctx.needs_input_grad[1]:
            th = ctx.theory
            op = th.dirac(theta)
            force = -hopping_derivative(op, op.apply(x), x, th.kappa)
            grad_theta = force.to(theta.dtype) * g
        return grad_phi, grad_theta, None, None


def pseudofermion_action(
    theory: Schwinger, theta: torch.Tensor, phi: torch.Tensor, counter: CGCounter | None = None
) -> torch.Tensor:
    """``phi^+ (D^+ D)^{-1} phi`` per chain (global), differentiable in ``phi`` and ``theta``
    (one CG per chain; NaN where it does not converge)."""
    return _PseudofermionAction.apply(phi, theta, theory, counter)


def joint_action(
    theory: Schwinger, theta: torch.Tensor, phi: torch.Tensor, counter: CGCounter | None = None
) -> torch.Tensor:
    """``S(U, phi) = S_G + phi^+ M^{-1} phi + 2 V log(pi)`` (module docstring)."""
    const = 2 * theory.grid.volume * math.log(math.pi)
    return theory.gauge_action(theta) + pseudofermion_action(theory, theta, phi, counter) + const


class JointFlow(Flow):
    """``(V, chi) -> (U, phi) = (F(V), f_c(chi | F(V)))`` with the summed log-det.

    ``forward(v, chi) -> (theta, phi, logdet)``; ``inverse(theta, phi) -> (v, chi,
    logdet_inverse)``. The gauge flow is any U(1) angle flow (:mod:`.u1`).
    """

    first = 2

    def __init__(self, gauge: Flow, fermion: ConditionalPseudofermionFlow) -> None:
        super().__init__(gauge.grid)
        self.gauge = gauge
        self.fermion = fermion
        self.periodic = gauge.periodic

    def forward(self, v: torch.Tensor, chi: torch.Tensor):  # type: ignore[override]
        """``(theta, phi, log|det|)`` (global log-det per chain)."""
        theta, ld_g = self.gauge(v)
        phi, ld_f = self.fermion(chi, theta)
        return theta, phi, ld_g + ld_f

    def inverse(self, theta: torch.Tensor, phi: torch.Tensor):  # type: ignore[override]
        """``(v, chi, log|det d(v, chi)/d(theta, phi)|)``."""
        chi, ld_f = self.fermion.inverse(phi, theta)
        v, ld_g = self.gauge.inverse(theta)
        return v, chi, ld_g + ld_f


def schwinger_joint_flow(
    grid: ProcessGrid,
    gauge: dict[str, Any] | None = None,
    pf_layers: int = 4,
    pf_hidden: int = 8,
    init_kappa: float = 0.0,
    dtype: str | torch.dtype = "float64",
) -> JointFlow:
    """A joint flow: the gauge flow ``gauge`` (an architecture record ``{"builder", "kwargs"}``
    of a U(1) flow; default a small NCP flow) and a conditional pseudofermion flow of
    ``pf_layers`` parity layers (``init_kappa``: start at the heatbath hopping term)."""
    dt = str(dtype).removeprefix("torch.")
    gauge = gauge or {"builder": "kernels.flows.u1:u1_ncp_flow", "kwargs": {"n_layers": 8}}
    gauge = {"builder": gauge["builder"], "kwargs": {**gauge.get("kwargs", {}), "dtype": dt}}
    fermion = pseudofermion_flow(grid, pf_layers, pf_hidden, init_kappa, dt)
    flow = JointFlow(build_flow(gauge, grid), fermion)
    flow.architecture = {
        "builder": "kernels.flows.schwinger_joint:schwinger_joint_flow",
        "kwargs": {
            "gauge": gauge,
            "pf_layers": int(pf_layers),
            "pf_hidden": int(pf_hidden),
            "init_kappa": float(init_kappa),
            "dtype": dt,
        },
    }
    return flow


def _priors(theory: Schwinger):
    real = theory.dtype
    return (
        UniformAnglePrior(theory.grid, (2,), dtype=real, device=theory.device),
        ComplexGaussianPrior(theory.grid, real, theory.device),
    )


class JointTrainer(Trainer):
    """Reverse-KL training of a :class:`JointFlow` on ``p(U, phi)`` (module docstring); the
    optimiser, schedule, annealing, metrics and checkpoints of :class:`.train.Trainer`.
    ``cg`` counts the CG work."""

    def __init__(self, flow: JointFlow, theory: Schwinger, config=None, rng=None) -> None:
        prior, self.chi_prior = _priors(theory)
        super().__init__(flow, theory, config, prior=prior, rng=rng)
        self.cg = CGCounter()

    def _sample(self, counter: int, batch: int, purposes: tuple[int, int]):
        off = self.grid.replica * batch
        v = self.prior.sample(self.rng, counter, batch, off, purpose=purposes[0])
        chi = self.chi_prior.sample(self.rng, counter, batch, off, purposes[1])
        return v, chi

    def loss_terms(self, step: int, theory=None, need_v_grad: bool = False):
        """Joint prior batch of ``step``, flowed: ``v, chi, u, phi, log_q, action, loss``."""
        if need_v_grad:
            raise ValueError("the joint trainer has no trivialized-force metrics")
        theory = theory or self.theory_at(step)
        v, chi = self._sample(step, self.config.batch, (PURPOSE_TRAIN, PURPOSE_CHI_TRAIN))
        u, phi, logdet = self.flow(v, chi)
        log_q = self.prior.log_prob(v) + self.chi_prior.log_prob(chi) - logdet
        action = joint_action(theory, u, phi, self.cg)
        return {
            "v": v,
            "chi": chi,
            "u": u,
            "phi": phi,
            "logdet": logdet,
            "log_q": log_q,
            "action": action,
            "loss": (log_q + action).mean(),
        }

    def step(self) -> dict[str, float]:
        """One optimisation step (no force metrics: the joint density has no single force)."""
        if self.config.force_every:
            raise ValueError("force_every is not supported by the joint trainer")
        return super().step()

    @torch.no_grad()
    def log_weights(self, batch: int, counter: int = 2**31, theory=None) -> torch.Tensor:
        """``log w = -S(U, phi) - log q(U, phi)`` of a fresh joint batch keyed by ``counter``."""
        theory = theory or self.theory
        v, chi = self._sample(counter, batch, (PURPOSE_PROPOSAL, PURPOSE_CHI_PROPOSAL))
        u, phi, logdet = self.flow(v, chi)
        log_q = self.prior.log_prob(v) + self.chi_prior.log_prob(chi) - logdet
        return -(joint_action(theory, u, phi, self.cg) + log_q)


class JointFlowMetropolis(FlowMetropolis):
    """Independence Metropolis on ``(U, phi)`` with joint-flow proposals (module docstring);
    the :class:`FlowMetropolis` interface, so :class:`FlowMetropolisSampler` runs it."""

    def __init__(self, theory: Schwinger, flow: JointFlow, rng) -> None:
        prior, self.chi_prior = _priors(theory)
        super().__init__(theory, flow, prior, rng)
        self.cg = CGCounter()

    def _log_w(self, u, phi, log_q) -> torch.Tensor:
        return -joint_action(self.theory, u, phi, self.cg) - log_q

    def propose(self, counter: int, batch: int, chain_offset: int = 0):
        """``(U', log w')`` of fresh joint proposals keyed by ``counter``."""
        with torch.no_grad():
            v = self.prior.sample(self.rng, counter, batch, chain_offset, purpose=PURPOSE_PROPOSAL)
            chi = self.chi_prior.sample(
                self.rng, counter, batch, chain_offset, PURPOSE_CHI_PROPOSAL
            )
            u, phi, logdet = self.flow(v, chi)
            log_q = self.prior.log_prob(v) + self.chi_prior.log_prob(chi) - logdet
            return u, self._log_w(u, phi, log_q)

    def state_of(self, u: torch.Tensor, counter: int = 0, chain_offset: int = 0) -> FlowState:
        """State of given gauge fields: ``phi = D^+ chi`` (heatbath, RNG purpose of the
        pseudofermions, ``counter``), ``log q`` through the inverse joint flow."""
        with torch.no_grad():
            chi = self.chi_prior.sample(
                self.rng, counter, u.shape[0], chain_offset, PURPOSE_PSEUDOFERMION
            )
            phi = self.theory.dirac(u).apply_dag(chi)
            v, chi0, logdet_inv = self.flow.inverse(u, phi)
            log_q = self.prior.log_prob(v) + self.chi_prior.log_prob(chi0) + logdet_inv
            return FlowState(u, self._log_w(u, phi, log_q))
