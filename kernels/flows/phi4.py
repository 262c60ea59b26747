"""Flows for real scalar fields (phi^4): checkerboard affine couplings and a global rescaling.

Field layout ``(B, *local)`` (``first = 1``), the layout of :class:`kernels.theories.phi4.Phi4`.

Affine coupling (real NVP, Dinh et al. 2016; for phi^4 Albergo, Kanwar, Shanahan 2019) with a
checkerboard mask ``m(x) = 1`` on the *frozen* sites, ``sum_mu x_mu = parity (mod 2)`` in
global coordinates, and ``a = 1 - m`` on the *active* ones::

    (s, t) = CNN(m * v)                       (periodic LatticeConv stack, 1 -> 2 channels)
    u(x)   = m(x) v(x) + a(x) [v(x) e^{s(x)} + t(x)]
    log|det du/dv| = sum_x a(x) s(x)

(triangular Jacobian: ``s, t`` at active sites depend on frozen sites only). Inverse
``v = m u + a (u - t) e^{-s}`` with ``(s, t) = CNN(m * u)`` (the frozen sites are unchanged).

Global rescaling: ``u = e^{c} v`` with one learned ``c``, ``log|det| = c * (number of sites)``.

Minimal architecture (Albandea, Del Debbio, Hernandez, Kenway, Marsh Rossney, Ramos,
"Learning trivializing flows", EPJC 83 (2023) 676, arXiv:2211.12806): one coupling pair
(both parities), each with a single ``3^2`` convolution ``1 -> 2`` channels without bias and no
hidden layer, then the global rescaling: ``2 * 2 * 9 + 1 = 37`` parameters
(:func:`phi4_minimal_flow`). The ``tanh`` on ``s`` (bounded log-scale) is our choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from parallel import LatticeConv, ProcessGrid

from .base import (
    Composition,
    Flow,
    dtype_from_name,
    logdet_terms,
    make_activation,
    parity_mask,
    record_architecture,
)


class ConvNet(nn.Module):
    """Stack of periodic :class:`parallel.LatticeConv` layers with activations in between.

    ``in_channels -> hidden[0] -> ... -> hidden[-1] -> out_channels``; ``activation`` after
    every hidden layer; the output is linear.
    """

    def __init__(
        self,
        grid: ProcessGrid,
        in_channels: int,
        out_channels: int,
        hidden: Sequence[int] = (),
        kernel_size: int = 3,
        activation: str = "tanh",
        bias: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        chans = [in_channels, *[int(h) for h in hidden], out_channels]
        mods: list[nn.Module] = []
        for i in range(len(chans) - 1):
            mods.append(
                LatticeConv(grid, chans[i], chans[i + 1], kernel_size, bias=bias, dtype=dtype)
            )
            if i < len(chans) - 2:
                mods.append(make_activation(activation))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output at every site."""
        return self.net(x)

    def at_sites(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` at the local sites with flat indices ``index``: ``(B, C_out, n)``.
        The hidden layers run on the whole local lattice (the last one's receptive field
        needs them); the output layer only on the ``n`` sites."""
        *hidden, last = self.net
        for module in hidden:
            x = module(x)
        return last.at_sites(x, index)


class AffineCoupling(Flow):
    """Checkerboard affine coupling ``u = m v + (1 - m)(v e^s + t)``, ``(s, t) = CNN(m v)``.

    ``parity`` selects the frozen sublattice; ``s_activation`` (e.g. ``"tanh"``) is applied to
    the ``s`` channel to bound the log-scale.
    """

    first = 1

    def __init__(
        self,
        grid: ProcessGrid,
        parity: int,
        hidden: Sequence[int] = (),
        kernel_size: int = 3,
        activation: str = "tanh",
        s_activation: str | None = "tanh",
        bias: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(grid)
        self.parity = int(parity) % 2
        self.net = ConvNet(grid, 1, 2, hidden, kernel_size, activation, bias, dtype)
        self.s_act = make_activation(s_activation)
        frozen = parity_mask(grid, self.parity, dtype=dtype or torch.get_default_dtype())
        self.register_buffer("frozen", frozen, persistent=False)
        self.register_buffer("active", 1.0 - frozen, persistent=False)

    def _st(self, x_frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # unbind, not two selects: its backward stacks the two cotangents, where each
        # select's would zero a field of both channels and autograd would add the two
        s, t = self.net(x_frozen.unsqueeze(1)).unbind(1)
        return self.s_act(s) * self.active, t * self.active

    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log|det du/dv|)`` of this layer on the local block (halo exchanges inside)."""
        s, t = self._st(self.frozen * v)
        u = v * torch.exp(s) + t
        return u, logdet_terms(s)

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log|det dv/du|)``: the exact inverse of :meth:`forward_local`."""
        s, t = self._st(self.frozen * u)
        v = (u - t) * torch.exp(-s)
        return v, -logdet_terms(s)


class GlobalRescale(Flow):
    """``u = e^{c} v`` with one learned ``c`` (init 0); ``log|det| = c * #sites``."""

    first = 1

    def __init__(self, grid: ProcessGrid, dtype: torch.dtype | None = None) -> None:
        super().__init__(grid)
        self.log_scale = nn.Parameter(torch.zeros((), dtype=dtype))

    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log-det terms)``: ``c`` per local site."""
        ld = self.log_scale.expand(v.shape[0], v[0].numel())
        return v * torch.exp(self.log_scale), ld

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log-det terms)``: ``-c`` per local site."""
        ld = (-self.log_scale).expand(u.shape[0], u[0].numel())
        return u * torch.exp(-self.log_scale), ld


def phi4_affine_flow(
    grid: ProcessGrid,
    n_pairs: int = 2,
    hidden: Sequence[int] = (8,),
    kernel_size: int = 3,
    activation: str = "tanh",
    s_activation: str | None = "tanh",
    bias: bool = True,
    rescale: bool = True,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
) -> Composition:
    """``n_pairs`` coupling pairs (parity 0 then 1), optionally followed by a global rescaling.

    ``hidden`` lists the hidden channel counts of each CNN (its depth is ``len(hidden) + 1``).
    """
    kwargs = dict(locals())
    kwargs.pop("grid")
    dt = dtype_from_name(dtype)
    layers: list[Flow] = []
    for _ in range(int(n_pairs)):
        for parity in (0, 1):
            layers.append(
                AffineCoupling(
                    grid, parity, hidden, kernel_size, activation, s_activation, bias, dtype=dt
                )
            )
    if rescale:
        layers.append(GlobalRescale(grid, dtype=dt))
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.phi4:phi4_affine_flow", kwargs)


def phi4_minimal_flow(grid: ProcessGrid, dtype: str | torch.dtype = "float64") -> Composition:
    """The 37-parameter preset of Albandea et al. (2023): one pair, ``k = 3``, no hidden layer."""
    flow = phi4_affine_flow(
        grid, n_pairs=1, hidden=(), kernel_size=3, s_activation="tanh", bias=False, dtype=dtype
    )
    return record_architecture(flow, "kernels.flows.phi4:phi4_minimal_flow", {"dtype": dtype})
