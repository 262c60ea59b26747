"""Gauge-field checks in numpy for file I/O: plaquette, link trace, unitarity, 2-row links.

Convention (the one ILDG/NERSC headers and the reference files use): links ``U`` of shape
``(Nd, L_0, ..., L_{Nd-1}, N, N)`` with lattice axis ``mu`` = array dim ``1 + mu`` and
axis ``Nd - 1`` the time direction.

* plaquette ``P = < Re Tr(U_mu(x) U_nu(x+mu) U_mu(x+nu)^+ U_nu(x)^+) > / N``, averaged over
  sites and the ``Nd (Nd-1)/2`` planes ``mu < nu`` (unit gauge: 1); "spatial" averages the
  planes without the time axis, "temporal" the planes containing it;
* link trace ``< Re Tr U > / N`` over sites and directions;
* unitarity deviation ``max |U U^+ - 1|`` (element-wise).

With a :class:`parallel.ProcessGrid` the arrays are the rank's local domain and neighbours
come from the distributed shift; without one the array is the whole periodic lattice.
Independent of ``kernels`` on purpose: file readers must not depend on the theory code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallel import ProcessGrid, global_max, global_sum, shift


@dataclass(frozen=True)
class Plaquette:
    """Average plaquette over all planes, the spatial planes and the temporal planes."""

    total: float
    spatial: float
    temporal: float


def _forward(u: np.ndarray, mu: int, grid: ProcessGrid | None) -> np.ndarray:
    """``u(x + mu)`` for a field ``(*lattice, N, N)`` (lattice axes first)."""
    if grid is None:
        return np.roll(u, -1, axis=mu)
    return shift(u, grid, mu, 1, first=0)


def _sum(x: float, grid: ProcessGrid | None) -> float:
    return float(x) if grid is None else float(global_sum(np.array(x), grid))


def plaquette(links: np.ndarray, grid: ProcessGrid | None = None) -> Plaquette:
    """Average plaquette (total, spatial, temporal) of a gauge configuration."""
    u = np.asarray(links)
    nd, n = u.shape[0], u.shape[-1]
    sites = int(np.prod(u.shape[1 : 1 + nd])) if grid is None else grid.volume
    sums: dict[tuple[int, int], float] = {}
    for mu in range(nd):
        for nu in range(mu + 1, nd):
            with np.errstate(all="ignore"):  # garbage in -> nan/inf out, silently
                left = u[mu] @ _forward(u[nu], mu, grid)
                right = u[nu] @ _forward(u[mu], nu, grid)
                # Re Tr(A B^+) = Re sum_ij A_ij conj(B_ij)
                local = np.vdot(right, left).real
            sums[(mu, nu)] = _sum(local, grid) / (n * sites)
    t = nd - 1
    spatial = [v for (mu, nu), v in sums.items() if nu != t]
    temporal = [v for (mu, nu), v in sums.items() if nu == t]
    return Plaquette(
        total=float(np.mean(list(sums.values()))),
        spatial=float(np.mean(spatial)) if spatial else float("nan"),
        temporal=float(np.mean(temporal)),
    )


def link_trace(links: np.ndarray, grid: ProcessGrid | None = None) -> float:
    """``< Re Tr U > / N`` over all sites and directions."""
    u = np.asarray(links)
    nd, n = u.shape[0], u.shape[-1]
    sites = int(np.prod(u.shape[1 : 1 + nd])) if grid is None else grid.volume
    with np.errstate(all="ignore"):
        local = np.trace(u, axis1=-2, axis2=-1).real.sum()
    return _sum(local, grid) / (n * nd * sites)


def unitarity_deviation(links: np.ndarray, grid: ProcessGrid | None = None) -> float:
    """``max |U U^+ - 1|`` over all links (``inf`` if any entry is not finite)."""
    u = np.asarray(links)
    n = u.shape[-1]
    if not np.all(np.isfinite(u)):
        local = np.inf
    else:
        with np.errstate(all="ignore"):
            dev = u @ np.conj(np.swapaxes(u, -1, -2)) - np.eye(n)
            local = float(np.max(np.abs(dev))) if dev.size else 0.0
        if not np.isfinite(local):
            local = np.inf
    if grid is None:
        return float(local)
    return float(global_max(np.array(local), grid))


def reconstruct_third_row(two_rows: np.ndarray) -> np.ndarray:
    """SU(3) matrices from their first two rows: ``row3 = conj(row1 x row2)``.

    ``two_rows`` has shape ``(..., 2, 3)``; the result ``(..., 3, 3)``.
    """
    a, b = two_rows[..., 0, :], two_rows[..., 1, :]
    c = np.conj(np.cross(a, b))
    return np.concatenate([two_rows, c[..., None, :]], axis=-2)
