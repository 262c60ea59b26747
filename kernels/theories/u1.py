"""Compact U(1) lattice gauge theory with the Wilson action (2D in the decks, any dimension).

Links ``U_mu(x) = exp(i theta_mu(x))`` are stored as real angles, layout ``(B, Nd, *local)``,
``first = 2``. Plaquette angle (forward plaquette, :func:`parallel.shift` convention)::

    theta_{mu nu}(x) = theta_mu(x) + theta_nu(x + mu) - theta_mu(x + nu) - theta_nu(x)

Action, one term per unordered plane ``mu < nu``::

    S = beta sum_x sum_{mu<nu} (1 - cos theta_{mu nu}(x))

Force (``theta_{mu nu} = -theta_{nu mu}``)::

    F_mu(x) = dS/dtheta_mu(x)
            = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin theta_{mu nu}(x - nu)]

Molecular dynamics: momenta standard normal, ``K = (1/2) sum pi^2``, drift
``theta -> theta + eps pi`` with the angles left *unwrapped* (the action is 2 pi periodic, so
this is exact and reversible); :meth:`U1Gauge.project` wraps them into ``(-pi, pi]``.

2D topology (axes ``(x, t) = (0, 1)``, plane ``theta_P = theta_{01}``)::

    Q     = (1/2pi) sum_x sin theta_P(x)          (field-theoretic, not an integer)
    Q_int = (1/2pi) sum_x [theta_P(x)]            (geometric, an integer on a periodic torus)

with ``[a] = a - 2 pi ceil((a - pi) / 2pi)`` in ``(-pi, pi]``. ``Q_int`` is an integer because
``sum_x theta_P(x) = 0`` exactly (every link enters two plaquettes with opposite signs), so
``sum_x [theta_P(x)]`` is a sum of multiples of ``2 pi``.
"""

from __future__ import annotations

import math

import torch

from parallel import ProcessGrid, lattice_sum

from ..backends import get_backend
from ..backends.eager import u1_plaquette_angles
from ..theory import RealFieldTheory


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Map angles into ``(-pi, pi]``: ``[a] = a - 2 pi ceil((a - pi) / (2 pi))``."""
    two_pi = 2.0 * math.pi
    return a - two_pi * torch.ceil((a - math.pi) / two_pi)


class U1Gauge(RealFieldTheory):
    """U(1) Wilson gauge theory ``S = beta sum_P (1 - cos theta_P)`` on link angles."""

    name = "u1"
    first = 2
    is_gauge = True

    def __init__(
        self,
        grid: ProcessGrid,
        beta: float,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(grid, dtype=dtype, device=device)
        if grid.ndim < 2:
            raise ValueError(f"U(1) gauge theory needs >= 2 dimensions, lattice {grid.shape}")
        self.beta = float(beta)
        self.nd = grid.ndim
        #: the planes ``(mu, nu)``, ``mu < nu``, in the order of :meth:`plaquette_angles`
        self.planes: list[tuple[int, int]] = [
            (mu, nu) for mu in range(self.nd) for nu in range(mu + 1, self.nd)
        ]

    # ------------------------------------------------------------ layout
    def field_shape(self, batch: int) -> tuple[int, ...]:
        """``(B, Nd, *local)``: one real link angle ``theta_mu(x)`` per direction and local site."""
        return (batch, self.nd, *self.grid.local_shape)

    @property
    def params(self) -> dict[str, float]:
        """The coupling ``beta``."""
        return {"beta": self.beta}

    # ------------------------------------------------------------ plaquettes
    def plaquette_angles(self, theta: torch.Tensor) -> torch.Tensor:
        """Unwrapped plaquette angles ``theta_{mu nu}(x)``, shape ``(B, n_planes, *local)``,
        planes ordered as :attr:`planes` (for 2D one plane, ``(0, 1)``)."""
        return u1_plaquette_angles(theta, self.grid, self.planes)

    # ------------------------------------------------------------ dynamics
    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """``S = beta sum_x sum_{mu<nu} (1 - cos theta_{mu nu}(x))`` per chain (global)."""
        return self.beta * get_backend().u1_action_sum(theta, self.grid, self.planes)

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """``F_mu(x) = beta sum_{nu != mu} [sin theta_{mu nu}(x) - sin theta_{mu nu}(x - nu)]``
        ``= dS/dtheta_mu(x)``, from the active backend (:func:`kernels.backends.eager.u1_force`).
        """
        return get_backend().u1_force(theta, self.grid, self.planes, self.beta)

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        """Wrap the angles into ``(-pi, pi]`` (same links, same action)."""
        return wrap_angle(theta)

    # ------------------------------------------------------------ starts
    def cold_start(self, batch: int) -> torch.Tensor:
        """Unit links, ``theta = 0``."""
        return torch.zeros(self.field_shape(batch), dtype=self.dtype, device=self.device)

    def hot_start(self, rng, counter: int, batch: int, chain_offset: int = 0) -> torch.Tensor:
        """Haar-random links: ``theta = 2 pi u - pi`` with ``u`` uniform in ``(0, 1)``."""
        from parallel.rng import PURPOSE_START

        u = rng.uniform(
            self.grid,
            PURPOSE_START,
            counter,
            batch,
            lead=(self.nd,),
            chain_offset=chain_offset,
            dtype=self.dtype,
            device=self.device,
        )
        return 2.0 * math.pi * u - math.pi

    # ------------------------------------------------------------ measurements
    def _plane_sum(self, x: torch.Tensor) -> torch.Tensor:
        return lattice_sum(x, self.grid, 1)

    def topological_charge(self, theta: torch.Tensor) -> torch.Tensor:
        """``Q = (1/2pi) sum_x sin theta_{01}(x)`` per chain (2D only)."""
        self._require_2d()
        return self._plane_sum(torch.sin(self.plaquette_angles(theta)[:, 0])) / (2.0 * math.pi)

    def topological_charge_int(self, theta: torch.Tensor) -> torch.Tensor:
        """Geometric charge ``Q_int = (1/2pi) sum_x [theta_{01}(x)]`` per chain (2D only).

        Not rounded: an integer up to floating-point rounding of the sum.
        """
        self._require_2d()
        return self._plane_sum(wrap_angle(self.plaquette_angles(theta)[:, 0])) / (2.0 * math.pi)

    def _require_2d(self) -> None:
        if self.nd != 2:
            raise ValueError(f"the U(1) topological charge is defined in 2D, not {self.nd}D")

    def observables(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-chain measurements (global), each of shape ``(B,)``:

        * ``plaquette``: ``(1/(V n_planes)) sum_x sum_{mu<nu} cos theta_{mu nu}(x)``;
        * ``action``: ``S / V``;
        * 2D only: ``Q`` (sin definition), ``Q_int`` (geometric, rounded to the integer it is
          up to floating-point error) and
          ``Q2 = Q_int^2``; the topological susceptibility is ``<Q2> / V``.
        """
        p = self.plaquette_angles(theta)
        vol = self.grid.volume
        n = len(self.planes)
        cos_sum = self._plane_sum(torch.cos(p).sum(dim=1))
        out = {
            "plaquette": cos_sum / (vol * n),
            "action": self.beta * (vol * n - cos_sum) / vol,
        }
        if self.nd == 2:
            q = self._plane_sum(torch.sin(p[:, 0])) / (2.0 * math.pi)
            # an integer up to rounding of the sum: reported exactly (see topological_charge_int)
            q_int = torch.round(self._plane_sum(wrap_angle(p[:, 0])) / (2.0 * math.pi))
            out.update(Q=q, Q_int=q_int, Q2=q_int * q_int)
        return out
