"""Training of an L2HMC model on acceptance-weighted jumps (topological charge first).

One training step (Foreman et al., arXiv:2105.03418, sec. 3; Levy et al., arXiv:1711.09268):

1. for the carried-over chains ``x`` draw ``v``, ``d`` (site-keyed, purpose
   ``PURPOSE_L2HMC_TRAIN``, counter ``2 t``) and propose ``xi' = (F^d(x, v), -d)`` at the
   annealed action ``gamma_t S`` (differentiable through the networks, the forces and the
   log-Jacobian);
2. ``A = min(1, exp(-dH + log|J|))`` per chain and the per-chain jump
   ``delta = A (w_Q dQ_sin^2 + w_P dP + w_F dF)`` with ``dQ_sin = Q(x') - Q(x)`` (2D U(1), sine
   charge), ``dP = (1/V) sum_{x, mu<nu} (1 - cos(P'_{mu nu}(x) - P_{mu nu}(x)))`` (U(1)
   plaquette ESJD; SU(3): ``(1/V) sum_{x, mu<nu} (1 - Re Tr(U'_{mu nu} U_{mu nu}^+)/3)``, gauge
   invariant) and ``dF = (1/V) sum_x (x' - x)^2`` (real fields);
3. loss ``-<delta>`` (``loss_form: esjd``, the seed's choice) or
   ``<lambda^2 / delta - delta / lambda^2>`` (``loss_form: levy``, Levy et al.'s mixed form,
   ``delta`` floored at 1e-8); Adam with the learning rate ``lr_t`` (linear warm-up over
   ``lr_warmup`` steps, then cosine decay to ``lr * lr_final_factor`` at the last step);
   gradients summed over the domain group and averaged over replica groups
   (:func:`parallel.allreduce_gradients`), so every rank keeps the same weights;
4. the chains are carried over with the Metropolis decision ``u < A`` (``u`` from counter
   ``2 t + 1``), as in the sampler.

Annealing: ``gamma_t`` goes geometrically from ``gamma_start`` to ``gamma_end`` over
``anneal_steps`` (default: all steps) and stays at ``gamma_end``; with ``gamma_end = 1`` the
last steps train at the target action (for U(1), ``gamma beta`` is the annealed coupling).

Every step is a pure function of ``(weights, optimizer state, chains, step number)``, so
:meth:`L2HMCTrainer.state_dict` / :meth:`L2HMCTrainer.load_state_dict` resume bit for bit.
Files are the app's business (app/).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from parallel import allreduce_gradients, lattice_sum

from ..theory import Theory
from .layers import L2HMCModel
from .networks import U1_LIKE
from .sampler import PURPOSE_L2HMC_TRAIN, directions, propose
from .su3 import plaquette_matrices

LOSS_FORMS = ("esjd", "levy")


@dataclass
class L2HMCTrainConfig:
    """Training options (deck ``train: {objective: l2hmc, ...}``)."""

    steps: int = 100
    batch: int = 16
    lr: float = 1e-3
    lr_warmup: int = 0
    lr_final_factor: float = 1.0
    gamma_start: float = 1.0
    gamma_end: float = 1.0
    anneal_steps: int | None = None
    charge_weight: float = 1.0
    plaquette_weight: float = 0.0
    field_weight: float = 0.0
    loss_form: str = "esjd"
    levy_scale: float = 1.0
    clip_grad: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1:
            raise ValueError(f"l2hmc training needs steps >= 0 and batch >= 1, got {self}")
        if not self.lr > 0:
            raise ValueError(f"l2hmc training lr must be > 0, got {self.lr}")
        if not (self.gamma_start > 0 and self.gamma_end > 0):
            raise ValueError("l2hmc gamma_start and gamma_end must be > 0")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"l2hmc loss_form must be one of {LOSS_FORMS}, got {self.loss_form!r}")
        if min(self.charge_weight, self.plaquette_weight, self.field_weight) < 0:
            raise ValueError("l2hmc loss weights must be >= 0")

    def gamma(self, step: int) -> float:
        """Annealed action scale ``gamma_t`` (geometric from start to end)."""
        n = self.steps if self.anneal_steps is None else self.anneal_steps
        if n <= 1 or step >= n - 1:
            return float(self.gamma_end) if n >= 1 else float(self.gamma_start)
        frac = step / (n - 1)
        return float(self.gamma_start * (self.gamma_end / self.gamma_start) ** frac)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (warm-up, then cosine decay)."""
        if self.lr_warmup > 0 and step < self.lr_warmup:
            return self.lr * (step + 1) / self.lr_warmup
        span = max(self.steps - self.lr_warmup - 1, 1)
        frac = min(max(step - self.lr_warmup, 0) / span, 1.0)
        lo = self.lr * self.lr_final_factor
        return lo + 0.5 * (self.lr - lo) * (1.0 + math.cos(math.pi * frac))


