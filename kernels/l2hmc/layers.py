"""Generalized leapfrog layers of L2HMC, forward and exact inverse, with exact log-Jacobians.

State ``(x, v)`` (field and momentum of the same shape; :mod:`.networks` for the channel
layout). ``N`` layers ``k = 1..N``, each with two momentum networks, two position networks and
learned step sizes ``eps_v^k = e^{a_k}``, ``eps_x^k = e^{b_k}`` (positive by construction).
One forward layer, with the force ``f = dS/dx`` (Foreman et al., arXiv:2105.03418, eq. 8-10)::

    v <- v e^{(eps_v/2) s_v} - (eps_v/2) [f(x) e^{eps_v q_v} + t_v],  (s_v,q_v,t_v) = V^a(x,f(x))
    x <- m-update of x, then (1-m)-update of x              (position networks X_k^0, X_k^1)
    v <- v e^{(eps_v/2) s_v} - (eps_v/2) [f(x) e^{eps_v q_v} + t_v],  (s_v,q_v,t_v) = V^b(x,f(x))

The masked position update on the active components ``A`` (mask ``m``; the networks read only
the frozen part of ``x``, ``v`` and the mask), ``(s, q, t) = X(x_F, v, m)``:

* real field (phi^4): ``x_A <- x_A e^{eps_x s} + eps_x [v_A e^{eps_x q} + t]``,
  ``log|J| = sum_A eps_x s``;
* U(1) angles, through the non-compact projection (NCP) ``h``::

      x_A <- h(x_A) + eps_x [v_A e^{eps_x q} + t],
      h(x) = 2 atan(e^{eps_x s} tan([x]/2)) + (x - [x]),      [x] in (-pi, pi]
      h'(x) = 1 / (e^{-eps_x s} cos^2([x]/2) + e^{eps_x s} sin^2([x]/2)),
      log|J| = sum_A log h'(x_A)

  ``h`` maps ``(-pi, pi]`` onto itself with ``h(+-pi) = +-pi`` and ``h(x + 2 pi) = h(x) + 2 pi``,
  so the update is a smooth bijection of the unwrapped angles and commutes with ``2 pi`` shifts
  (wrapping the links does not change the proposal modulo ``2 pi``). It is evaluated as
  ``2 atan2(e^{eps s} sin([x]/2), cos([x]/2))``, its inverse as
  ``2 atan2(e^{-eps s} sin([y]/2), cos([y]/2))``.

The v half-step does not read ``v`` through its networks, so its Jacobian at fixed ``x`` is
diagonal, ``log|J| = (eps_v/2) sum s_v`` over all components; the masked x-update reads ``v`` but
leaves it unchanged (a shear), and is triangular in ``x``. So the log-Jacobian of the whole map
``(x, v) -> (x', v')`` is the sum of the per-update terms, exactly (tested against the
brute-force ``slogdet`` of the autograd Jacobian). With all networks zero
(``init_scale = 0``) and ``eps_v = eps_x = eps`` a layer is one leapfrog step of size ``eps``.

The inverse map runs the inverse updates in reverse order (same networks, same inputs: the
frozen part and ``v`` of a masked update are unchanged by it; the v half-step's ``x`` and
``f(x)`` are the same before and after), and returns ``log|det d(x,v)/d(x',v')|``, the negative
of the forward log-Jacobian at the returned point. Force evaluations: ``N + 1`` per map (the end
of layer ``k`` is the start of layer ``k + 1``). The per-site log-Jacobians are accumulated
site by site and summed over the lattice once, exactly (:func:`parallel.lattice_sum`), so
``log|J|`` does not depend on the process grid.

Masks: checkerboard over (component, site) in global coordinates (any process grid sees the
same global pattern): U(1) ``m_mu(x) = [(mu + sum_nu x_nu) even]``, scalar ``m(x) = [sum x even]``;
``m`` and ``1 - m`` are the two complementary updates of a layer. Needs even lattice extents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kernels.flows.u1 import atan2_upper
from parallel import ProcessGrid

from .networks import U1_LIKE, FieldKind, HeadNet, LeapfrogModel, field_kind
from .runner import run_layers
from .su3 import SU3L2HMCModel

ForceFn = Callable[[torch.Tensor], torch.Tensor]
TWO_PI = 2.0 * math.pi


def _atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` from :func:`kernels.flows.u1.atan2_upper` (odd in ``y``): the same value
    up to rounding, rounded alike on every process grid (torch's CPU ``atan2`` is not)."""
    return torch.where(y < 0, -atan2_upper(-y, x), atan2_upper(y, x))


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """``[a]`` in ``(-pi, pi]``."""
    return a - TWO_PI * torch.ceil((a - math.pi) / TWO_PI)


