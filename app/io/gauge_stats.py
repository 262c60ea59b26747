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

from parallel import ProcessGrid, exact_sum, global_max, shift


@dataclass(frozen=True)
class Plaquette:
    """Average plaquette over all planes, the spatial planes and the temporal planes."""

    total: float
    spatial: float
    temporal: float


def _forward(u: np.ndarray, mu: int, grid: ProcessGrid | None) -> np.ndarray:
    """``u(x + mu)`` for a field ``(N, N, *lattice)`` (lattice axes last)."""
    if grid is None:
        return np.roll(u, -1, axis=2 + mu)
    return shift(u, grid, mu, 1, first=2)


def _sum(values: np.ndarray, grid: ProcessGrid | None) -> float:
    return exact_sum(values, None if grid is None else grid.cart)


def _matmul(ar: np.ndarray, ai: np.ndarray, br: np.ndarray, bi: np.ndarray):
    """``A B`` for matrix fields stored as real/imaginary parts ``(N, N, *lattice)``.

    ``C_ik = sum_j A_ij B_jk`` with the sum over ``j`` in order and every product and sum a
    separate, correctly rounded ufunc call over contiguous site arrays, so a site's result
    does not depend on how the lattice is split (unlike BLAS/SIMD complex matmul kernels).
    """
    n = ar.shape[0]
    cr = np.empty_like(ar)
    ci = np.empty_like(ai)
    for i in range(n):
        for k in range(n):
            re = ar[i, 0] * br[0, k] - ai[i, 0] * bi[0, k]
            im = ar[i, 0] * bi[0, k] + ai[i, 0] * br[0, k]
            for j in range(1, n):
                re += ar[i, j] * br[j, k] - ai[i, j] * bi[j, k]
                im += ar[i, j] * bi[j, k] + ai[i, j] * br[j, k]
            cr[i, k] = re
            ci[i, k] = im
    return cr, ci


def _retrace(ar: np.ndarray, ai: np.ndarray, br: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """Per-site ``Re Tr(A B^+) = sum_ij (Re A_ij Re B_ij + Im A_ij Im B_ij)``, fixed order."""
    n = ar.shape[0]
    acc = ar[0, 0] * br[0, 0] + ai[0, 0] * bi[0, 0]
    for i in range(n):
        for j in range(n):
            if i or j:
                acc += ar[i, j] * br[i, j] + ai[i, j] * bi[i, j]
    return acc


def plaquette(links: np.ndarray, grid: ProcessGrid | None = None) -> Plaquette:
    """Average plaquette (total, spatial, temporal) of a gauge configuration.

    Correctly rounded and identical for every process grid (per-site values in a fixed
    operation order, then :func:`exact_sum`).
    """
    u = np.asarray(links)
    nd, n = u.shape[0], u.shape[-1]
    sites = int(np.prod(u.shape[1 : 1 + nd])) if grid is None else grid.volume
    # structure of arrays: (Nd, N, N, *lattice), every matrix entry a contiguous site array
    re = np.ascontiguousarray(np.moveaxis(u.real, (-2, -1), (1, 2)))
    im = np.ascontiguousarray(np.moveaxis(u.imag, (-2, -1), (1, 2)))
    sums: dict[tuple[int, int], float] = {}
    with np.errstate(all="ignore"):  # garbage in -> nan/inf out, silently
        for mu in range(nd):
            for nu in range(mu + 1, nd):
                # U_mu(x) U_nu(x+mu) and U_nu(x) U_mu(x+nu)
                left = _matmul(
                    re[mu], im[mu], _forward(re[nu], mu, grid), _forward(im[nu], mu, grid)
                )
                right = _matmul(
                    re[nu], im[nu], _forward(re[mu], nu, grid), _forward(im[mu], nu, grid)
                )
                sums[(mu, nu)] = _sum(_retrace(*left, *right), grid) / (n * sites)
    t = nd - 1
    spatial = [v for (mu, nu), v in sums.items() if nu != t]
    temporal = [v for (mu, nu), v in sums.items() if nu == t]
    return Plaquette(
        total=float(np.mean(list(sums.values()))),
        spatial=float(np.mean(spatial)) if spatial else float("nan"),
        temporal=float(np.mean(temporal)),
    )


def link_trace(links: np.ndarray, grid: ProcessGrid | None = None) -> float:
    """``< Re Tr U > / N`` over all sites and directions (correctly rounded, grid-independent)."""
    u = np.asarray(links)
    nd, n = u.shape[0], u.shape[-1]
    sites = int(np.prod(u.shape[1 : 1 + nd])) if grid is None else grid.volume
    diag = np.diagonal(u, axis1=-2, axis2=-1).real
    return _sum(diag, grid) / (n * nd * sites)


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
    return float(global_max(np.array([local], dtype=np.float64), grid)[0])


def reconstruct_third_row(two_rows: np.ndarray) -> np.ndarray:
    """SU(3) matrices from their first two rows: ``row3 = conj(row1 x row2)``.

    ``two_rows`` has shape ``(..., 2, 3)``; the result ``(..., 3, 3)``.
    """
    a, b = two_rows[..., 0, :], two_rows[..., 1, :]
    c = np.conj(np.cross(a, b))
    return np.concatenate([two_rows, c[..., None, :]], axis=-2)
