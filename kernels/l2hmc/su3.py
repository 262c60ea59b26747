"""SU(3) L2HMC: generalized leapfrog layers on links, with the group exponential as x-update.

State ``(U, P)``: links ``U_mu(x)`` ``(B, Nd, *local, 3, 3)`` and su(3) momenta
``P_mu(x) = sum_a p_a T_a`` of the same shape (generators ``T_a = i lambda_a / 2``,
``K = (1/2) sum p_a^2``, force ``F = sum_a T_a dS/dw_a`` of ``U -> exp(w T) U``, the conventions
of :class:`kernels.theories.su3.SU3Gauge`: plain MD is ``dP/dt = -F``, ``dU/dt = P U``).

One layer ``k`` (networks ``V^a, V^b`` for the momentum, ``X^mu`` for the links of direction
``mu``; learned step sizes ``eps_v = e^{a_k}``, ``eps_x = e^{b_k}``)::

    P <- P e^{(eps_v/2) s_v} - (eps_v/2) F(U) e^{eps_v q_v},    (s_v, q_v) = V^a(U, F)
    for mu = 0 .. Nd-1:                                           (link-direction masks)
        U_mu <- exp(eps_x [P_mu e^{eps_x q_x} + T_mu]) U_mu,      (q_x, t) = X^mu(U_{nu != mu}, P)
        T_mu(x) = sum_{(nu, lam): nu, lam != mu} t_{nu lam}(x) TA(U_{nu lam}(x))
    P <- P e^{(eps_v/2) s_v} - (eps_v/2) F(U) e^{eps_v q_v},    (s_v, q_v) = V^b(U, F)

``s_v, q_v, q_x, t`` are one real number per link (resp. per frozen plane) and site, so the
whole update is gauge covariant: the network inputs are gauge invariant, ``P``, ``F`` and
``TA(U_{nu lam}(x))`` transform as ``g(x) . g(x)^+``. (A translation ``t_v`` of the momentum is
left out: the only covariant direction at hand is ``F`` itself, which ``q_v`` already scales.)
The x-update is the l2hmc-qcd form (Foreman et al., arXiv:2112.01582) without the ``s_x``
rescaling, which has no meaning for a group element.

Inputs (all gauge invariant, channels ``(B, C, *local)``)
---------------------------------------------------------
* momentum networks: ``Re Tr U_P / 3``, ``Im Tr U_P / 3`` of the ``Nd (Nd-1)/2`` plaquettes at
  ``x`` and ``log(1 + |F_mu(x)|^2)``, ``|F|^2 = -Re Tr F^2``, per direction (they never read
  ``P``);
* position network of direction ``mu``: ``Re/Im Tr U_P / 3`` of the plaquettes at ``x`` in the
  planes without ``mu`` (frozen links only) and ``log(1 + |P_nu(x)|^2)`` of every direction (the
  momentum is not changed by an x-update, so the network may read all of it).

The networks are :class:`kernels.flows.phi4.ConvNet` (periodic :class:`parallel.LatticeConv`,
halo exchange; default kernel size 1, a pointwise MLP: a 4D ``3^4`` kernel triples the cost of
a layer), ``s = c_s tanh(a_s)``, ``q = c_q tanh(a_q)``, ``t = c_t tanh(a_t)`` with learned
``c = e^lambda``.

Jacobian (algebra coordinates ``U -> exp(w) U``, Haar measure = Lebesgue measure in ``w``)
------------------------------------------------------------------------------------------
* v-update: at fixed ``U`` each link's 8 momentum components are multiplied by ``e^{(eps_v/2) s_v}``
  and shifted: ``log|J| = 8 (eps_v/2) s_v`` per link.
* x-update of direction ``mu``: ``W = eps_x [P_mu e^{eps_x q_x} + T_mu]`` reads only the frozen
  links and ``P``, so ``exp(W) exp(w) U = exp(Ad_{e^W} w) exp(W) U``: the Jacobian is block
  triangular with the orthogonal blocks ``Ad_{e^W}`` (det 1) and identities; ``log|J| = 0``.

So ``log|J|`` of the layer map is ``sum_links 8 (eps_v/2) (s_v^a + s_v^b)`` (forward), tested
against the brute-force ``slogdet`` of the 2 x 512 x 8 ... Jacobian on a 2^4 lattice. The
inverse runs the inverse updates in reverse order: ``U_mu <- exp(-W) U_mu`` with the same
``W`` (its inputs are unchanged by the update), ``P <- (P + (eps_v/2) F e^{eps_v q_v})
e^{-(eps_v/2) s_v}``. With all networks zero and ``eps_v = eps_x = eps`` a layer is one
leapfrog step (the Nd drifts commute: each reads only ``P``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kernels.flows.grid_stable import log1p
from parallel import ProcessGrid, shift

from ..groups.su_n import algebra_norm2, dagger, mm, project_ta, su_expm, trace
from .networks import LeapfrogModel, scaled_convnet
from .runner import run_layers

NC = 3
NG = NC * NC - 1

ForceFn = Any


def _sh(x: torch.Tensor, grid: ProcessGrid, mu: int) -> torch.Tensor:
    """``x(y + mu)`` of a one-direction field ``(B, *local, 3, 3)``."""
    return shift(x, grid, mu, 1, first=1)


def plaquette_matrices(
    u: torch.Tensor, grid: ProcessGrid, planes: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """``U_{mu nu}(x) = U_mu(x) U_nu(x+mu) U_mu(x+nu)^+ U_nu(x)^+`` for each plane, each
    ``(B, *local, 3, 3)``."""
    out = []
    for mu, nu in planes:
        um, un = u[:, mu], u[:, nu]
        out.append(mm(mm(mm(um, _sh(un, grid, mu)), dagger(_sh(um, grid, nu))), dagger(un)))
    return out


def _trace_features(plaqs: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``Re Tr / 3`` and ``Im Tr / 3`` of the plaquettes as channels ``(B, 2 n, *local)``."""
    if not plaqs:
        return like.new_zeros((like.shape[0], 0, *like.shape[2:-2]))
    tr = torch.stack([trace(p) for p in plaqs], dim=1) / NC
    return torch.cat([tr.real, tr.imag], dim=1)


