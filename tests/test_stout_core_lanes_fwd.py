"""The stout core's forward in SIMD lanes (kernels/flows/su3_stout_core_lanes_fwd.py).

Against the eager torch core (new link, log-det) and the scalar numba kernel (eigenvalues,
saved ``K_r = N_r^{-1}``) for small and large coefficients, ``rho = 0`` (degenerate spectrum:
every lane on the LAPACK fallback), site counts that leave the last block part-filled, one
and two chains; the lane Gauss-Jordan without row exchanges and its pivoting fallback against
numpy's inverse and determinant on matrices that need row exchanges.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from kernels.flows import su3_fused_kernels as scalar  # noqa: E402
from kernels.flows import su3_stout_core_lanes_fwd as lanes  # noqa: E402
from kernels.flows.su3_fused import eager_core  # noqa: E402
from kernels.groups.su_n import project_ta  # noqa: E402
from tests.stout_inputs import core_inputs as _inputs  # noqa: E402
from tests.stout_inputs import reals as _reals  # noqa: E402

W = lanes.W


def _lanes_forward(planes, rho, x, want_k=True):
    """The lane kernel's outputs, its saved lane blocks converted to per-site tensors (``w (B,
    n, 3)``, ``V (B, n, 3, 3)``, ``K_r (B, n, 9, 9)``; ``K_r`` NaN (untouched) without
    ``want_k``)."""
    b, n = x.shape[:2]
    nblk = -(-n // W)
    new = torch.empty_like(x)
    ld = torch.empty(b, n, dtype=torch.float64)
    w = np.full((b, nblk, 3 * W), np.nan)
    v = np.full((b, nblk, 18 * W), np.nan)
    kinv = np.full((b, nblk, 81 * W) if want_k else (1, 1, 81), np.nan)
    lanes.kernels().core_forward(
        _reals(planes), rho.numpy(), _reals(x), _reals(new), ld.numpy(), w, v, kinv, want_k,
        lanes.nchunks(b * nblk),
    )  # fmt: skip
    assert not np.isnan(w).any() and not np.isnan(v).any()  # every lane of every block
    w = torch.from_numpy(lanes.sites_from_blocks(w, n).copy())
    v = lanes.sites_from_blocks(v, n).reshape(b, n, 3, 3, 2)
    v = torch.view_as_complex(torch.from_numpy(np.ascontiguousarray(v)))
    if want_k:
        kinv = torch.from_numpy(lanes.sites_from_blocks(kinv, n).reshape(b, n, 9, 9).copy())
    else:
        kinv = torch.from_numpy(kinv)
    return new, ld, w, v, kinv


def test_block_layout_round_trip():
    a = np.arange(2 * 21 * 5, dtype=float).reshape(2, 21, 5)
    blk = lanes.blocks_from_sites(a)
    assert blk.shape == (2, 2, 5 * W)
    assert blk[1, 0, 3 * W + 7] == a[1, 7, 3]  # component-major, lane-minor
    assert blk[0, 1, 2 * W + 15] == a[0, 20, 2]  # unused lanes repeat the last site
    assert np.array_equal(lanes.sites_from_blocks(blk, 21), a)


def _scalar_forward(planes, rho, x):
    b, n = x.shape[:2]
    new = torch.empty_like(x)
    ld = torch.empty(b, n, dtype=torch.float64)
    w = torch.empty(b, n, 3, dtype=torch.float64)
    v = torch.empty_like(x)
    kinv = torch.empty(b, n, 9, 9, dtype=torch.float64)
    scalar.core_forward(
        planes.numpy(), rho.numpy(), x.numpy(), new.numpy(), ld.numpy(), w.numpy(), v.numpy(),
        kinv.numpy(), True,
    )  # fmt: skip
    return new, ld, w, v, kinv


@pytest.mark.parametrize(("scale", "b", "n"), [(0.02, 2, 40), (0.08, 1, 33), (0.3, 2, 16)])
def test_lane_forward_equals_eager_and_scalar(scale, b, n):
    planes, rho, x = _inputs(scale, b, n)
    new, ld, w, v, kinv = _lanes_forward(planes, rho, x)
    new0, ld0 = eager_core(planes, rho, x)
    assert (new - new0).abs().max() < 1e-13
    assert float(ld0.abs().max()) > 1e-2  # a real log-det
    assert (ld - ld0).abs().max() < 1e-13 * max(1.0, float(ld0.abs().max()))
    _, _, w1, v1, kinv1 = _scalar_forward(planes, rho, x)
    assert (w - w1).abs().max() < 1e-13
    assert (kinv - kinv1).abs().max() < 1e-12 * float(kinv1.abs().max())
    # the saved eigensystem reproduces i TA(Omega) = V diag(w) V^+
    r = rho.to(x.dtype)
    c = sum(r[:, i, :, None, None] * planes[:, i] for i in range(3))
    h = 1j * project_ta(c @ x.mH)
    assert (v @ torch.diag_embed(w.to(v.dtype)) @ v.mH - h).abs().max() < 1e-13
    assert (v.mH @ v - torch.eye(3, dtype=v.dtype)).abs().max() < 1e-14


def test_degenerate_spectrum_and_tiny_coefficients_take_the_fallback():
    """``rho = 0``: ``Q = 0``, three equal eigenvalues (LAPACK in every such lane); ``rho =
    1e-9``: a nearly degenerate spectrum, mixed with ordinary lanes."""
    planes, rho, x = _inputs(0.1, 2, 37, seed=3)
    rho[:, :, 1::5] = 1e-9
    rho[:, :, ::3] = 0.0
    new, ld, w, v, kinv = _lanes_forward(planes, rho, x)
    new0, ld0 = eager_core(planes, rho, x)
    assert (new - new0).abs().max() < 1e-13
    assert (ld - ld0).abs().max() < 1e-13
    assert torch.all(w[:, ::3] == 0.0) and torch.all(ld[:, ::3] == 0.0)
    assert torch.isfinite(kinv).all()
    assert (v.mH @ v - torch.eye(3, dtype=v.dtype)).abs().max() < 1e-14


def test_without_k_only_the_link_and_log_det():
    planes, rho, x = _inputs(0.08, 1, 20, seed=4)
    new, ld, _, _, kinv = _lanes_forward(planes, rho, x, want_k=False)
    new0, ld0 = eager_core(planes, rho, x)
    assert (new - new0).abs().max() < 1e-13 and (ld - ld0).abs().max() < 1e-13
    assert torch.isnan(kinv).all()  # not written


def test_lane_gauss_jordan_and_its_pivoting_fallback_equal_numpy():
    """The nine generated steps plus the fallback, called as the kernel calls them, on lanes
    holding near-identity matrices (no row exchange), matrices with a zero or small leading
    pivot (exchange needed: the fallback) and general random ones."""
    k = lanes.kernels()
    rng = np.random.default_rng(7)
    mats = np.empty((W, 9, 9))
    for lane in range(W):
        kind = lane % 4
        if kind == 0:
            mats[lane] = np.eye(9) + 0.3 * rng.standard_normal((9, 9)) / 3
        elif kind == 1:  # zero pivot in the first column
            mats[lane] = rng.standard_normal((9, 9))
            mats[lane, 0, 0] = 0.0
        elif kind == 2:  # a permutation of a well-conditioned matrix
            mats[lane] = (np.eye(9) + 0.1 * rng.standard_normal((9, 9)))[rng.permutation(9)]
        else:
            mats[lane] = rng.standard_normal((9, 9))
    kk = np.full(lanes.NKK * W, np.nan)
    kk[lanes.KK_NR * W : (lanes.KK_NR + 81) * W] = mats.reshape(W, 81).T.ravel()
    kk[lanes.KK_GS * W : (lanes.KK_GS + 1) * W] = 1.0
    kk[(lanes.KK_GS + 1) * W : (lanes.KK_GS + 2) * W] = 0.0
    for col in range(9):
        getattr(k, f"gj{col}")(kk)
    flags = kk[(lanes.KK_GS + 1) * W : (lanes.KK_GS + 2) * W].copy()
    assert flags[1::4].all() and flags[2::4].all()  # these need row exchanges
    assert not flags[0::4].any()  # near the identity: none
    k.gj_fallback(kk, np.empty((9, 9)), np.empty(9, np.int64))
    inv = kk[lanes.KK_A * W : (lanes.KK_A + 81) * W].reshape(81, W).T.reshape(W, 9, 9)
    logdet = kk[(lanes.KK_GS + 2) * W : (lanes.KK_GS + 3) * W]
    for lane in range(W):
        ref = np.linalg.inv(mats[lane])
        assert np.abs(inv[lane] - ref).max() < 1e-12 * np.abs(ref).max()
        assert abs(logdet[lane] - np.linalg.slogdet(mats[lane])[1]) < 1e-12
