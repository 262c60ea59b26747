"""The flow interface: invertible field transformations with an exact, global log-det.

A *flow* ``F`` maps a field ``v`` in the theory's layout (``Theory.field_shape``: scalars
``(B, *local)``, U(1) angles ``(B, Nd, *local)``, gauge flows act on the links) to ``u = F(v)``::

    forward(v) -> (u, log|det dF/dv|)          inverse(u) -> (v, log|det dF^{-1}/du|)

with both log-dets of shape ``(B,)`` and *global*: summed over the whole lattice (all ranks of
the domain group), identical on every rank and on every process grid. For a flow that is not
a layer stack the two log-dets obey ``logdet_inverse(F(v)) = -logdet(v)``.

Layers implement the rank-local halves, :meth:`Flow.forward_local` and
:meth:`Flow.inverse_local`, returning the log-det as its *per-site terms* on this rank: a
``(B, ...)`` tensor whose elements add up to the layer's log-det (e.g. ``log|du_x/dv_x|`` of
each active site, :func:`logdet_terms`), in any order or layout. :meth:`Flow.forward` /
:meth:`Flow.inverse` sum them over all ranks with the exact, correctly rounded
:func:`parallel.row_sum` (autograd-aware), so the log-det is a pure function of the global
field: trivialized-HMC and flow-Metropolis records are byte-identical on every process grid.
A :class:`Composition` concatenates the terms of its layers and reduces once. (A layer that
returns ``(B,)`` per-rank partial sums still works, but its float partial sums depend on the
split of the lattice in the last bits.)

Every layer is distributed through the parallel layer only (``LatticeConv`` for
convolutions, :func:`parallel.shift` for stencils) and builds its masks from the global
coordinates ``grid.global_coords``, so a layer computes the same function for any process
grid, and a translation-invariant layer runs unchanged on a larger lattice (see
:meth:`Flow.rebuild_for`).

Models made by the builder functions of :mod:`kernels.flows.phi4` / :mod:`kernels.flows.u1`
record how they were made in :attr:`Flow.architecture` (``{"builder": "module:function",
"kwargs": {...}}``, JSON-serialisable) so the model registry can rebuild them on any grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib import import_module
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from parallel import ProcessGrid, row_sum

from . import grid_stable


class FlowError(RuntimeError):
    """A flow cannot do what was asked (e.g. an iterative inverse did not converge)."""


class Flow(nn.Module):
    """Base class of invertible lattice field transformations.

    Subclasses implement :meth:`forward_local` and :meth:`inverse_local`. Attributes:

    * ``grid``: the :class:`parallel.ProcessGrid` the flow runs on;
    * ``first``: array dim of lattice axis 0 in the fields it acts on (1 scalar, 2 gauge);
    * ``periodic``: ``True`` when ``F(v + 2 pi n) = F(v) + 2 pi n`` for integer fields ``n``
      (angle flows), so the sampler may wrap ``v`` like the theory wraps its angles;
    * ``architecture``: how to rebuild it (set by the builder functions), or ``None``.
    """

    first: int = 1
    periodic: bool = False

    def __init__(self, grid: ProcessGrid) -> None:
        super().__init__()
        self.grid = grid
        self.architecture: dict[str, Any] | None = None

    # ------------------------------------------------------------ to implement
    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F(v), log-det terms)``: the per-site terms ``(B, ...)`` of ``log|det dF/dv|`` on
        this rank's sites (module docstring)."""
        raise NotImplementedError

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F^{-1}(u), log-det terms)``: the per-site terms ``(B, ...)`` of
        ``log|det dF^{-1}/du|`` on this rank's sites."""
        raise NotImplementedError

    # ------------------------------------------------------------ public
    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(u, logdet)`` with the global log-det per chain, shape ``(B,)`` (exact sum)."""
        u, ld = self.forward_local(v)
        return u, global_logdet(ld, self.grid)

    def inverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, logdet_inverse)`` with ``logdet_inverse = log|det dF^{-1}/du|``, global."""
        v, ld = self.inverse_local(u)
        return v, global_logdet(ld, self.grid)

    def rebuild_for(self, grid: ProcessGrid) -> Flow:
        """The same architecture and parameters on another grid/lattice (via the builder)."""
        if self.architecture is None:
            raise FlowError(f"{type(self).__name__} was not made by a builder; cannot rebuild")
        new = build_flow(self.architecture, grid)
        new.load_state_dict(self.state_dict())
        return new

    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def layer_iterations(flow: Flow, layer_type: type) -> list[int]:
    """``last_iterations`` (fixed-point steps of the last inverse) of every ``layer_type``
    layer of ``flow`` (a :class:`Composition` or a single layer), in order."""
    layers = flow.layers if isinstance(flow, Composition) else [flow]
    return [int(la.last_iterations) for la in layers if isinstance(la, layer_type)]


def _zeros_like_batch(x: torch.Tensor) -> torch.Tensor:
    """Real per-chain zeros (a log-det is real also for complex fields, e.g. SU(N) links)."""
    return torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)