def checkerboard_masks(grid: ProcessGrid, components: int, per_component: bool) -> torch.Tensor:
    """Mask ``m`` of shape ``(C, *local)`` (bool): ``(c + sum_mu x_mu)`` even (``c`` counted only
    when ``per_component``), in global coordinates."""
    for mu, n in enumerate(grid.shape):
        if n % 2:
            raise ValueError(
                f"L2HMC checkerboard masks need even lattice extents, axis {mu} has {n} "
                f"(lattice {list(grid.shape)})"
            )
    s = sum((grid.global_coords[mu] for mu in range(grid.ndim)), np.zeros(grid.local_shape, int))
    masks = [((s + (c if per_component else 0)) % 2 == 0) for c in range(components)]
    return torch.from_numpy(np.stack(masks))


class L2HMCModel(LeapfrogModel):
    """The ``N``-layer L2HMC map of a theory's field (see the module docstring).

    Parameters
    ----------
    grid:
        The process grid (the networks' convolutions run distributed on it).
    theory_name:
        ``"u1"``, ``"schwinger"`` (U(1) links) or ``"phi4"`` (SU(3): :mod:`.su3`).
    n_layers:
        ``N``, the number of generalized leapfrog layers.
    hidden, kernel_size, activation:
        The CNNs (hidden channel counts, odd kernel size, activation name).
    step_size:
        Initial ``eps_v = eps_x`` of every layer.
    init_scale:
        Factor on the output layers' initial weights (0: the map starts as plain leapfrog).
    """

    def __init__(
        self,
        grid: ProcessGrid,
        theory_name: str,
        n_layers: int = 4,
        hidden: Sequence[int] = (8, 8),
        kernel_size: int = 3,
        activation: str = "tanh",
        step_size: float = 0.2,
        init_scale: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"L2HMC needs at least one leapfrog layer, got {n_layers}")
        if not step_size > 0:
            raise ValueError(f"L2HMC step_size must be > 0, got {step_size}")
        if theory_name == "su3":
            raise ValueError(
                "SU(3) links use kernels.l2hmc.su3.SU3L2HMCModel (build_l2hmc_model picks it)"
            )
        self.record_architecture(
            grid, theory_name, n_layers, hidden, kernel_size, activation, step_size, init_scale
        )
        self.kind: FieldKind = field_kind(theory_name, grid)
        c = self.kind.components
        masks = checkerboard_masks(grid, c, per_component=theory_name in U1_LIKE)
        self.register_buffer("mask", masks, persistent=False)

        def head(channels: int) -> HeadNet:
            return HeadNet(grid, channels, c, hidden, kernel_size, activation, init_scale, dtype)

        self.vnets = nn.ModuleList(
            [nn.ModuleList([head(self.kind.v_channels) for _ in range(2)]) for _ in range(n_layers)]
        )
        self.xnets = nn.ModuleList(
            [nn.ModuleList([head(self.kind.x_channels) for _ in range(2)]) for _ in range(n_layers)]
        )
        log_eps = math.log(step_size)
        self.log_eps_v = nn.Parameter(torch.full((n_layers,), log_eps, dtype=dtype))
        self.log_eps_x = nn.Parameter(torch.full((n_layers,), log_eps, dtype=dtype))

    # ------------------------------------------------------------ single updates
    def _v_step(self, net, x, v, f, eps, inverse: bool):
        s, q, t = net(self.kind.v_features(x, f))
        half = 0.5 * eps
        kick = half * (f * torch.exp(eps * q) + t)
        if not inverse:
            return v * torch.exp(half * s) - kick, half * s
        return (v + kick) * torch.exp(-half * s), -half * s

    def _x_step(self, net, x, v, mask, eps, inverse: bool):
        s, q, t = net(self.kind.x_features(x, v, mask))
        es = eps * s
        shift_ = eps * (v * torch.exp(eps * q) + t)
        if self.theory_name in U1_LIKE:
            if not inverse:
                w = _wrap(x)
                h = 2.0 * _atan2(torch.exp(es) * torch.sin(0.5 * w), torch.cos(0.5 * w))
                new = h + (x - w) + shift_
                src = x
            else:
                y = x - shift_
                w = _wrap(y)
                h = 2.0 * _atan2(torch.exp(-es) * torch.sin(0.5 * w), torch.cos(0.5 * w))
                new = h + (y - w)
                src = new
            w = _wrap(src)
            c2, s2 = torch.cos(0.5 * w) ** 2, torch.sin(0.5 * w) ** 2
            logd = -torch.log(torch.exp(-es) * c2 + torch.exp(es) * s2)
        else:
            if not inverse:
                new = x * torch.exp(es) + shift_
            else:
                new = (x - shift_) * torch.exp(-es)
            logd = es
        logd = torch.where(mask, logd, torch.zeros_like(logd))
        out = torch.where(mask, new, x)
        return out, (logd if not inverse else -logd)

    # ------------------------------------------------------------ layer pieces
    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """Field layout ``->`` the channel layout the layers work in."""
        return self.kind.to_channels(x)

    def from_internal(self, x: torch.Tensor) -> torch.Tensor:
        """Channel layout ``->`` field layout."""
        return self.kind.from_channels(x)

    def v_update(self, k: int, which: int, x, v, f, inverse: bool):
        """Momentum half-step ``which`` (0: before, 1: after the x-updates) of layer ``k``:
        ``(v', per-site log-Jacobian)``."""
        eps = torch.exp(self.log_eps_v[k])
        return self._v_step(self.vnets[k][which], x, v, f, eps, inverse)

    def x_updates(self, k: int, x, v, inverse: bool):
        """The two masked x-updates of layer ``k`` (reversed when ``inverse``):
        ``(x', per-site log-Jacobian)``."""
        eps = torch.exp(self.log_eps_x[k])
        masks = (self.mask, ~self.mask)
        logj = torch.zeros_like(x)
        for j in (1, 0) if inverse else (0, 1):
            x, lj = self._x_step(self.xnets[k][j], x, v, masks[j], eps, inverse)
            logj = logj + lj
        return x, logj

    # ------------------------------------------------------------ maps
    def forward_map(
        self, x: torch.Tensor, v: torch.Tensor, force: ForceFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(x, v) -> (x', v')`` (direction ``d = +1``), the log-Jacobian per site and component
        (channel layout ``(B, C, *local)``; its lattice sum is ``log|J|``) and the number of
        force evaluations."""
        return run_layers(self, x, v, torch.ones(x.shape[0]), force)

    def inverse_map(
        self, x: torch.Tensor, v: torch.Tensor, force: ForceFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The exact inverse of :meth:`forward_map` (direction ``d = -1``): the inverse updates
        in reverse order; per-site log-Jacobian of the inverse map (as in :meth:`forward_map`),
        force count."""
        return run_layers(self, x, v, -torch.ones(x.shape[0]), force)

    def directed_map(
        self, x: torch.Tensor, v: torch.Tensor, direction: torch.Tensor, force: ForceFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Chains with ``direction = +1`` through :meth:`forward_map`, the others through
        :meth:`inverse_map`, in one pass (:func:`run_layers`). Returns ``x', v'``, per-site
        log-Jacobian, force count."""
        return run_layers(self, x, v, direction, force)


def build_l2hmc_model(
    grid: ProcessGrid, theory: str, dtype: torch.dtype | str | None = None, **kwargs: Any
) -> L2HMCModel | SU3L2HMCModel:
    """An :class:`L2HMCModel` (or :class:`kernels.l2hmc.su3.SU3L2HMCModel` for ``su3``) from
    the ``kwargs`` of its architecture record (the registry's builder; ``dtype`` a real torch
    dtype or its name, default float64)."""
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    cls = SU3L2HMCModel if theory == "su3" else L2HMCModel
    return cls(grid, theory, dtype=dtype or torch.float64, **kwargs)
