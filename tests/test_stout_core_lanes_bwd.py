"""The stout core's analytic backward in SIMD lanes (kernels/flows/su3_stout_core_lanes_bwd.py).

Against the scalar numba kernel (:func:`kernels.flows.su3_fused_kernels.core_backward`) on the
same saved forward, and against torch autograd of the eager core, to 1e-12 of each output's
largest entry: small and large coefficients (both branches of the divided differences, in one
block), ``rho = 0`` (``Q = 0``: every divided difference on its series branch) and ``1e-9``,
site counts that leave the last block part-filled, one and two chains, one to five planes
(the straight-line staple sums and the generic loops); every output entry written (NaN-filled
before), the same with any number of work chunks and with the parallel compilation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from kernels.flows import su3_fused_kernels as scalar  # noqa: E402
from kernels.flows import su3_stout_core_lanes_bwd as lanes  # noqa: E402
from kernels.flows.su3_fused import eager_core  # noqa: E402
from tests.stout_inputs import core_inputs as _inputs  # noqa: E402
from tests.stout_inputs import reals as _reals  # noqa: E402

W = lanes.W


def _cotangents(x: torch.Tensor, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    gnew = torch.randn(x.shape, dtype=torch.complex128, generator=gen)
    gld = torch.randn(x.shape[:2], dtype=torch.float64, generator=gen)
    return gnew, gld


def _saved(planes, rho, x):
    """What the scalar forward saves for the backward: ``w``, ``V``, ``K_r``."""
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
    return w, v, kinv


def _lanes_backward(planes, rho, x, saved, gnew, gld, nch=None, kernel=None):
    b, nnu, n = rho.shape
    w, v, kinv = saved
    gs = torch.full((b, nnu, n, 3, 3), complex("nan"), dtype=torch.complex128)
    grho = torch.full_like(rho, np.nan)
    gx = torch.full_like(x, complex("nan"))
    nch = lanes.nchunks(b * -(-n // W)) if nch is None else nch
    kernel = lanes.kernels().core_backward if kernel is None else kernel
    from kernels.flows.su3_stout_core_lanes_fwd import blocks_from_sites

    # the lane forward saves whole lane blocks: the scalar forward's per-site values so laid out
    wb, vb = blocks_from_sites(w.numpy()), blocks_from_sites(_reals(v))
    kb = blocks_from_sites(kinv.numpy().reshape(b, n, 81))
    kernel(
        _reals(planes), rho.numpy(), _reals(x), wb, vb, kb,
        _reals(gnew), gld.numpy(), _reals(gs), grho.numpy(), _reals(gx), nch,
    )  # fmt: skip
    return gs, grho, gx


def _scalar_backward(planes, rho, x, saved, gnew, gld):
    b, nnu, n = rho.shape
    w, v, kinv = saved
    gs = torch.empty(b, nnu, n, 3, 3, dtype=torch.complex128)
    grho = torch.empty_like(rho)
    gx = torch.empty_like(x)
    scalar.core_backward(
        planes.numpy(), rho.numpy(), x.numpy(), w.numpy(), v.numpy(), kinv.numpy(),
        gnew.numpy(), gld.numpy(), gs.numpy(), grho.numpy(), gx.numpy(),
    )  # fmt: skip
    return gs, grho, gx


def _assert_close(got, ref, tol=1e-12):
    """Each output within ``tol`` of the reference's largest entry (every entry written)."""
    for a, r in zip(got, ref, strict=True):
        assert torch.isfinite(a).all()
        assert float((a - r).abs().max()) <= tol * float(r.abs().max())


def _sites(t: torch.Tensor, sl: slice) -> torch.Tensor:
    """Sites ``sl`` of an output (complex matrices ``(..., n, 3, 3)`` or reals ``(..., n)``)."""
    return t[..., sl, :, :] if t.is_complex() else t[..., sl]


def _branches(w: torch.Tensor) -> tuple[int, int]:
    """Eigenvalue differences on the divided differences' direct (``>= 0.2``) and series
    branches."""
    th = (w[..., :, None] - w[..., None, :]).abs().flatten()
    return int((th >= 0.2).sum()), int(((th > 0) & (th < 0.2)).sum())