def logdet_terms(x: torch.Tensor) -> torch.Tensor:
    """The log-det terms ``x`` (``(B, ...)``, e.g. ``log|du_x/dv_x|`` per site) as ``(B, n)``."""
    return x.reshape(x.shape[0], -1)


def global_logdet(terms: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``sum`` of the log-det terms (``(B, ...)`` on each rank) over all of them and all ranks
    of the domain group, per chain: correctly rounded, grid-independent, autograd-aware."""
    return row_sum(logdet_terms(terms), grid)


class Composition(Flow):
    """``F = F_n o ... o F_1`` (``layers[0]`` acts first); log-dets add.

    ``checkpoint_layers=True`` recomputes each layer's activations in the backward pass
    (``torch.utils.checkpoint``, non-reentrant) instead of storing them: memory ~ one layer
    instead of all of them, at the cost of one more forward per layer. The recomputation
    repeats the layer's halo exchanges; every rank runs the same backward, so they match.
    """

    def __init__(
        self, grid: ProcessGrid, layers: Iterable[Flow], checkpoint_layers: bool = False
    ) -> None:
        super().__init__(grid)
        self.layers = nn.ModuleList(layers)
        if not len(self.layers):
            raise ValueError("a Composition needs at least one layer")
        firsts = {layer.first for layer in self.layers}
        if len(firsts) != 1:
            raise ValueError(f"layers disagree on the field layout (first = {sorted(firsts)})")
        self.first = firsts.pop()
        self.periodic = all(layer.periodic for layer in self.layers)
        self.checkpoint_layers = bool(checkpoint_layers)

    def _run(self, fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.checkpoint_layers and torch.is_grad_enabled():
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log-det terms)``: the layers in turn; their terms concatenated, ``(B, n)``."""
        terms = []
        for layer in self.layers:
            v, d = self._run(layer.forward_local, v)
            terms.append(logdet_terms(d))
        return v, torch.cat(terms, dim=1)

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log-det terms of the inverse)``: the exact inverse of :meth:`forward_local`."""
        terms = []
        for layer in reversed(self.layers):
            u, d = self._run(layer.inverse_local, u)
            terms.append(logdet_terms(d))
        return u, torch.cat(terms, dim=1)

    def __len__(self) -> int:
        return len(self.layers)


class IdentityFlow(Flow):
    """``F(v) = v`` (log-det 0): plain HMC through the trivialized sampler, and tests."""

    def __init__(self, grid: ProcessGrid, first: int = 1) -> None:
        super().__init__(grid)
        self.first = int(first)
        self.periodic = True
        self.architecture = {
            "builder": "kernels.flows.base:identity_flow",
            "kwargs": {"first": int(first)},
        }

    def forward_local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The identity: ``(v, 0)``."""
        return v, _zeros_like_batch(v)

    def inverse_local(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The identity: ``(u, 0)``."""
        return u, _zeros_like_batch(u)


def identity_flow(grid: ProcessGrid, first: int = 1) -> IdentityFlow:
    """A flow that does nothing (trivialized HMC with it is plain HMC)."""
    return IdentityFlow(grid, first)


# ------------------------------------------------------------------ masks and helpers
def parity_mask(
    grid: ProcessGrid,
    parity: int,
    axes: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Checkerboard ``1`` where ``sum_{mu in axes} x_mu = parity (mod 2)``, shape ``local_shape``.

    Built from the global coordinates, so it is the same global pattern for any process grid.
    """
    axes = range(grid.ndim) if axes is None else axes
    s = sum((grid.global_coords[mu] for mu in axes), np.zeros(grid.local_shape, dtype=np.int64))
    return torch.from_numpy((s % 2 == parity % 2).astype(np.float64)).to(dtype)


def stripe_mask(
    grid: ProcessGrid, axis: int, residues: Sequence[int], period: int, dtype=torch.float64
) -> torch.Tensor:
    """``1`` where ``x_axis mod period`` is in ``residues``, shape ``local_shape`` (global)."""
    r = grid.global_coords[axis] % period
    m = np.isin(r, np.asarray(residues, dtype=np.int64) % period)
    return torch.from_numpy(m.astype(np.float64)).to(dtype)


def require_divisible(grid: ProcessGrid, axis: int, period: int, what: str) -> None:
    """A clear error unless the extent of ``axis`` is a multiple of ``period`` (masks
    align with the domain decomposition)."""
    if grid.shape[axis] % period:
        raise ValueError(
            f"{what} needs the lattice extent along axis {axis} to be a multiple of {period}, "
            f"lattice {list(grid.shape)}"
        )


def stout_sublattice(
    grid: ProcessGrid, mu: int, parity: int, bound: tuple[str, float], layer: str, what: str
) -> tuple[int, int, list[int]]:
    """Checked geometry of a stout-like layer acting on links ``mu`` of one sublattice (parity
    of the coordinates other than ``mu``): ``(mu, parity, other axes)``. ``bound`` is the
    ``(name, value)`` of the coefficient bound, which must lie in (0, 1) for invertibility."""
    nd = grid.ndim
    if nd < 2:
        raise ValueError(f"{layer} needs >= 2 dimensions")
    name, value = bound
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in (0, 1) for invertibility, got {value}")
    mu, parity = int(mu) % nd, int(parity) % 2
    others = [nu for nu in range(nd) if nu != mu]
    for nu in others:
        require_divisible(grid, nu, 2, f"the {what} stout layer's sublattice")
    return mu, parity, others


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": grid_stable.GELU,  # torch's GELU/SiLU/Softplus round by block size on some CPUs
    "silu": grid_stable.SiLU,
    "softplus": grid_stable.Softplus,
    "identity": nn.Identity,
}


