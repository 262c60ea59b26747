"""Rectangular Wilson loops ``W(R, T)`` of SU(N) gauge fields and the static potential.

With the time axis the last lattice axis ``t`` and a spatial axis ``mu``::

    S_R(x) = U_mu(x) U_mu(x + mu) ... U_mu(x + (R-1) mu)          (spatial line, length R)
    T_T(x) = U_t(x) U_t(x + t) ... U_t(x + (T-1) t)                 (temporal line, length T)
    W(R, T) = < Re Tr[ S_R(x) T_T(x + R mu) S_R(x + T t)^+ T_T(x)^+ ] > / N

averaged over all sites ``x`` and the ``d - 1`` spatial directions (unsmeared links; apply
the Wilson flow first for smeared loops). ``W(1, 1)`` is the temporal plaquette. The static
potential in lattice units follows from ``a V(R) = lim_T ln[W(R, T) / W(R, T + 1)]``
(``trivhmc analyze`` forms ``V_eff(R, T)`` from the columns ``W_R{R}_T{T}``).

Lines are built by repeated one-site distributed shifts (parallel.shift), so any process
grid works and the result is independent of it (global sums are correctly rounded).
"""

from __future__ import annotations

import torch

from parallel import ProcessGrid, lattice_sum, shift

from .groups.su_n import dagger


def _line(link: torch.Tensor, grid: ProcessGrid, mu: int, length: int) -> list[torch.Tensor]:
    """``[L_1, ..., L_length]`` with ``L_r(x) = U(x) U(x+mu) ... U(x+(r-1)mu)``."""
    lines = [link]
    for _ in range(length - 1):
        lines.append(link @ shift(lines[-1], grid, mu, 1, first=1))
    return lines


def _moved(x: torch.Tensor, grid: ProcessGrid, mu: int, steps: int) -> torch.Tensor:
    """``x(n + steps mu)`` at ``n`` (``steps`` one-site shifts)."""
    for _ in range(steps):
        x = shift(x, grid, mu, 1, first=1)
    return x


def wilson_loop_table(
    u: torch.Tensor, grid: ProcessGrid, r_max: int, t_max: int
) -> dict[tuple[int, int], torch.Tensor]:
    """``{(R, T): W(R, T)}`` per chain ``(B,)`` for ``1 <= R <= r_max``, ``1 <= T <= t_max``.

    ``u`` has shape ``(B, d, *local, N, N)``; the last lattice axis is time.
    """
    nd = u.shape[1]
    t = nd - 1
    n = u.shape[-1]
    if r_max < 1 or t_max < 1:
        raise ValueError("wilson loops need r_max >= 1 and t_max >= 1")
    if t_max > grid.shape[t] or any(r_max > grid.shape[mu] for mu in range(t)):
        raise ValueError(f"loops up to {r_max} x {t_max} do not fit the lattice {list(grid.shape)}")
    temporal = _line(u[:, t], grid, t, t_max)  # T_T(x), T = 1..t_max
    out: dict[tuple[int, int], torch.Tensor] = {}
    for mu in range(t):
        spatial = _line(u[:, mu], grid, mu, r_max)  # S_R(x), R = 1..r_max
        for r in range(1, r_max + 1):
            s_r = spatial[r - 1]
            s_up = s_r  # S_R(x + T t), built step by step
            for tt in range(1, t_max + 1):
                s_up = shift(s_up, grid, t, 1, first=1)
                t_far = _moved(temporal[tt - 1], grid, mu, r)  # T_T(x + R mu)
                loop = s_r @ t_far @ dagger(s_up) @ dagger(temporal[tt - 1])
                tr = torch.diagonal(loop, dim1=-2, dim2=-1).sum(-1).real
                val = lattice_sum(tr, grid, 1)  # exact: the same on every process grid
                out[(r, tt)] = out.get((r, tt), 0) + val
    norm = n * grid.volume * t
    return {k: v / norm for k, v in out.items()}
