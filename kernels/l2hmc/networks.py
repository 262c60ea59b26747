"""The networks of the L2HMC layers and the per-theory features they read.

Every network is a small periodic CNN (:class:`kernels.flows.phi4.ConvNet`, a stack of
:class:`parallel.LatticeConv` whose circular padding is the halo exchange, so it runs on any
process grid with the result of one rank) that maps a stack of per-site feature channels to
``3 C`` output channels, split into the three functions of the L2HMC updates::

    s = c_s tanh(a_s),   q = c_q tanh(a_q),   t = a_t,      c_s = e^{lambda_s}, c_q = e^{lambda_q}

(``C`` field components per site: the ``Nd`` link directions for U(1), 1 for a scalar). The
bounded ``s`` and ``q`` keep every rescaling ``e^{eps s}`` finite; ``lambda_s, lambda_q`` are
learned. ``init_scale`` multiplies the output layer's initial weights (0 gives ``s = q = t = 0``:
the L2HMC layers are then exactly leapfrog steps).

Features (channels ``(B, C_in, *local)``)
------------------------------------------
U(1) link angles ``theta`` (layout ``(B, Nd, *local)``), plaquettes ``theta_{mu nu}``:

* momentum network: ``cos theta_mu, sin theta_mu`` (all links), ``cos theta_P, sin theta_P``
  (all planes; gauge invariant) and the force ``dS/dtheta_mu`` (gauge invariant);
* position network (updating the links of mask ``m``): ``cos theta, sin theta`` of the
  *frozen* links only (zero on active links), the momentum ``v`` and the mask itself.

phi^4 (layout ``(B, *local)``): momentum network ``(phi, dS/dphi)``, position network
``(phi on the frozen sites, v, m)``.

The position network never reads an active component of ``x``: that is what makes the masked
update triangular (exact log-det) and exactly invertible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from parallel import ProcessGrid, shift

from ..flows.phi4 import ConvNet


def scaled_convnet(
    grid: ProcessGrid,
    in_channels: int,
    out_channels: int,
    hidden: Sequence[int],
    kernel_size: int,
    activation: str,
    init_scale: float,
    dtype: torch.dtype,
) -> ConvNet:
    """A lattice CNN whose last layer's weight and bias are scaled by ``init_scale`` (a small
    scale starts the model near the plain leapfrog)."""
    net = ConvNet(
        grid,
        in_channels,
        out_channels,
        hidden=hidden,
        kernel_size=kernel_size,
        activation=activation,
        dtype=dtype,
    )
    last = net.net[-1]
    with torch.no_grad():
        last.weight.mul_(float(init_scale))
        if last.bias is not None:
            last.bias.mul_(float(init_scale))
    return net


class LeapfrogModel(nn.Module):
    """Bookkeeping shared by the L2HMC models: ``vnets`` (one entry per generalized leapfrog
    layer) and the log step sizes ``log_eps_v``, ``log_eps_x`` (``eps = exp(log_eps) > 0``)."""

    def record_architecture(
        self,
        grid: ProcessGrid,
        theory_name: str,
        n_layers: int,
        hidden: Sequence[int],
        kernel_size: int,
        activation: str,
        step_size: float,
        init_scale: float,
    ) -> None:
        """Set ``grid``, ``theory_name`` and ``architecture``, the registry's ``{"builder",
        "kwargs"}`` record that rebuilds the model (``build_l2hmc_model`` picks the class)."""
        self.grid = grid
        self.theory_name = theory_name
        self.architecture: dict = {
            "builder": "kernels.l2hmc.layers:build_l2hmc_model",
            "kwargs": {
                "theory": theory_name,
                "n_layers": int(n_layers),
                "hidden": [int(h) for h in hidden],
                "kernel_size": int(kernel_size),
                "activation": activation,
                "step_size": float(step_size),
                "init_scale": float(init_scale),
            },
        }

    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def n_layers(self) -> int:
        """``N``, the number of generalized leapfrog layers."""
        return len(self.vnets)

    def step_sizes(self) -> tuple[list[float], list[float]]:
        """``(eps_v^k, eps_x^k)`` as plain floats."""
        with torch.no_grad():
            return torch.exp(self.log_eps_v).tolist(), torch.exp(self.log_eps_x).tolist()


class HeadNet(nn.Module):
    """``features -> (s, q, t)``, each of shape ``(B, C, *local)`` (see the module docstring)."""

    def __init__(
        self,
        grid: ProcessGrid,
        in_channels: int,
        components: int,
        hidden: Sequence[int],
        kernel_size: int,
        activation: str,
        init_scale: float,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.components = int(components)
        out = 3 * self.components
        self.net = scaled_convnet(
            grid, in_channels, out, hidden, kernel_size, activation, init_scale, dtype
        )
        self.log_scale_s = nn.Parameter(torch.zeros((), dtype=dtype))
        self.log_scale_q = nn.Parameter(torch.zeros((), dtype=dtype))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(s, q, t)`` of the features ``(B, C_in, *local)``."""
        out = self.net(features)
        c = self.components
        s = torch.exp(self.log_scale_s) * torch.tanh(out[:, :c])
        q = torch.exp(self.log_scale_q) * torch.tanh(out[:, c : 2 * c])
        return s, q, out[:, 2 * c :]


