"""2D U(1) plaquette couplings in a sweep order that never disturbs a finished plaquette.

Physics: in 2D U(1) with ``S = beta sum_P (1 - cos P)`` on a torus the ``V`` plaquette angles
are independent von Mises variables up to one global constraint (``sum_x P_x = 0 mod 2 pi``),
which is why the exact solution (:mod:`kernels.theories.u1_exact`) is a character sum.
Under the uniform (Haar) prior any ``V - 1`` plaquettes are independent and uniform.

The coupling layer is :class:`kernels.flows.u1.U1PlaquetteCoupling` (same update, log-det and
inverse; see that module), only with other masks. A link ``theta_0(x)`` enters ``P(x)`` (+1)
and ``P(x - 1^)`` (-1); ``theta_1(x)`` enters ``P(x)`` (-1) and ``P(x - 0^)`` (+1). Moving the
links of one set changes the *active* plaquettes ``P(x)`` by the learned elementwise map and
the *passive* neighbours by the opposite amount; every other plaquette is *frozen* and feeds
the conditioner. A passive plaquette that is still uniform and independent stays uniform and
independent after the shift (a shift of a uniform angle by an independent amount), so
sweeping in the order

1. rows ``r = L_1 - 1, ..., 1``: active links ``theta_0(x_0, r)``, active plaquettes row
   ``r``, passive row ``r - 1`` (not yet transformed);
2. then inside row 0, ``c = L_0 - 1, ..., 1``: active link ``theta_1(c, 0)``, active
   plaquette ``P(c, 0)``, passive ``P(c - 1, 0)``,

transforms every plaquette except ``P(0, 0)`` exactly once, never touching a finished one; the
last one carries the global constraint. ``2 (L - 1)`` layers per sweep (``n_sweeps``
repeats the schedule). With the ideal elementwise map (uniform -> von Mises) every
plaquette but ``P(0, 0)`` has its exact marginal; the remaining mismatch is the constraint
(reweighting ``e^{beta cos P(0,0)}``, ESS ``~ I_0(beta)^2 / I_0(2 beta)`` without context),
which the conditioner networks can reduce.

Initialisation (:func:`init_marginal`): the single-plaquette problem is solved first, by
reverse-KL fitting of one elementwise map (uniform -> ``e^{beta cos P}``, 1D, seconds), and
every layer starts as that map (last convolution's weights zero, its bias the fitted
parameters). Reverse-KL training of the whole flow then only has to learn the context
corrections; started from a random network it stalls far from this point (the K mixture
components start nearly symmetric and the context noise of every layer has to be unlearnt).

Specific to 2D U(1) (a known-structure architecture, not a generic one like
:func:`kernels.flows.u1.u1_ncp_flow`); the layers depend on ``L``, so a model does not
transfer to another lattice size. Gauge equivariant: links move by functions of
plaquettes only. Inherits the parent's requirement that the extents be multiples of 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from parallel import ProcessGrid

from ..theories.u1_exact import scaled_bessel_i
from .base import Composition, dtype_from_name, record_architecture
from .splines import rq_spline
from .u1 import TWO_PI, U1PlaquetteCoupling, ncp_log_derivative, ncp_mixture


class U1SweepCoupling(U1PlaquetteCoupling):
    """:class:`U1PlaquetteCoupling` on row ``index`` (``mu = 0``) or on plaquette
    ``(index, 0)`` (``mu = 1``) of the sweep schedule (module docstring)."""

    def __init__(
        self,
        grid: ProcessGrid,
        mu: int,
        index: int,
        n_mix: int = 4,
        hidden: Sequence[int] = (),
        kernel_size: int = 3,
        activation: str = "tanh",
        dtype: torch.dtype | None = None,
        transform: str = "ncp",
    ) -> None:
        super().__init__(
            grid, mu, 0, n_mix, hidden, kernel_size, activation, dtype=dtype, transform=transform
        )
        x0, x1 = grid.global_coords
        l0, l1 = grid.shape
        if mu == 0:
            if not 0 < index < l1:
                raise ValueError(f"row sweep index must be in 1..{l1 - 1}, got {index}")
            active, passive = x1 == index, x1 == index - 1
        else:
            if not 0 < index < l0:
                raise ValueError(f"row-0 sweep index must be in 1..{l0 - 1}, got {index}")
            active = (x0 == index) & (x1 == 0)
            passive = (x0 == index - 1) & (x1 == 0)
        dt = dtype or torch.get_default_dtype()
        self.index = int(index)
        self.active = torch.from_numpy(active.astype(np.float64)).to(dt)
        self.frozen = torch.from_numpy((~(active | passive)).astype(np.float64)).to(dt)


def u1_sweep_flow(
    grid: ProcessGrid,
    n_mix: int = 4,
    hidden: Sequence[int] = (),
    kernel_size: int = 3,
    activation: str = "tanh",
    n_sweeps: int = 1,
    dtype: str | torch.dtype = "float64",
    checkpoint_layers: bool = False,
    transform: str = "ncp",
) -> Composition:
    """``n_sweeps`` sweeps of ``2 (L - 1)`` :class:`U1SweepCoupling` layers (2D U(1));
    ``transform`` ``"ncp"`` or ``"spline"`` (``n_mix`` components or bins)."""
    kwargs = dict(locals())
    kwargs.pop("grid")
    if grid.ndim != 2:
        raise ValueError(f"u1_sweep_flow is 2D only, lattice {list(grid.shape)}")
    dt = dtype_from_name(dtype)
    l0, l1 = grid.shape
    order = [(0, r) for r in range(l1 - 1, 0, -1)] + [(1, c) for c in range(l0 - 1, 0, -1)]
    layers = [
        U1SweepCoupling(grid, mu, i, n_mix, hidden, kernel_size, activation, dt, transform)
        for _ in range(int(n_sweeps))
        for mu, i in order
    ]
    flow = Composition(grid, layers, checkpoint_layers=checkpoint_layers)
    return record_architecture(flow, "kernels.flows.u1_sweep:u1_sweep_flow", kwargs)


def marginal_map(
    layer: U1PlaquetteCoupling, p: torch.Tensor, raw: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h(p) + t, log h'(p))`` of ``layer``'s elementwise transform for plaquettes ``p``
    ``(N,)`` in ``[0, 2 pi)`` with raw parameters ``raw`` ``(N, k)`` or, shared by every
    plaquette, ``(1, k)`` (NCP ``s`` or spline widths/heights/derivatives), as the layer
    computes them from its network output. Shared spline parameters give their knots once
    (then broadcast), not once per plaquette."""
    if layer.transform == "spline":
        n = p.shape[0]
        knots = (x.expand(n, *x.shape[1:]) for x in layer._knots(raw))
        h, _, logdh = rq_spline(p, *knots)
    else:
        h, _ = ncp_mixture(p, raw)
        logdh = ncp_log_derivative(p, raw)
    return h + t, logdh


