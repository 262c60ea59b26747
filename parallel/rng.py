"""Counter-based random numbers keyed by global lattice site (Philox4x32-10).

Every random number is a pure function of ``(seed, purpose, counter, global site, chain,
value index)``, so a field drawn on any process grid equals the matching slice of the same
draw on one rank, bit for bit, and the RNG state of a run is just its seed plus the counters
its caller owns (e.g. the trajectory number).

Generator
---------
Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11; Random123): 10 rounds of
``(c0, c1, c2, c3) -> (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))`` with
``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57`` and the key bumped by ``(0x9E3779B9, 0xBB67AE85)``
between rounds. :func:`philox4x32` reproduces the Random123 known-answer vectors.

Key and counter layout (a file-format-like contract; changing it changes every ensemble)
----------------------------------------------------------------------------------------
* key    ``k0 = seed & 0xffffffff``, ``k1 = (seed >> 32) & 0xffffffff`` (seed < 2^64)
* word 0 ``site & 0xffffffff``                      (site = C-order global site index < 2^48)
* word 1 ``((site >> 32) & 0xffff) << 16 | block``  (block < 2^16)
* word 2 ``chain << 16 | purpose``                  (chain, purpose < 2^16)
* word 3 ``counter``                                (counter < 2^32)

``chain = chain_offset + b`` for batch entry ``b``. The values drawn at one site are ordered
C-order over ``(*lead, *trail)`` (for :meth:`SiteRNG.su_algebra` over ``(*lead, a)``,
``a = 1 .. n^2 - 1``); value ``v`` comes from block ``v // 2``, slot ``v % 2``.

One block gives 4 words ``(w0, w1, w2, w3)`` and two uniforms
``u_j = (k_j + 1/2) 2^-52`` with ``k_0 = (w0 >> 6) << 26 | (w1 >> 6)``,
``k_1 = (w2 >> 6) << 26 | (w3 >> 6)`` (52-bit integers). This is the finest grid of points
symmetric in (0, 1) that float64 holds exactly, so ``0 < u < 1`` always (a 53-bit grid
``(k + 1/2) 2^-53`` would round its top point to 1.0). Normals come from Box-Muller on the
same pair: ``z_0 = r cos(2 pi u_1)``, ``z_1 = r sin(2 pi u_1)``, ``r = sqrt(-2 log u_0)``.

Per-chain draws (:meth:`SiteRNG.chain_uniform`, e.g. Metropolis accept/reject) use the
reserved site index ``2^48 - 1``, which no lattice site can have (volumes must be smaller),
block 0, slot 0. They are identical on every rank.

Device streams
--------------
When a draw is requested on a device that is not the CPU, the same Philox words are computed
there with torch integer ops (:func:`philox4x32_torch`: uint32 values held in int64, the
32x32 -> 64-bit products split into 16-bit halves so nothing overflows), so only the
site indices go to the device and only the field comes back. Words and uniforms are
bit-identical to the host stream (integer ops and exactly representable float64 steps);
normals (``log``, ``cos``, ``sin``) are bit-identical where the device's math library rounds
like the host's, and within an ulp or two otherwise, still independent of the process grid on
a given device. :attr:`SiteRNG.device_philox` chooses the path (``"auto"``: device stream
off the CPU; ``"always"``/``"never"``).

All host arithmetic is element-wise numpy (uint64 products, float64 ``log``/``cos``/``sin``), so a
value does not depend on where its site sits in the local array, provided the math library
returns the same result for an element wherever it sits (true for libm and numpy's masked
SIMD loops; the MPI tests check it bitwise on the machine they run on).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import torch

from .grid import ProcessGrid
from .optional_jit import optional_jit

__all__ = [
    "CHAIN_SITE",
    "PURPOSE_ACCEPT",
    "PURPOSE_MOMENTUM",
    "PURPOSE_PROPOSAL",
    "PURPOSE_START",
    "PURPOSE_USER",
    "SiteRNG",
    "gell_mann",
    "philox4x32",
    "philox4x32_torch",
    "su_generators",
]

#: purposes (16 bits): which kind of draw a stream feeds
PURPOSE_MOMENTUM = 1
PURPOSE_ACCEPT = 2
PURPOSE_START = 3
PURPOSE_PROPOSAL = 4
#: first purpose free for users (PURPOSE_USER + k)
PURPOSE_USER = 16

#: reserved global site index of per-chain draws (outside any lattice)
CHAIN_SITE = (1 << 48) - 1

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_GENERATOR = "philox4x32-10"
_LAYOUT_VERSION = 1


# --------------------------------------------------------------------------- Philox
def _philox_words(
    c: Sequence[np.ndarray | int], k0: np.ndarray | int, k1: np.ndarray | int, rounds: int = 10
) -> tuple[np.ndarray, ...]:
    """Philox4x32 on four broadcastable word arrays (values < 2^32) and a key.

    The key words may be ints or arrays broadcastable with the counter words. Returns four
    uint32 arrays of the broadcast shape. Products are formed in uint64 (exact 32x32 -> 64).
    """
    words = np.broadcast_arrays(*(np.asarray(w) for w in c), np.asarray(k0), np.asarray(k1))
    c0, c1, c2, c3 = (w.astype(np.uint32) for w in words[:4])
    k0 = np.asarray(k0, dtype=np.uint64)
    k1 = np.asarray(k1, dtype=np.uint64)
    s32 = np.uint64(32)
    for r in range(rounds):
        if r:
            k0 = (k0 + np.uint64(_W0)) & _MASK32
            k1 = (k1 + np.uint64(_W1)) & _MASK32
        p0 = c0.astype(np.uint64)
        p0 *= _M0
        p1 = c2.astype(np.uint64)
        p1 *= _M1
        n0 = (p1 >> s32).astype(np.uint32)
        n0 ^= c1
        n0 ^= k0.astype(np.uint32)
        n2 = (p0 >> s32).astype(np.uint32)
        n2 ^= c3
        n2 ^= k1.astype(np.uint32)
        c0, c1, c2, c3 = n0, p1.astype(np.uint32), n2, p0.astype(np.uint32)
    return c0, c1, c2, c3


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32-``rounds`` of ``counter[..., 4]`` under ``key[..., 2]`` (uint32, broadcast).

    Returns the uint32 array ``out[..., 4]``. With ``rounds=10`` this is Random123's
    ``philox4x32``; e.g. counter 0, key 0 gives ``6627e8d5 e169c58d bc57ac4c 9b00dbd8``.
    """
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError(
            f"philox4x32 needs counter[..., 4] and key[..., 2], got {counter.shape}, {key.shape}"
        )
    for name, a in (("counter", counter), ("key", key)):
        if a.dtype != np.uint32 and (np.any(a < 0) or np.any(a > 0xFFFFFFFF)):
            raise ValueError(f"philox4x32 {name} words must be 32-bit unsigned integers")
    c = [counter[..., i].astype(np.uint64) for i in range(4)]
    out = _philox_words(c, key[..., 0].astype(np.uint64), key[..., 1].astype(np.uint64), rounds)
    return np.stack(out, axis=-1)