class FieldKind:
    """How a theory's field looks to the networks: components per site and the features."""

    #: field components per site (conv channels of ``x``)
    components: int = 1
    v_channels: int = 2
    x_channels: int = 3

    def __init__(self, grid: ProcessGrid) -> None:
        self.grid = grid

    def to_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Field ``->`` ``(B, C, *local)``."""
        return x.unsqueeze(1)

    def from_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Channel layout ``->`` field layout."""
        return x.squeeze(1)

    def v_features(self, x: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
        """Momentum-network input from the position and the force (channel layout)."""
        return torch.cat([x, force], dim=1)

    def x_features(self, x: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Position-network input: frozen part of ``x``, momentum and mask (channel layout)."""
        frozen = torch.where(mask, torch.zeros_like(x), x)
        return torch.cat([frozen, v, mask.to(x.dtype).expand_as(x)], dim=1)


class ScalarKind(FieldKind):
    """A real scalar field ``(B, *local)``."""


class U1Kind(FieldKind):
    """U(1) link angles ``(B, Nd, *local)`` (already in channel layout)."""

    def __init__(self, grid: ProcessGrid) -> None:
        super().__init__(grid)
        nd = grid.ndim
        self.components = nd
        self.planes = [(mu, nu) for mu in range(nd) for nu in range(mu + 1, nd)]
        self.v_channels = 3 * nd + 2 * len(self.planes)
        self.x_channels = 4 * nd

    def to_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The link angles are already in channel layout."""
        return x

    def from_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The link angles are already in field layout."""
        return x

    def plaquettes(self, theta: torch.Tensor) -> torch.Tensor:
        """``theta_{mu nu}(x) = theta_mu(x) + theta_nu(x+mu) - theta_mu(x+nu) - theta_nu(x)``."""
        out = []
        for mu, nu in self.planes:
            tm, tn = theta[:, mu], theta[:, nu]
            fwd_n = shift(tn, self.grid, mu, 1, first=1)
            fwd_m = shift(tm, self.grid, nu, 1, first=1)
            out.append(tm + fwd_n - fwd_m - tn)
        return torch.stack(out, dim=1)

    def v_features(self, x: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
        """``cos/sin`` of the links and plaquettes and the force."""
        p = self.plaquettes(x)
        return torch.cat([torch.cos(x), torch.sin(x), torch.cos(p), torch.sin(p), force], dim=1)

    def x_features(self, x: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``cos/sin`` of the frozen links (zero on active ones), ``v`` and the mask."""
        zero = torch.zeros_like(x)
        c = torch.where(mask, zero, torch.cos(x))
        s = torch.where(mask, zero, torch.sin(x))
        return torch.cat([c, s, v, mask.to(x.dtype).expand_as(x)], dim=1)


#: theories whose field is U(1) link angles (the Schwinger model: U(1) + pseudofermions)
U1_LIKE = ("u1", "schwinger")
#: every theory with an L2HMC model (SU(3): :mod:`.su3`)
THEORIES = ("u1", "schwinger", "phi4", "su3")


def field_kind(theory_name: str, grid: ProcessGrid) -> FieldKind:
    """The :class:`FieldKind` of a theory (``u1``, ``schwinger`` or ``phi4``)."""
    if theory_name in U1_LIKE:
        return U1Kind(grid)
    if theory_name == "phi4":
        return ScalarKind(grid)
    raise ValueError(f"L2HMC supports the theories {THEORIES}, not {theory_name!r}")