class _Head(nn.Module):
    """``features -> (s, q, t)`` with ``n_s, n_q, n_t`` channels, each ``c tanh(.)`` with a
    learned ``c = e^lambda`` (all bounded: an unbounded translation lets the plaquette-jump
    objective run the step out of the acceptance window, where its gradient vanishes)."""

    def __init__(
        self,
        grid: ProcessGrid,
        in_channels: int,
        n_s: int,
        n_q: int,
        n_t: int,
        hidden: Sequence[int],
        kernel_size: int,
        activation: str,
        init_scale: float,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.n = (int(n_s), int(n_q), int(n_t))
        self.net = scaled_convnet(
            grid, in_channels, sum(self.n), hidden, kernel_size, activation, init_scale, dtype
        )
        # only the scales that are used (every parameter gets a gradient)
        self.log_scale_s = nn.Parameter(torch.zeros((), dtype=dtype)) if n_s else None
        self.log_scale_q = nn.Parameter(torch.zeros((), dtype=dtype)) if n_q else None
        self.log_scale_t = nn.Parameter(torch.zeros((), dtype=dtype)) if n_t else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(s, q, t)`` channel blocks of the output (``s`` empty when ``n_s = 0``)."""
        out = self.net(features)
        ns, nq, _ = self.n
        s = out[:, :0]
        if self.log_scale_s is not None:
            s = torch.exp(self.log_scale_s) * torch.tanh(out[:, :ns])
        q = out[:, ns:ns]
        if self.log_scale_q is not None:
            q = torch.exp(self.log_scale_q) * torch.tanh(out[:, ns : ns + nq])
        t = out[:, ns + nq :]
        if self.log_scale_t is not None:
            t = torch.exp(self.log_scale_t) * torch.tanh(t)
        return s, q, t


def _links(a: torch.Tensor) -> torch.Tensor:
    """Per-link scalars ``(B, C, *local)`` -> broadcastable over the 3x3 matrices."""
    return a[..., None, None]


class SU3L2HMCModel(LeapfrogModel):
    """The ``N``-layer L2HMC map of SU(3) links (module docstring); the interface of
    :class:`kernels.l2hmc.layers.L2HMCModel` (``forward_map``, ``inverse_map``,
    ``directed_map``, ``step_sizes``, ``architecture``)."""

    def __init__(
        self,
        grid: ProcessGrid,
        theory_name: str = "su3",
        n_layers: int = 2,
        hidden: Sequence[int] = (8,),
        kernel_size: int = 1,
        activation: str = "tanh",
        step_size: float = 0.1,
        init_scale: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if theory_name != "su3":
            raise ValueError(f"SU3L2HMCModel is for the theory 'su3', not {theory_name!r}")
        if n_layers < 1:
            raise ValueError(f"L2HMC needs at least one leapfrog layer, got {n_layers}")
        if not step_size > 0:
            raise ValueError(f"L2HMC step_size must be > 0, got {step_size}")
        if grid.ndim < 2:
            raise ValueError(f"SU(3) L2HMC needs >= 2 dimensions, lattice {list(grid.shape)}")
        self.record_architecture(
            grid, theory_name, n_layers, hidden, kernel_size, activation, step_size, init_scale
        )
        nd = grid.ndim
        self.nd = nd
        self.planes = [(mu, nu) for mu in range(nd) for nu in range(mu + 1, nd)]
        #: the planes without ``mu`` (frozen while the links of direction ``mu`` move)
        self.frozen_planes = [[p for p in self.planes if mu not in p] for mu in range(nd)]

        def head(n_in: int, n_s: int, n_q: int, n_t: int) -> _Head:
            return _Head(
                grid, n_in, n_s, n_q, n_t, hidden, kernel_size, activation, init_scale, dtype
            )

        n_v_in = 2 * len(self.planes) + nd
        self.vnets = nn.ModuleList(
            [nn.ModuleList([head(n_v_in, nd, nd, 0) for _ in range(2)]) for _ in range(n_layers)]
        )
        n_frozen = [len(self.frozen_planes[mu]) for mu in range(nd)]
        self.xnets = nn.ModuleList(
            [
                nn.ModuleList([head(2 * n_frozen[mu] + nd, 0, 1, n_frozen[mu]) for mu in range(nd)])
                for _ in range(n_layers)
            ]
        )
        log_eps = math.log(step_size)
        self.log_eps_v = nn.Parameter(torch.full((n_layers,), log_eps, dtype=dtype))
        self.log_eps_x = nn.Parameter(torch.full((n_layers,), log_eps, dtype=dtype))

    # ------------------------------------------------------------ single updates
    def _v_step(self, net, u, p, f, eps, inverse: bool):
        real = eps.dtype
        feats = torch.cat(
            [
                _trace_features(plaquette_matrices(u, self.grid, self.planes), u).to(real),
                log1p(algebra_norm2(f)).to(real),
            ],
            dim=1,
        )
        s, q, _ = net(feats)
        half = 0.5 * eps
        kick = half * f * _links(torch.exp(eps * q))
        scale = _links(torch.exp(half * s))
        logd = NG * half * s
        if not inverse:
            return p * scale - kick, logd
        return (p + kick) / scale, -logd

    def _x_step(self, net, mu, u, p, eps, inverse: bool):
        real = eps.dtype
        frozen = plaquette_matrices(u, self.grid, self.frozen_planes[mu])
        feats = [_trace_features(frozen, u).to(real), log1p(algebra_norm2(p)).to(real)]
        feats = torch.cat(feats, dim=1)
        _, q, t = net(feats)
        w = p[:, mu] * _links(torch.exp(eps * q[:, 0]))
        for j, plaq in enumerate(frozen):
            w = w + _links(t[:, j]) * project_ta(plaq)
        w = eps * w
        new = mm(su_expm(-w if inverse else w), u[:, mu])
        return torch.cat([u[:, :mu], new.unsqueeze(1), u[:, mu + 1 :]], dim=1)

    # ------------------------------------------------------------ layer pieces
    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """The layers work on the links and momenta as they are."""
        return x

    def from_internal(self, x: torch.Tensor) -> torch.Tensor:
        """The layers work on the links and momenta as they are."""
        return x

    def v_update(self, k: int, which: int, u, p, f, inverse: bool):
        """Momentum half-step ``which`` (0: before, 1: after the x-updates) of layer ``k``:
        ``(P', per-link log-Jacobian)``."""
        eps = torch.exp(self.log_eps_v[k])
        return self._v_step(self.vnets[k][which], u, p, f, eps, inverse)

    def x_updates(self, k: int, u, p, inverse: bool):
        """The ``Nd`` link-direction updates of layer ``k`` (reversed when ``inverse``):
        ``(U', zero per-link log-Jacobian)``."""
        eps = torch.exp(self.log_eps_x[k])
        for mu in reversed(range(self.nd)) if inverse else range(self.nd):
            u = self._x_step(self.xnets[k][mu], mu, u, p, eps, inverse)
        return u, u.new_zeros(u.shape[:-2], dtype=eps.dtype)

    # ------------------------------------------------------------ maps
    def forward_map(
        self, x: torch.Tensor, v: torch.Tensor, force: ForceFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(U, P) -> (U', P')`` (``d = +1``), per-link log-Jacobian ``(B, Nd, *local)``
        (its lattice sum is ``log|J|``), force evaluations."""
        return run_layers(self, x, v, torch.ones(x.shape[0]), force)

    def inverse_map(
        self, x: torch.Tensor, v: torch.Tensor, force: ForceFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The exact inverse of :meth:`forward_map` (``d = -1``); per-link log-Jacobian of
        the inverse map, force evaluations."""
        return run_layers(self, x, v, -torch.ones(x.shape[0]), force)

    def directed_map(
        self, x: torch.Tensor, v: torch.Tensor, direction: torch.Tensor, force: ForceFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Forward map for ``direction = +1``, inverse for the others, in one pass
        (:func:`kernels.l2hmc.layers.run_layers`)."""
        return run_layers(self, x, v, direction, force)
