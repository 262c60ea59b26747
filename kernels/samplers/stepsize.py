"""Step-size adaptation toward a target acceptance (dual averaging on ``log eps``).

Nesterov dual averaging as used for HMC/NUTS (Hoffman & Gelman, JMLR 15 (2014) 1593,
Algorithm 5). After trajectory ``t`` with mean Metropolis acceptance probability ``a_t``::

    Hbar_t   = (1 - 1/(t + t0)) Hbar_{t-1} + (delta - a_t) / (t + t0)
    log e_t  = mu - sqrt(t) / gamma * Hbar_t
    log ebar_t = t^-kappa log e_t + (1 - t^-kappa) log ebar_{t-1}

with ``delta`` the target acceptance, ``mu = log(10 e_0)``, ``gamma = 0.05``, ``t0 = 10``,
``kappa = 0.75``. ``e_t`` is the step size of the next (thermalisation) trajectory;
``ebar_t``, an average that converges, is the step size frozen at the end of tuning.

The state is five floats (:meth:`DualAveraging.state_dict`), stored in checkpoints so a
restarted run continues the adaptation, or the frozen step size, exactly.
"""

from __future__ import annotations

import math
from typing import Any


class DualAveraging:
    """Dual-averaging controller of ``log eps`` toward the acceptance ``target``."""

    def __init__(
        self,
        step_size: float,
        target: float,
        gamma: float = 0.05,
        t0: float = 10.0,
        kappa: float = 0.75,
    ) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target acceptance must be in (0, 1), got {target}")
        if not step_size > 0.0:
            raise ValueError(f"step size must be > 0, got {step_size}")
        self.target = float(target)
        self.gamma = float(gamma)
        self.t0 = float(t0)
        self.kappa = float(kappa)
        self.mu = math.log(10.0 * step_size)
        self.t = 0
        self.h_bar = 0.0
        self.log_eps = math.log(step_size)
        self.log_eps_bar = math.log(step_size)

    @property
    def step_size(self) -> float:
        """Step size for the next adaptation trajectory."""
        return math.exp(self.log_eps)

    @property
    def final_step_size(self) -> float:
        """Averaged step size to freeze when adaptation ends."""
        return math.exp(self.log_eps_bar)

    def update(self, acceptance: float) -> float:
        """Feed the mean acceptance probability of the last trajectory; return the next step."""
        a = min(max(float(acceptance), 0.0), 1.0) if math.isfinite(acceptance) else 0.0
        self.t += 1
        w = 1.0 / (self.t + self.t0)
        self.h_bar = (1.0 - w) * self.h_bar + w * (self.target - a)
        self.log_eps = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        eta = self.t ** (-self.kappa)
        self.log_eps_bar = eta * self.log_eps + (1.0 - eta) * self.log_eps_bar
        return self.step_size

    def state_dict(self) -> dict[str, Any]:
        """Controller state (plain Python values) for checkpoints."""
        return {
            "target": self.target,
            "gamma": self.gamma,
            "t0": self.t0,
            "kappa": self.kappa,
            "mu": self.mu,
            "t": self.t,
            "h_bar": self.h_bar,
            "log_eps": self.log_eps,
            "log_eps_bar": self.log_eps_bar,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for key in ("target", "gamma", "t0", "kappa", "mu", "h_bar", "log_eps", "log_eps_bar"):
            setattr(self, key, float(state[key]))
        self.t = int(state["t"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DualAveraging:
        """A controller restored from :meth:`state_dict`."""
        obj = cls(1.0, float(state["target"]))
        obj.load_state_dict(state)
        return obj