@pytest.mark.parametrize(
    ("scale", "b", "n", "nnu"),
    [(0.02, 2, 40, 3), (0.08, 1, 33, 3), (0.3, 2, 16, 3), (0.08, 2, 21, 1), (0.08, 1, 19, 5)],
)
def test_lane_backward_equals_scalar(scale, b, n, nnu):
    planes, rho, x = _inputs(scale, b, n, nnu)
    saved = _saved(planes, rho, x)
    gnew, gld = _cotangents(x)
    ref = _scalar_backward(planes, rho, x, saved, gnew, gld)
    for r in ref:
        assert float(r.abs().max()) > 1e-3  # non-trivial reference
    _assert_close(_lanes_backward(planes, rho, x, saved, gnew, gld), ref)
    if scale >= 0.08:  # both branches of the divided differences
        direct, series = _branches(saved[0])
        assert direct > 0 and series > 0


def test_lane_backward_zero_and_tiny_coefficients():
    """``rho = 0`` (``Q = 0``, three equal eigenvalues), ``1e-9`` and ``0.08`` mixed within
    each block; then all zero."""
    planes, rho, x = _inputs(0.08, 2, 37)
    rho[:, :, ::3] = 0.0
    rho[:, :, 1::3] = 1e-9
    gnew, gld = _cotangents(x)
    saved = _saved(planes, rho, x)
    assert (saved[0][:, ::3] == 0).all()
    ref = _scalar_backward(planes, rho, x, saved, gnew, gld)
    got = _lanes_backward(planes, rho, x, saved, gnew, gld)
    _assert_close(got, ref)
    for sl in (slice(0, None, 3), slice(1, None, 3)):  # rho = 0 (gs = 0), 1e-9: own scale
        _assert_close([_sites(a, sl) for a in got], [_sites(r, sl) for r in ref])
    rho.zero_()
    saved = _saved(planes, rho, x)
    ref = _scalar_backward(planes, rho, x, saved, gnew, gld)
    assert float(ref[0].abs().max()) == 0.0 and float(ref[1].abs().max()) > 1e-3
    _assert_close(_lanes_backward(planes, rho, x, saved, gnew, gld), ref)  # gs = 0 exactly


@pytest.mark.parametrize(("scale", "b", "n"), [(0.02, 1, 24), (0.08, 2, 40), (0.3, 2, 17)])
@pytest.mark.parametrize("which", ["both", "link", "logdet"])
def test_lane_backward_equals_eager_autograd(scale, b, n, which):
    planes, rho, x = _inputs(scale, b, n, seed=2)
    gnew, gld = _cotangents(x, seed=3)
    gnew = torch.zeros_like(gnew) if which == "logdet" else gnew
    gld = torch.zeros_like(gld) if which == "link" else gld
    ins = [t.clone().requires_grad_(True) for t in (planes, rho, x)]
    new, ld = eager_core(*ins)
    gs0, grho0, gx0 = torch.autograd.grad((new, ld), ins, (gnew, gld))
    got = _lanes_backward(planes, rho, x, _saved(planes, rho, x), gnew, gld)
    for ref in (gs0, grho0, gx0):
        assert float(ref.abs().max()) > 1e-3
    _assert_close(got, (gs0, grho0, gx0))


def test_chunks_and_parallel_compilation_give_the_same_result():
    """Any number of work chunks (more than the (chain, block) pairs included), and the
    parallel compilation (numba threads > 1) against the serial twin: bit for bit."""
    planes, rho, x = _inputs(0.08, 2, 50)
    saved = _saved(planes, rho, x)
    gnew, gld = _cotangents(x)
    k = lanes.kernels().core_backward
    ref = _lanes_backward(planes, rho, x, saved, gnew, gld, nch=1, kernel=k.serial)
    for nch in (2, 3, 8, 11):
        got = _lanes_backward(planes, rho, x, saved, gnew, gld, nch=nch, kernel=k.serial)
        assert all(torch.equal(a, r) for a, r in zip(got, ref, strict=True))
    got = _lanes_backward(planes, rho, x, saved, gnew, gld, nch=3, kernel=k.parallel)
    assert all(torch.equal(a, r) for a, r in zip(got, ref, strict=True))