def make_activation(name: str | None) -> nn.Module:
    """The activation module called ``name`` (``None``: identity)."""
    if name is None:
        return nn.Identity()
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def build_flow(architecture: dict[str, Any], grid: ProcessGrid) -> Flow:
    """Rebuild a flow from its ``architecture`` record (``builder`` + ``kwargs``) on ``grid``."""
    try:
        module, func = str(architecture["builder"]).split(":")
        kwargs = dict(architecture.get("kwargs", {}))
    except (KeyError, ValueError) as exc:
        raise FlowError(f"malformed architecture record {architecture!r}") from exc
    if not module.startswith("kernels.flows."):
        raise FlowError(f"refusing to build a flow from {module!r} (not in kernels.flows)")
    builder = getattr(import_module(module), func, None)
    if builder is None:
        raise FlowError(f"no builder {func!r} in {module}")
    return builder(grid, **kwargs)


def dtype_from_name(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32"``/``"float64"`` (or a dtype, or None) -> torch dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return {"float32": torch.float32, "float64": torch.float64}[str(name)]
    except KeyError:
        raise ValueError(f"flows run in float32 or float64, not {name!r}") from None


def record_architecture(flow: Flow, builder: str, kwargs: dict[str, Any]) -> Flow:
    """Attach ``{"builder", "kwargs"}`` to ``flow`` (dtype kwargs stored by name)."""
    clean = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif isinstance(v, tuple):
            v = list(v)
        clean[k] = v
    flow.architecture = {"builder": builder, "kwargs": clean}
    return flow


# ------------------------------------------------------------------ element-wise inverses
def solve_increasing(
    func: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    y: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    x0: torch.Tensor,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, bool, float]:
    """Solve ``f(x) = y`` element-wise for an increasing ``f`` with the root in ``[lo, hi]``.

    Safeguarded Newton: a Newton step ``x - (f - y) / f'`` that leaves the current bracket is
    replaced by bisection; the bracket shrinks every step. ``func(x)`` returns ``(f, f')``.
    An element is converged when ``|f(x) - y| <= tol``, or when its root is pinned to machine
    precision (bracket or Newton step below ``8 eps (1 + |x|)``; where ``f`` is steep the
    residual cannot reach ``tol``). Runs without autograd; returns
    ``(x, all converged, max residual)``. Purely local (no communication).
    """
    with torch.no_grad():
        x = torch.clamp(x0.detach(), lo, hi)
        lo, hi, y = lo.detach().clone(), hi.detach().clone(), y.detach()
        ulp = 8.0 * torch.finfo(x.dtype).eps
        done = torch.zeros_like(x, dtype=torch.bool)
        err = float("inf")
        for _ in range(int(max_iter)):
            f, df = func(x)
            r = f - y
            err = float(r.abs().max()) if r.numel() else 0.0
            done = done | (r.abs() <= tol) | ((hi - lo) <= ulp * (1.0 + x.abs()))
            if bool(done.all()):
                return x, True, err
            hi = torch.where(r > 0, x, hi)
            lo = torch.where(r <= 0, x, lo)
            xn = x - r / df
            bad = ~((xn > lo) & (xn < hi)) | ~torch.isfinite(xn)
            xn = torch.where(bad, 0.5 * (lo + hi), xn)
            stalled = (xn - x).abs() <= ulp * (1.0 + x.abs())
            x = torch.where(done, x, xn)
            done = done | stalled
        f, _ = func(x)
        r = f - y
        err = float(r.abs().max()) if r.numel() else 0.0
        done = done | (r.abs() <= tol)
        return x, bool(done.all()), err


def implicit_newton_step(
    func: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """One Newton step from a converged root ``x`` of ``f(x; theta) = y``, with autograd.

    The value is unchanged (up to the tiny residual) and the gradient is the implicit one,
    ``dx = (dy - df/dtheta dtheta) / f'(x)``, so an iterative inverse is differentiable.
    """
    if not torch.is_grad_enabled():
        return x
    x = x.detach()
    f, df = func(x)
    return x - (f - y) / df.detach()


def check_converged(
    ok: bool, err: float, grid: ProcessGrid, what: str, tol: float, it: int
) -> None:
    """Raise :class:`FlowError` on every rank of the domain group if any rank failed."""
    from parallel import global_max

    mine = 0.0 if ok else (err if np.isfinite(err) and err > 0 else float("inf"))
    worst = float(global_max(np.array([mine]), grid)[0])
    if worst > 0.0:
        raise FlowError(
            f"{what}: inverse did not converge to tolerance {tol:g} in {it} iterations "
            f"(largest residual {worst:.3g}); raise max_iter or check the layer's coefficients"
        )