def jump_terms(theory: Theory, x0: torch.Tensor, x1: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-chain global jump measures (differentiable): ``dQ_sin`` (2D U(1)), ``dP`` (U(1)),
    ``dF`` (real fields); see the module docstring."""
    grid = theory.grid
    out: dict[str, torch.Tensor] = {}
    if theory.name in U1_LIKE:
        if grid.ndim == 2:
            out["dQ_sin"] = theory.topological_charge(x1) - theory.topological_charge(x0)
        p0, p1 = theory.plaquette_angles(x0), theory.plaquette_angles(x1)
        out["dP"] = lattice_sum((1.0 - torch.cos(p1 - p0)).sum(dim=1), grid, 1) / grid.volume
    elif theory.name == "su3":
        # 1 - Re Tr(U'_P U_P^+)/3 per plaquette: gauge invariant, 0 iff the plaquette is unchanged
        p0 = plaquette_matrices(x0, grid, theory.planes)
        p1 = plaquette_matrices(x1, grid, theory.planes)
        pairs = zip(p1, p0, strict=True)
        dens = sum(1.0 - (a * b.conj()).real.sum((-1, -2)) / 3.0 for a, b in pairs)
        out["dP"] = lattice_sum(dens, grid, 1) / grid.volume
    else:
        out["dF"] = lattice_sum((x1 - x0) ** 2, grid, 1) / grid.volume
    return out


def train_momentum(theory: Theory, rng: Any, counter: int, batch: int, offset: int) -> torch.Tensor:
    """The momenta of a training step (purpose ``PURPOSE_L2HMC_TRAIN``): standard normal per
    real component, su(3) Gaussian (``P = sum_a p_a T_a``) for SU(3) links."""
    lead = tuple(theory.field_shape(1)[1 : theory.first])
    if theory.name == "su3":
        return rng.su_algebra(
            theory.grid,
            PURPOSE_L2HMC_TRAIN,
            counter,
            batch,
            3,
            lead=lead,
            chain_offset=offset,
            dtype=theory.dtype,
            device=theory.device,
        )
    return rng.normal(
        theory.grid,
        PURPOSE_L2HMC_TRAIN,
        counter,
        batch,
        lead=lead,
        chain_offset=offset,
        dtype=theory.dtype,
        device=theory.device,
    )


class L2HMCTrainer:
    """Trains an :class:`L2HMCModel` (see the module docstring).

    ``theory`` must have the model's dtype (float32 training is allowed). ``start`` are the
    initial chains (default: a hot start, counter 0); ``chain_offset`` selects the chains'
    random streams (give replica groups disjoint ranges).
    """

    def __init__(
        self,
        model: L2HMCModel,
        theory: Theory,
        rng: Any,
        config: L2HMCTrainConfig,
        chain_offset: int = 0,
        start: torch.Tensor | None = None,
    ) -> None:
        dtype = next(model.parameters()).dtype
        real = theory.dtype.to_real() if theory.dtype.is_complex else theory.dtype
        if theory.name == "schwinger":
            raise ValueError(
                "l2hmc training on the Schwinger model is not supported (no gradient through "
                "the pseudofermion solves); train on theory u1 at the same beta and lattice, "
                "the U(1) model runs the Schwinger model as it is"
            )
        if dtype != real:
            raise ValueError(f"L2HMC model dtype {dtype} differs from the theory's {theory.dtype}")
        w = config
        if w.charge_weight > 0 and not (theory.name in U1_LIKE and theory.grid.ndim == 2):
            if w.plaquette_weight == 0 and w.field_weight == 0:
                raise ValueError(
                    "the l2hmc charge objective needs 2D U(1); set plaquette_weight or "
                    "field_weight for this theory"
                )
        self.model, self.theory, self.rng, self.config = model, theory, rng, config
        self.chain_offset = int(chain_offset)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.step_count = 0
        self.n_skipped = 0
        if start is None:
            start = theory.hot_start(rng, 0, config.batch, self.chain_offset)
        self.chains = start.detach().to(theory.dtype)
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------ loss
    def loss(
        self, x: torch.Tensor, v: torch.Tensor, d: torch.Tensor, gamma: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Differentiable loss of one batch of proposals and its per-chain pieces."""
        cfg, theory = self.config, self.theory
        prop = propose(self.model, theory, x, v, d, action_scale=gamma)
        log_ratio = -prop["dH"] + prop["log_jacobian"]
        finite = torch.isfinite(log_ratio)
        safe = torch.where(finite, log_ratio, torch.full_like(log_ratio, -1e30))
        acc = torch.exp(safe.clamp(max=0.0))
        x1 = torch.where(finite.view((-1,) + (1,) * (x.ndim - 1)), prop["x1"], x)
        jumps = jump_terms(theory, x, x1)
        weights = {"dQ_sin": cfg.charge_weight, "dP": cfg.plaquette_weight, "dF": cfg.field_weight}
        jump = sum(weights[k] * (jumps[k] ** 2 if k == "dQ_sin" else jumps[k]) for k in jumps)
        delta = acc * jump
        if cfg.loss_form == "esjd":
            loss = -delta.mean()
        else:
            lam2 = cfg.levy_scale**2
            dl = delta.clamp(min=1e-8)
            loss = (lam2 / dl - dl / lam2).mean()
        return loss, {"acceptance": acc, "jumps": jumps, "proposal": prop, "finite": finite}

    # ------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        """One optimisation step; returns (and appends to :attr:`history`) its metrics."""
        t0 = time.perf_counter()
        cfg, theory, grid, rng = self.config, self.theory, self.theory.grid, self.rng
        t = self.step_count
        x = self.chains
        batch = x.shape[0]
        v = train_momentum(theory, rng, 2 * t, batch, self.chain_offset)
        d = directions(rng, PURPOSE_L2HMC_TRAIN, 2 * t, batch, self.chain_offset).to(x.device)
        u = rng.chain_uniform(PURPOSE_L2HMC_TRAIN, 2 * t + 1, batch, self.chain_offset)
        gamma, lr = cfg.gamma(t), cfg.lr_at(t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=False)
        loss, parts = self.loss(x, v, d, gamma)
        loss.backward()
        allreduce_gradients(self.model, grid)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite_grad = all(bool(torch.isfinite(g).all()) for g in grads)
        if finite_grad:
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
        else:
            self.n_skipped += 1
        acc = parts["acceptance"].detach()
        prop = parts["proposal"]
        with torch.no_grad():
            accepted = (u.to(acc) < acc) & parts["finite"]
            x1 = prop["x1"].detach()
            if bool(accepted.any()):
                x1 = theory.project(x1)
            rows = accepted.view((batch,) + (1,) * (x.ndim - 1))
            self.chains = torch.where(rows, x1, x)
        metrics = {
            "step": t,
            "loss": float(loss.detach()),
            "acceptance": float(acc.mean()),
            "accepted": float(accepted.double().mean()),
            "log_jacobian": float(prop["log_jacobian"].detach().mean()),
            "gamma": gamma,
            "lr": lr,
            "finite_gradient": float(finite_grad),
        }
        jumps = parts["jumps"]
        if "dQ_sin" in jumps:
            dq = jumps["dQ_sin"].detach()
            metrics["dQ_sin2"] = float((acc * dq * dq).mean())
            dqi = self._dq_int(x, prop["x1"].detach(), parts["finite"])
            metrics["dQ_int"] = float((acc * dqi.abs()).mean())
        for k in ("dP", "dF"):
            if k in jumps:
                metrics[k] = float((acc * jumps[k].detach()).mean())
        metrics = self._replica_mean(metrics)
        eps_v, eps_x = self.model.step_sizes()
        metrics["eps_v"] = sum(eps_v) / len(eps_v)
        metrics["eps_x"] = sum(eps_x) / len(eps_x)
        metrics["seconds"] = time.perf_counter() - t0
        self.history.append(metrics)
        self.step_count += 1
        return metrics

    def train(self, steps: int | None = None, callback=None) -> list[dict[str, float]]:
        """Run ``steps`` more steps (default: to ``config.steps``), ``callback`` after each."""
        n = self.config.steps - self.step_count if steps is None else int(steps)
        out = []
        for _ in range(max(n, 0)):
            m = self.step()
            out.append(m)
            if callback is not None:
                callback(m)
        return out

    def _dq_int(self, x0, x1, finite):
        x1 = torch.where(finite.view((-1,) + (1,) * (x0.ndim - 1)), x1, x0)
        th = self.theory
        return torch.round(th.topological_charge_int(x1) - th.topological_charge_int(x0))

    def _replica_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        grid = self.theory.grid
        if grid.replicas == 1:
            return metrics
        keys = [k for k in metrics if k not in ("step", "gamma", "lr")]
        local = np.array([metrics[k] for k in keys], dtype=np.float64)
        total = grid.replica_comm.allreduce(local, op=MPI.SUM) / grid.replicas
        metrics.update({k: float(total[i]) for i, k in enumerate(keys)})
        return metrics

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit for bit (tensors and plain values; no files)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "n_skipped": self.n_skipped,
            "chains": self.chains.detach().clone(),
            "history": [dict(h) for h in self.history],
            "config": asdict(self.config),
            "architecture": self.model.architecture["kwargs"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same architecture and batch shape)."""
        arch = self.model.architecture["kwargs"]
        if dict(state["architecture"]) != arch:
            raise ValueError(
                f"checkpoint architecture {state['architecture']} differs from the model's {arch}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step_count"])
        self.n_skipped = int(state.get("n_skipped", 0))
        chains = state["chains"]
        if tuple(chains.shape) != tuple(self.chains.shape):
            raise ValueError(
                f"checkpoint chains have shape {tuple(chains.shape)}, expected "
                f"{tuple(self.chains.shape)}"
            )
        self.chains = chains.detach().clone().to(self.chains)
        self.history = [dict(h) for h in state.get("history", [])]