_LO16 = 0xFFFF
_LO32 = 0xFFFFFFFF


def _mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` 32-bit words of the 64-bit product ``a * m`` (``a`` uint32 values in int64,
    ``m`` a 32-bit constant), from 16-bit halves: every partial product fits in int64."""
    ah, al = a >> 16, a & _LO16
    mh, ml = m >> 16, m & _LO16
    mid = ah * ml + al * mh  # < 2^33
    t = al * ml + ((mid & _LO16) << 16)  # < 2^33
    hi = ah * mh + (mid >> 16) + (t >> 32)
    return hi & _LO32, t & _LO32


def philox4x32_torch(
    c: Sequence[torch.Tensor], k0: int, k1: int, rounds: int = 10
) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` on four broadcastable int64 tensors holding uint32 values, key
    ``(k0, k1)``; the words of :func:`philox4x32`, on the tensors' device."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*c)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _LO32
            k1 = (k1 + _W1) & _LO32
        hi0, lo0 = _mulhilo32(c0, int(_M0))
        hi1, lo1 = _mulhilo32(c2, int(_M1))
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _uniform_pair_torch(w: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_uniform_pair` in torch (exact: 52-bit integers, float64)."""
    k0 = ((w[0] >> 6) << 26) | (w[1] >> 6)
    k1 = ((w[2] >> 6) << 26) | (w[3] >> 6)
    scale = 2.0**-52
    return (k0.to(torch.float64) + 0.5) * scale, (k1.to(torch.float64) + 0.5) * scale


def _box_muller_torch(u0: torch.Tensor, u1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_box_muller` in torch."""
    r = torch.sqrt(-2.0 * torch.log(u0))
    theta = (2.0 * np.pi) * u1
    return r * torch.cos(theta), r * torch.sin(theta)


#: smallest draw (blocks) for the compiled path; below it the numpy reference is as fast
_JIT_MIN = 4096
_JIT: list = []


def _philox_jit():
    """The compiled block kernel (:mod:`parallel.philox_jit`) when numba is installed and
    ``TRIVHMC_RNG_JIT`` is not ``0``; else None (the numpy reference: the same numbers)."""
    if not _JIT:
        mod = optional_jit("philox_jit", "TRIVHMC_RNG_JIT")
        _JIT.append(mod.philox_blocks if mod is not None else None)
    return _JIT[0]


def _su_assemble_jit():
    """The compiled su(n) assembly (:func:`parallel.philox_jit.su_assemble`) where the
    compiled Philox kernel is in use (:func:`_philox_jit`), else None."""
    if _philox_jit() is None:
        return None
    return optional_jit("philox_jit", "TRIVHMC_RNG_JIT").su_assemble


@cache
def _generator_entries(n: int) -> tuple[np.ndarray, ...]:
    """The non-zero entries ``(a, j, k, Re t, Im t)`` of the su(n) generators, generator by
    generator and row-major within one (the order of ``su_algebra``'s numpy passes)."""
    gens = su_generators(n)
    rows = [
        (a, j, k, gens[a, j, k].real, gens[a, j, k].imag)
        for a in range(n * n - 1)
        for j, k in zip(*np.nonzero(gens[a]))
    ]
    a, j, k, tr, ti = (np.array(c) for c in zip(*rows))
    return a.astype(np.int64), j.astype(np.int64), k.astype(np.int64), tr, ti


def _uniform_pair(w: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 uniforms in (0, 1) from one Philox block (52 bits each)."""
    s6, s26 = np.uint64(6), np.uint64(26)
    w = [np.asarray(x, dtype=np.uint64) for x in w]
    k0 = ((w[0] >> s6) << s26) | (w[1] >> s6)
    k1 = ((w[2] >> s6) << s26) | (w[3] >> s6)
    scale = 2.0**-52
    return (k0.astype(np.float64) + 0.5) * scale, (k1.astype(np.float64) + 0.5) * scale


def _box_muller(u0: np.ndarray, u1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals from two uniforms in (0, 1)."""
    r = np.sqrt(-2.0 * np.log(u0))
    theta = (2.0 * np.pi) * u1
    return r * np.cos(theta), r * np.sin(theta)


# --------------------------------------------------------------------------- su(N) basis
@cache
def _gell_mann(n: int) -> np.ndarray:
    mats = []
    for k in range(1, n):
        for j in range(k):
            s = np.zeros((n, n), dtype=np.complex128)
            s[j, k] = s[k, j] = 1.0
            a = np.zeros((n, n), dtype=np.complex128)
            a[j, k], a[k, j] = -1j, 1j
            mats += [s, a]
        d = np.zeros((n, n), dtype=np.complex128)
        d[np.arange(k), np.arange(k)] = 1.0
        d[k, k] = -k
        mats.append(d * np.sqrt(2.0 / (k * (k + 1))))
    out = np.stack(mats) if mats else np.zeros((0, n, n), dtype=np.complex128)
    out.setflags(write=False)
    return out


def gell_mann(n: int) -> np.ndarray:
    """The ``n^2 - 1`` generalised Gell-Mann matrices, complex array ``(n^2 - 1, n, n)``.

    Hermitian, traceless, ``Tr(lambda_a lambda_b) = 2 delta_ab``. Ordered so that ``n = 2``
    gives the Pauli matrices and ``n = 3`` the standard ``lambda_1 .. lambda_8``: for
    ``k = 1 .. n-1``, the symmetric and antisymmetric pairs ``(j, k)``, ``j < k`` (symmetric:
    1 at ``(j,k)`` and ``(k,j)``; antisymmetric: ``-i`` at ``(j,k)``, ``i`` at ``(k,j)``), then
    the diagonal ``sqrt(2/(k(k+1))) diag(1, .., 1, -k, 0, ..)`` with ``k`` ones.
    """
    if int(n) < 1:
        raise ValueError(f"gell_mann needs n >= 1, got {n}")
    return _gell_mann(int(n)).copy()


def su_generators(n: int) -> np.ndarray:
    """Anti-Hermitian generators ``T_a = i lambda_a / 2`` of su(n), ``Tr T_a T_b = -delta_ab/2``."""
    return 0.5j * gell_mann(n)


# --------------------------------------------------------------------------- SiteRNG
def _check_width(name: str, value: int, bits: int) -> int:
    value = int(value)
    if value < 0 or value >= 1 << bits:
        raise ValueError(f"RNG {name} = {value} does not fit in {bits} unsigned bits")
    return value


def _as_shape(dims: Sequence[int] | int) -> tuple[int, ...]:
    dims = (dims,) if isinstance(dims, int | np.integer) else tuple(dims)
    if any(int(d) < 0 for d in dims):
        raise ValueError(f"negative extent in {dims}")
    return tuple(int(d) for d in dims)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)


class SiteRNG:
    """Counter-based RNG: draws keyed by ``(seed, purpose, counter, global site, chain)``.

    The object holds only the seed; counters (trajectory/step numbers) are owned by the
    caller and passed with every draw. A draw for the local domain of ``grid`` equals the
    matching slice of the same draw made with :func:`parallel.single_rank_grid`, bitwise.
    """

    #: where Philox runs: "auto" (on the draw's device when it is not the CPU), "always"
    #: (torch on the draw's device, also the CPU), "never" (numpy on the host)
    device_philox: str = "auto"

    def __init__(self, seed: int) -> None:
        self.seed = _check_width("seed", seed, 64)
        self._key = (self.seed & 0xFFFFFFFF, (self.seed >> 32) & 0xFFFFFFFF)

    def __repr__(self) -> str:
        return f"SiteRNG(seed={self.seed})"

    # ------------------------------------------------------------ checkpoint state
    def state(self) -> dict[str, Any]:
        """The whole generator state (the seed), for checkpoints and file attributes."""
        return {"generator": _GENERATOR, "layout": _LAYOUT_VERSION, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SiteRNG:
        """Rebuild from :meth:`state`; refuses another generator or key/counter layout."""
        if state.get("generator", _GENERATOR) != _GENERATOR:
            raise ValueError(f"RNG state is for {state.get('generator')!r}, not {_GENERATOR}")
        if int(state.get("layout", _LAYOUT_VERSION)) != _LAYOUT_VERSION:
            raise ValueError(
                f"RNG state has key/counter layout {state.get('layout')}, "
                f"this code implements layout {_LAYOUT_VERSION}"
            )
        return cls(int(state["seed"]))

    # ------------------------------------------------------------ core
    def _blocks(
        self,
        sites: np.ndarray,
        purpose: int,
        counter: int,
        batch: int,
        nblocks: int,
        chain_offset: int,
        device: torch.device | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
        """Uniform pairs of shape ``(batch, *sites.shape, nblocks)`` for blocks 0..nblocks-1:
        numpy on the host, or torch tensors computed on ``device`` when one is given."""
        purpose = _check_width("purpose", purpose, 16)
        counter = _check_width("counter", counter, 32)
        batch = int(batch)
        if batch < 0:
            raise ValueError(f"RNG batch must be >= 0, got {batch}")
        chain_offset = _check_width("chain_offset", chain_offset, 16)
        if batch:
            _check_width("chain (chain_offset + batch - 1)", chain_offset + batch - 1, 16)
        if nblocks:
            _check_width("block (values per site // 2)", nblocks - 1, 16)
        if device is not None:
            return self._blocks_torch(sites, purpose, counter, batch, nblocks, chain_offset, device)
        jit = _philox_jit() if batch * np.size(sites) * nblocks >= _JIT_MIN else None
        if jit is not None:
            flat = np.ascontiguousarray(np.asarray(sites, dtype=np.uint64).reshape(-1))
            u0 = np.empty((batch, flat.size, nblocks))
            u1 = np.empty_like(u0)
            jit(flat, chain_offset, purpose, counter, *self._key, u0, u1)
            shape = (batch,) + np.shape(sites) + (nblocks,)
            return u0.reshape(shape), u1.reshape(shape)
        site = np.asarray(sites, dtype=np.uint64)[None, ..., None]
        chain = np.arange(chain_offset, chain_offset + batch, dtype=np.uint64)
        chain = chain.reshape((batch,) + (1,) * (site.ndim - 1))
        block = np.arange(nblocks, dtype=np.uint64)
        w0 = site & _MASK32
        w1 = (((site >> np.uint64(32)) & np.uint64(0xFFFF)) << np.uint64(16)) | block
        w2 = (chain << np.uint64(16)) | np.uint64(purpose)
        w3 = np.uint64(counter)
        shape = (batch,) + site.shape[1:-1] + (nblocks,)
        words = (np.broadcast_to(w0, shape), w1, w2, w3)
        return _uniform_pair(_philox_words(words, *self._key))

    def _blocks_torch(
        self,
        sites: np.ndarray,
        purpose: int,
        counter: int,
        batch: int,
        nblocks: int,
        chain_offset: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_blocks` computed on ``device`` (same words, same layout)."""
        site = torch.as_tensor(np.asarray(sites, dtype=np.int64), device=device)[None, ..., None]
        chain = torch.arange(chain_offset, chain_offset + batch, device=device, dtype=torch.int64)
        chain = chain.reshape((batch,) + (1,) * (site.ndim - 1))
        block = torch.arange(nblocks, device=device, dtype=torch.int64)
        w0 = site & _LO32
        w1 = (((site >> 32) & _LO16) << 16) | block
        w2 = (chain << 16) | purpose
        w3 = torch.full((), counter, device=device, dtype=torch.int64)
        shape = (batch,) + tuple(site.shape[1:-1]) + (nblocks,)
        words = (w0.expand(shape), w1, w2, w3)
        return _uniform_pair_torch(philox4x32_torch(words, *self._key))

    def _device(self, device: torch.device | str) -> torch.device | None:
        """The device to run Philox on for a draw requested on ``device`` (None: host)."""
        mode = self.device_philox
        if mode not in ("auto", "always", "never"):
            raise ValueError(f"device_philox must be 'auto', 'always' or 'never', got {mode!r}")
        dev = torch.device(device)
        if mode == "never" or (mode == "auto" and dev.type == "cpu"):
            return None
        return dev

    def _site_values(
        self,
        grid: ProcessGrid,
        purpose: int,
        counter: int,
        batch: int,
        nvals: int,
        chain_offset: int,
        normal: bool,
        device: torch.device | None = None,
    ) -> np.ndarray | torch.Tensor:
        """float64 ``(batch, *local_shape, nvals)`` uniforms or normals (torch on ``device``)."""
        if grid.volume >= CHAIN_SITE:
            raise ValueError(
                f"lattice volume {grid.volume} does not fit the 48-bit site index of the RNG"
            )
        nblocks = (nvals + 1) // 2
        u0, u1 = self._blocks(
            grid.global_index, purpose, counter, batch, nblocks, chain_offset, device
        )
        if device is not None:
            a, b = _box_muller_torch(u0, u1) if normal else (u0, u1)
            out = torch.stack((a, b), dim=-1).reshape(a.shape[:-1] + (2 * nblocks,))
            return out[..., :nvals]
        a, b = _box_muller(u0, u1) if normal else (u0, u1)
        out = np.stack((a, b), axis=-1).reshape(a.shape[:-1] + (2 * nblocks,))
        return out[..., :nvals]

    def _draw(
        self,
        grid: ProcessGrid,
        purpose: int,
        counter: int,
        batch: int,
        lead: Sequence[int] | int,
        trail: Sequence[int] | int,
        chain_offset: int,
        normal: bool,
        device: torch.device | None = None,
    ) -> np.ndarray | torch.Tensor:
        lead, trail = _as_shape(lead), _as_shape(trail)
        nvals = int(np.prod(lead + trail, dtype=np.int64))
        vals = self._site_values(grid, purpose, counter, batch, nvals, chain_offset, normal, device)
        nd, nl = grid.ndim, len(lead)
        vals = vals.reshape((batch,) + grid.local_shape + lead + trail)
        # (batch, *local, *lead, *trail) -> (batch, *lead, *local, *trail)
        perm = (
            (0,)
            + tuple(range(1 + nd, 1 + nd + nl))
            + tuple(range(1, 1 + nd))
            + tuple(range(1 + nd + nl, vals.ndim))
        )
        if device is not None:
            return vals.permute(perm).contiguous()
        return np.ascontiguousarray(vals.transpose(perm))

    # ------------------------------------------------------------ public draws
    def uniform(
        self,
        grid: ProcessGrid,
        purpose: int,
        counter: int,
        batch: int,
        lead: Sequence[int] = (),
        trail: Sequence[int] = (),
        chain_offset: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Uniforms in (0, 1), tensor ``(batch, *lead, *grid.local_shape, *trail)``.

        Computed in float64; a lower precision ``dtype`` is rounded and then clamped below
        1 so the open interval holds in that dtype too.
        """
        dev = self._device(device)
        vals = self._draw(grid, purpose, counter, batch, lead, trail, chain_offset, False, dev)
        out = _as_tensor(vals).to(device=device, dtype=dtype)
        if dtype != torch.float64:
            below_one = torch.nextafter(
                torch.ones((), dtype=dtype, device=out.device),
                torch.zeros((), dtype=dtype, device=out.device),
            )
            out = torch.minimum(out, below_one)
        return out

    def normal(
        self,
        grid: ProcessGrid,
        purpose: int,
        counter: int,
        batch: int,
        lead: Sequence[int] = (),
        trail: Sequence[int] = (),
        chain_offset: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Standard normals (Box-Muller), tensor ``(batch, *lead, *grid.local_shape, *trail)``.

        Also the Gaussian U(1) momentum: ``pi ~ exp(-pi^2 / 2)`` per link.
        """
        dev = self._device(device)
        vals = self._draw(grid, purpose, counter, batch, lead, trail, chain_offset, True, dev)
        return _as_tensor(vals).to(device=device, dtype=dtype)

    def su_algebra(
        self,
        grid: ProcessGrid,
        purpose: int,
        counter: int,
        batch: int,
        n: int,
        lead: Sequence[int] = (),
        chain_offset: int = 0,
        dtype: torch.dtype = torch.complex128,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Gaussian su(n) matrices ``P = sum_a p_a T_a`` with ``T_a = i lambda_a / 2``.

        Returns the traceless anti-Hermitian tensor ``(batch, *lead, *local_shape, n, n)``.
        With ``Tr T_a T_b = -delta_ab / 2``, ``K = -Tr P^2 = (1/2) sum_a p_a^2``, so
        ``P ~ exp(-K)``, the SU(n) HMC momentum. The ``p_a`` are the normals of
        :meth:`normal` with ``trail=(n^2 - 1,)``. ``P`` is assembled entry by entry with
        element-wise operations in a fixed order (no BLAS), so it is bitwise grid-independent.
        """
        n = int(n)
        if n < 2:
            raise ValueError(f"su_algebra needs n >= 2, got {n} (for U(1) use normal())")
        ngen = n * n - 1
        lead = _as_shape(lead)
        dev = self._device(device)
        p = self._draw(grid, purpose, counter, batch, lead, (ngen,), chain_offset, True, dev)
        gens = su_generators(n)
        if dev is not None:
            re = torch.zeros(p.shape[:-1] + (n, n), dtype=torch.float64, device=dev)
            im = torch.zeros_like(re)
        else:  # real and imaginary parts as views of one complex array (no interleaving copy)
            z = np.zeros(p.shape[:-1] + (n, n), dtype=np.complex128)
            re, im = z.real, z.imag
            jit = _su_assemble_jit() if z.size >= _JIT_MIN else None
            if jit is not None:  # one compiled pass, the same additions in the same order
                ent = _generator_entries(n)
                pf = np.ascontiguousarray(p).reshape(-1, ngen)
                jit(pf, *ent, z.view(np.float64).reshape(-1, n, n, 2))
                return torch.from_numpy(z).to(device=device, dtype=dtype)
        for a in range(ngen):
            pa = p[..., a]
            for j, k in zip(*np.nonzero(gens[a])):
                t = gens[a, j, k]
                if t.real:
                    re[..., j, k] += pa * t.real
                if t.imag:
                    im[..., j, k] += pa * t.imag
        out = torch.complex(re, im) if dev is not None else torch.from_numpy(z)
        return out.to(device=device, dtype=dtype)

    def chain_uniform(
        self, purpose: int, counter: int, batch: int, chain_offset: int = 0
    ) -> torch.Tensor:
        """One float64 uniform in (0, 1) per chain, tensor ``(batch,)``; the same on all ranks.

        Keyed by the reserved site :data:`CHAIN_SITE`, so it never repeats a site draw.
        """
        u0, _ = self._blocks(np.array(CHAIN_SITE), purpose, counter, batch, 1, chain_offset)
        return torch.from_numpy(np.ascontiguousarray(u0.reshape(int(batch))))
