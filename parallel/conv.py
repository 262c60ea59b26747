"""Circularly padded (periodic) lattice convolutions that run distributed.

``LatticeConv`` computes, for a field ``x`` of shape ``(B, C_in, *local_shape)``,

    y[b, o, n] = bias[o] + sum_{i, d} w[o, i, d] * x[b, i, n + d - r],   d in [0, k)^D, r = k // 2

with periodic (or antiperiodic) wrap-around on the *global* lattice: the local block is padded
by a halo of width ``r`` (:func:`parallel.halo.halo_pad`) and then convolved without padding.
On one rank this equals ``torch.nn.ConvNd(..., padding=r, padding_mode="circular")``. For
D = 1, 2, 3 the torch convolution kernels are used; for other D (4D lattices) a generic
shift-and-contract implementation. In 2D on the CPU in float64, layers of at most
``CONV_JIT_MAX_MACS`` multiply-adds per site (and no autograd graph to build) run a compiled
direct loop instead (:mod:`parallel.conv_jit`, numba; ``TRIVHMC_CONV_JIT=0`` off): torch's
float64 ``conv2d`` is ``im2col`` and one GEMM per chain, 3-9x slower for the small layers of
the 2D flows; the weight gradient too for at most two output channels, and ``at_sites`` in
any dimension. Gradients flow through the halo exchange's adjoint.
``LatticeConv.at_sites(x, index)`` evaluates the same formula at selected local sites only
(e.g. the active sites of a masked coupling layer), after the same halo exchange.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from .grid import ProcessGrid
from .halo import halo_pad
from .optional_jit import optional_jit

_CONV = {
    1: torch.nn.functional.conv1d,
    2: torch.nn.functional.conv2d,
    3: torch.nn.functional.conv3d,
}


class LatticeConv(nn.Module):
    """A ``k^D`` convolution with periodic padding on a distributed lattice."""

    def __init__(
        self,
        grid: ProcessGrid,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        bc: str | list | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.grid = grid
        self.kernel_size = kernel_size
        self.bc = bc
        nd = grid.ndim
        shape = (out_channels, in_channels) + (kernel_size,) * nd
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_channels, dtype=dtype, device=device)) if bias else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``torch.nn.ConvNd`` (Kaiming-uniform, a = sqrt(5))."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution with circular boundaries through the halo exchange."""
        if not self.kernel_size // 2:
            return _valid_conv(x, self.weight, self.bias, self.grid)
        return _LatticeConvFn.apply(x, self.weight, self.bias, self, None)

    def at_sites(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` at the local sites with flat (C-order) indices ``index`` only:
        shape ``(B, C_out, n)``. Same halo exchange, same formula; the contraction runs on
        the ``n`` sites' ``k^D`` neighbourhoods (gathered from the padded field), so a layer
        that needs its output on a few sites does not pay for the whole lattice."""
        return _LatticeConvFn.apply(x, self.weight, self.bias, self, index)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        r = self.kernel_size // 2
        return halo_pad(x, self.grid, r, first=2, bc=self.bc) if r else x

    def _sites(self, xp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The ``k^D`` windows of the sites ``index`` from the padded ``xp``: ``(B, C, n, k^D)``."""
        gather = self._neighbourhoods(index, tuple(xp.shape[2:]))
        return xp.reshape(xp.shape[0], xp.shape[1], -1)[:, :, gather]

    def _at_sites_padded(self, xp, index, weight, bias) -> torch.Tensor:
        """The contraction over (input channel, tap) as products and a fixed pairwise sum,
        not a matrix product: a BLAS kernel's summation order can depend on the number of
        sites (which differs between process grids), this order does not. On the CPU in
        float64 without a graph, a compiled loop with a fixed left-to-right sum per site
        instead (:func:`parallel.conv_jit.conv_at_sites`; grid-independent as well)."""
        jit = _conv_jit_for(xp, weight, bias, any_dim=True)
        if jit is not None:
            taps = self._window_table(index, tuple(xp.shape[2:]))[2]
            out = torch.empty((xp.shape[0], weight.shape[0], taps.shape[1]), dtype=torch.float64)
            jit.conv_at_sites(
                _host(xp.reshape(xp.shape[0], xp.shape[1], -1)),
                taps.numpy(),
                _host(weight.reshape(weight.shape[0], weight.shape[1], -1)),
                _host_bias(bias),
                out.numpy(),
            )
            return out
        p = self._sites(xp, index)  # (B, C_in, n, k^D)
        b, c, n, k = p.shape
        p = p.permute(0, 2, 1, 3).reshape(b, 1, n, c * k)
        terms = p * weight.reshape(1, weight.shape[0], 1, c * k)  # (B, C_out, n, C_in k^D)
        y = _pairwise_sum_last(terms)
        return y if bias is None else y + bias.view(1, -1, 1)

    def _neighbourhoods(self, index: torch.Tensor, padded: tuple[int, ...]) -> torch.Tensor:
        """Flat indices into the padded block of each site's ``k^D`` window, ``(n, k^D)``,
        the window offsets in the weight's C order (cached: :meth:`_window_table`)."""
        return self._window_table(index, padded)[1]

    def _window_table(self, index: torch.Tensor, padded: tuple[int, ...]) -> tuple:
        """``(index, windows (n, k^D), the same tap-major and contiguous (k^D, n))`` for
        :meth:`_neighbourhoods` and the compiled ``at_sites`` loop. Cached for one index
        tensor: the cache holds a reference to it (so its address cannot be reused while
        cached) and keys on its version counter (in-place changes)."""
        key = (index.data_ptr(), index.numel(), index._version, index.device, padded)
        cache = self.__dict__.setdefault("_window_cache", {})
        if key not in cache:
            local = self.grid.local_shape
            coords = torch.stack(torch.unravel_index(index.cpu(), local), dim=1)  # (n, D)
            k = self.kernel_size
            offsets = torch.tensor(list(itertools.product(range(k), repeat=len(local))))
            pos = coords[:, None, :] + offsets[None, :, :]  # padded coordinates (n, k^D, D)
            strides = torch.tensor([math.prod(padded[m + 1 :]) for m in range(len(padded))])
            windows = (pos * strides).sum(-1).to(index.device)
            cache.clear()
            cache[key] = (index, windows, windows.t().contiguous())
        return cache[key]

    def extra_repr(self) -> str:
        """Layer settings for ``repr``."""
        o, i = self.weight.shape[:2]
        return f"{i}, {o}, kernel_size={self.kernel_size}, ndim={self.grid.ndim}"


class _LatticeConvFn(torch.autograd.Function):
    """``LatticeConv`` (all sites, or the sites ``index``) with a grid-independent input
    gradient.

    Autograd's own backward of "halo pad, then valid convolution" would add the taps of a
    site's gradient that land in a neighbour's halo separately (through the halo adjoint),
    so the rounding of the gradient at the edges of the local block would depend on the
    process grid. Here the input gradient is computed like the forward: the output gradient
    ``gy`` (scattered onto the lattice for ``at_sites``) is halo-padded and convolved with the
    transposed, flipped kernel, ``dx[i, n] = sum_{o, e} w[o, i, 2r - e] gy[o, n + e - r]``:
    every site sums the same terms in the same order on every grid (bit-identical pulled-back
    forces in trivialized HMC). The weight and bias gradients are per-rank partial sums (they
    are all-reduced for training). The backward is built from differentiable operations, so
    double backward works."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv, index):  # type: ignore[override]
        ctx.conv, ctx.index = conv, index
        ctx.save_for_backward(x, weight, bias)
        xp = conv._pad(x)
        if index is None:
            return _valid_conv(xp, weight, bias, conv.grid)
        return conv._at_sites_padded(xp, index, weight, bias)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        conv, index = ctx.conv, ctx.index
        nd = conv.grid.ndim
        gx = gw = gb = None
        if index is not None:  # the output gradient on the whole local lattice
            full = gy.new_zeros(gy.shape[:2] + tuple(conv.grid.local_shape))
            gy = full.reshape(gy.shape[0], gy.shape[1], -1).index_copy(2, index, gy)
            gy = gy.reshape(full.shape)
        if ctx.needs_input_grad[0]:
            wt = weight.transpose(0, 1).flip(dims=tuple(range(2, 2 + nd)))
            gx = _valid_conv(conv._pad(gy), wt, None, conv.grid)
        if ctx.needs_input_grad[1]:
            xp = conv._pad(x)
            wfn = _CONV_WEIGHT.get(nd)
            gw = _jit_conv2d_weight(xp, weight, gy) if nd == 2 else None
            if gw is None and wfn is not None:
                gw = wfn(xp, weight.shape, gy)
            elif gw is None:
                k = weight.shape[2]
                out = conv.grid.local_shape
                gw = torch.stack(
                    [
                        torch.einsum("bo...,bi...->oi", gy, _window(xp, d, out))
                        for d in itertools.product(range(k), repeat=nd)
                    ],
                    dim=-1,
                ).reshape(weight.shape)
        if bias is not None and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, *range(2, gy.ndim)))
        return gx, gw, gb, None, None


_CONV_WEIGHT = {
    1: torch.nn.grad.conv1d_weight,
    2: torch.nn.grad.conv2d_weight,
    3: torch.nn.grad.conv3d_weight,
}


def _pairwise_sum_last(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim by halving (zero-padded to a power of two): element-wise adds in
    an order fixed by the length alone."""
    m = t.shape[-1]
    width = 1 << max(m - 1, 0).bit_length()
    if width > m:  # the first halving of the zero-padded row, without building the padding
        h = width // 2
        t = torch.cat([t[..., : m - h] + t[..., h:m], t[..., m - h : h]], dim=-1)
    while t.shape[-1] > 1:
        h = t.shape[-1] // 2
        t = t[..., :h] + t[..., h:]
    return t[..., 0]


#: largest ``C_in C_out k^D`` (multiply-adds per site) for the compiled convolution loops;
#: wider layers keep torch's (its GEMM gains on reuse that a site loop does not have)
CONV_JIT_MAX_MACS = 1024
_CONV_JIT: list = []


def _conv_jit():
    """:mod:`parallel.conv_jit` when numba is installed and ``TRIVHMC_CONV_JIT`` is not ``0``."""
    if not _CONV_JIT:
        _CONV_JIT.append(optional_jit("conv_jit", "TRIVHMC_CONV_JIT"))
    return _CONV_JIT[0]


def _conv_jit_for(
    xp: torch.Tensor, weight: torch.Tensor, other: torch.Tensor | None, any_dim: bool = False
):
    """:mod:`parallel.conv_jit` if it applies to a 2D layer (any dimension with ``any_dim``)
    with these tensors (CPU float64, no graph to build, at most ``CONV_JIT_MAX_MACS``
    multiply-adds per site), else None."""
    ts = (xp, weight) if other is None else (xp, weight, other)
    if (xp.ndim != 4 and not any_dim) or any(
        t.device.type != "cpu" or t.dtype != torch.float64 for t in ts
    ):
        return None
    if torch.compiler.is_compiling():  # dynamo cannot trace a numba call: torch's convolution
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return None
    co, ci, k = weight.shape[0], weight.shape[1], weight.shape[2]
    if ci * co * math.prod(weight.shape[2:]) > CONV_JIT_MAX_MACS or weight.ndim != xp.ndim:
        return None
    if any(n != k for n in weight.shape[2:]):
        return None
    return _conv_jit()


def _host(t: torch.Tensor):
    """A C-contiguous float64 numpy view (or copy) of a CPU tensor, without its graph."""
    return t.detach().contiguous().numpy()


def _host_bias(bias: torch.Tensor | None):
    """:func:`_host` of ``bias``; an empty array for none (the compiled loops' convention)."""
    return _host(torch.empty(0, dtype=torch.float64) if bias is None else bias)


def _jit_conv2d(
    xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """:func:`parallel.conv_jit.valid_conv2d` where it applies (2D, CPU float64, no graph to
    build, a small layer), else None."""
    jit = _conv_jit_for(xp, weight, bias)
    if jit is None:
        return None
    co, k = weight.shape[0], weight.shape[2]
    h, w = xp.shape[2] - k + 1, xp.shape[3] - k + 1
    out = torch.empty((xp.shape[0], co, h, w), dtype=torch.float64)
    jit.valid_conv2d(_host(xp), _host(weight), _host_bias(bias), out.numpy())
    return out


def _jit_conv2d_weight(
    xp: torch.Tensor, weight: torch.Tensor, gy: torch.Tensor
) -> torch.Tensor | None:
    """The weight gradient by :func:`parallel.conv_jit.weight_grad2d` where the compiled
    convolution applies (:func:`_jit_conv2d`) and the layer has at most two output channels,
    else None. (Its dot products per tap win over ``conv2d_weight`` by 1.6-4.6x for one or two
    output channels and lose by up to 2x for eight with few chains: docs/performance.md,
    "Session 16".)"""
    jit = None if weight.shape[0] > 2 else _conv_jit_for(xp, weight, gy)
    if jit is None:
        return None
    gw = torch.empty(weight.shape, dtype=torch.float64)
    jit.weight_grad2d(_host(xp), _host(gy), gw.numpy())
    return gw


def _valid_conv(
    xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: ProcessGrid
) -> torch.Tensor:
    """Valid cross-correlation of a padded field (the local block ``grid.local_shape`` out):
    in 2D on the CPU in float64 the compiled direct loop (:mod:`parallel.conv_jit`) for small
    layers, else the torch convolution."""
    out = _jit_conv2d(xp, weight, bias)  # None unless 2D (and the rest: _conv_jit_for)
    if out is not None:
        return out
    conv = _CONV.get(grid.ndim)
    if conv is not None:
        return conv(xp, weight, bias)
    return _generic_valid_conv(xp, weight, bias, grid.local_shape)


def _window(xp: torch.Tensor, d: tuple[int, ...], out: tuple[int, ...]) -> torch.Tensor:
    return xp[
        (slice(None), slice(None)) + tuple(slice(d[m], d[m] + out[m]) for m in range(len(out)))
    ]


def _generic_valid_conv(
    xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_shape: tuple[int, ...]
) -> torch.Tensor:
    """Valid cross-correlation of a padded field in any number of lattice dims."""
    k = weight.shape[2]
    nd = len(out_shape)
    y = None
    for d in itertools.product(range(k), repeat=nd):
        window = xp[
            (slice(None), slice(None)) + tuple(slice(d[m], d[m] + out_shape[m]) for m in range(nd))
        ]
        term = torch.einsum("oi,bi...->bo...", weight[(slice(None), slice(None)) + d], window)
        y = term if y is None else y + term
    if bias is not None:
        y = y + bias.view((1, -1) + (1,) * nd)
    return y