REPORT_REFINE = 8  # fit_marginal reports its KL on this many times finer a grid


def fit_marginal(
    layer: U1PlaquetteCoupling,
    beta: float,
    steps: int = 2000,
    samples: int = 4096,
    lr: float = 3e-2,
    seed: int = 0,
    polish: int = 30,
) -> tuple[torch.Tensor, float]:
    """Fit ``layer``'s elementwise map to send uniform ``p`` to ``e^{beta cos P} / (2 pi I_0)``
    by reverse KL; returns (raw parameters and shift as one vector, the KL per plaquette
    ``E[log q - log p]``, exact normalisation included).

    The expectation over uniform ``p`` is one-dimensional, so it is taken on a grid of
    ``samples`` cells: ``steps`` Adam steps on stratified draws (one uniform point per cell,
    unbiased), then up to ``polish`` rounds of L-BFGS on the cell midpoints (a deterministic
    midpoint quadrature; Adam alone stalls at a KL per plaquette a few times larger, which a
    ``V``-plaquette flow pays ``V`` times). The returned KL is the midpoint rule on
    ``REPORT_REFINE * samples + 1`` cells, points neither optimiser used (the polish lowers its
    own midpoint value below the true KL by fitting that grid's quadrature error)."""
    gen = torch.Generator().manual_seed(seed)
    k = layer.net.net[-1].weight.shape[0] - 1
    dt = layer.net.net[-1].weight.dtype
    init = 1.5 * torch.randn(k, generator=gen, dtype=dt) if layer.transform == "ncp" else None
    raw = torch.zeros(k, dtype=dt) if init is None else init
    raw.requires_grad_(True)
    t = torch.zeros(1, dtype=dt, requires_grad=True)
    # log of int e^{beta cos P} dP = log(2 pi I_0(beta)), via e^{-beta} I_0 for stability
    log_norm = math.log(TWO_PI * float(scaled_bessel_i(np.array([0]), beta)[0])) + beta
    cells = torch.arange(samples, dtype=dt)
    cell = TWO_PI / samples

    def kl_at(p: torch.Tensor) -> torch.Tensor:
        shared = raw[None] if layer.transform == "spline" else raw.expand(p.numel(), k)
        u, logdh = marginal_map(layer, p, shared, t)
        return (-math.log(TWO_PI) - logdh - beta * torch.cos(u)).mean() + log_norm

    kl = torch.tensor(float("nan"))
    if steps > 0:
        opt = torch.optim.Adam([raw, t], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 100)
        for _ in range(int(steps)):
            kl = kl_at((cells + torch.rand(samples, generator=gen, dtype=dt)) * cell)
            opt.zero_grad()
            kl.backward()
            opt.step()
            sched.step()
    if polish > 0:
        mid = (cells + 0.5) * cell
        lbfgs = torch.optim.LBFGS(
            [raw, t],
            lr=1.0,
            max_iter=100,
            history_size=50,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
        )

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            value = kl_at(mid)
            value.backward()
            return value

        for _ in range(int(polish)):
            lbfgs.step(closure)
    # the reported KL: midpoints of a finer grid that neither optimiser saw (L-BFGS on the
    # fixed midpoints learns their quadrature error: its own value sits ~5% below the true KL)
    fine = REPORT_REFINE * samples + 1
    with torch.no_grad():
        kl = kl_at((torch.arange(fine, dtype=dt) + 0.5) * (TWO_PI / fine))
    return torch.cat((raw.detach(), t.detach())), float(kl)


def init_marginal(flow: Composition, beta: float, **fit_kwargs) -> float:
    """Start every :class:`U1SweepCoupling` of ``flow`` as the fitted single-plaquette map
    (:func:`fit_marginal`; identical on every rank); returns the fit's KL per plaquette."""
    layers = [m for m in flow.layers if isinstance(m, U1SweepCoupling)]
    if not layers:
        raise ValueError("init_marginal: the flow has no U1SweepCoupling layers")
    params, kl = fit_marginal(layers[0], beta, **fit_kwargs)
    with torch.no_grad():
        for layer in layers:
            last = layer.net.net[-1]
            last.weight.zero_()
            last.bias.copy_(params.to(last.bias.dtype))
    return kl
