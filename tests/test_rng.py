"""Serial tests of parallel.rng: Philox known answers, the key/counter contract, statistics."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import stats

from parallel import single_rank_grid
from parallel.rng import (
    CHAIN_SITE,
    PURPOSE_ACCEPT,
    PURPOSE_MOMENTUM,
    PURPOSE_START,
    SiteRNG,
    _uniform_pair,
    gell_mann,
    philox4x32,
    su_generators,
)

# Random123 kat_vectors, philox4x32 with 10 rounds: counter[4] key[2] -> out[4]
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF,) * 4,
        (0xFFFFFFFF,) * 2,
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def test_philox_known_answers() -> None:
    for ctr, key, out in KAT:
        got = philox4x32(np.array(ctr, dtype=np.uint32), np.array(key, dtype=np.uint32))
        assert got.dtype == np.uint32
        assert tuple(int(w) for w in got) == out
    # vectorised: all three at once, and broadcasting one key over several counters
    ctrs = np.array([k[0] for k in KAT], dtype=np.uint32)
    keys = np.array([k[1] for k in KAT], dtype=np.uint32)
    outs = np.array([k[2] for k in KAT], dtype=np.uint32)
    assert np.array_equal(philox4x32(ctrs, keys), outs)
    both = philox4x32(np.stack([ctrs[2], ctrs[2]]), keys[2])
    assert np.array_equal(both, np.stack([outs[2], outs[2]]))


def test_philox_rejects_bad_words() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        philox4x32(np.array([0, 0, 0, 1 << 32]), np.array([0, 0]))
    with pytest.raises(ValueError, match="counter"):
        philox4x32(np.zeros(3, dtype=np.uint32), np.zeros(2, dtype=np.uint32))


def _contract_uniforms(seed: int, site: int, block: int, chain: int, purpose: int, counter: int):
    """The two uniforms of one block, computed from the documented layout by hand."""
    ctr = np.array(
        [
            site & 0xFFFFFFFF,
            ((site >> 32) & 0xFFFF) << 16 | block,
            chain << 16 | purpose,
            counter,
        ],
        dtype=np.uint32,
    )
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    w = [int(x) for x in philox4x32(ctr, key)]
    k0 = (w[0] >> 6) << 26 | (w[1] >> 6)
    k1 = (w[2] >> 6) << 26 | (w[3] >> 6)
    return (k0 + 0.5) / 2**52, (k1 + 0.5) / 2**52


def test_key_counter_layout_contract() -> None:
    seed = 0x0123456789ABCDEF
    rng = SiteRNG(seed)
    shape = (5, 7)
    grid = single_rank_grid(shape)
    lead, trail = (2,), (3,)  # 6 values per site -> blocks 0..2
    purpose, counter, chain_offset = 9, 123456, 40
    u = rng.uniform(grid, purpose, counter, 2, lead, trail, chain_offset=chain_offset)
    z = rng.normal(grid, purpose, counter, 2, lead, trail, chain_offset=chain_offset)
    assert u.shape == z.shape == (2, 2, 5, 7, 3)
    for b, x, y, ld, t in [(0, 0, 0, 0, 0), (1, 4, 6, 1, 2), (0, 2, 3, 1, 1), (1, 3, 0, 0, 2)]:
        site = x * shape[1] + y
        v = ld * 3 + t
        u0, u1 = _contract_uniforms(seed, site, v // 2, chain_offset + b, purpose, counter)
        assert u[b, ld, x, y, t].item() == (u0, u1)[v % 2]
        r = np.sqrt(-2.0 * np.log(u0))
        zz = (r * np.cos(2.0 * np.pi * u1), r * np.sin(2.0 * np.pi * u1))[v % 2]
        assert z[b, ld, x, y, t].item() == pytest.approx(zz, rel=1e-15, abs=1e-15)
    # chain draws use the reserved site, block 0, slot 0
    cu = rng.chain_uniform(PURPOSE_ACCEPT, 77, 3, chain_offset=5)
    assert cu.dtype == torch.float64 and cu.shape == (3,)
    for b in range(3):
        assert cu[b].item() == _contract_uniforms(seed, CHAIN_SITE, 0, 5 + b, PURPOSE_ACCEPT, 77)[0]


def test_compiled_blocks_equal_the_numpy_reference(monkeypatch) -> None:
    """The compiled block kernel and su(n) assembly (parallel/philox_jit.py, used for large
    draws when numba is installed) give bitwise the numpy reference's uniforms, normals and
    su(3) momenta, on
    sites with high words (up to the reserved chain site), chain offsets and many blocks;
    entries of a large draw also follow the key/counter contract directly."""
    from parallel import rng as rng_mod

    if rng_mod._philox_jit() is None:
        pytest.skip("numba not installed: only the numpy path exists")
    seed = 0xFEDCBA9876543210
    rng = SiteRNG(seed)
    sites = np.array([0, 1, 77, (1 << 32) + 5, (1 << 47) + 12345, CHAIN_SITE] * 700, np.uint64)
    grid = single_rank_grid((8, 4, 4, 8))
    draws = {}
    for path in ("jit", "numpy"):
        if path == "numpy":
            monkeypatch.setattr(rng_mod, "_JIT", [None])
        assert (rng_mod._philox_jit() is None) == (path == "numpy")
        assert (rng_mod._su_assemble_jit() is None) == (path == "numpy")
        blocks = rng._blocks(sites, 11, 0xFFFFFFFF, 3, 7, 65000)
        one = rng._blocks(sites, 12, 5, 3, 1, 9)  # one block per site: its own loop
        mom = rng.su_algebra(grid, 1, 99, 2, 3, lead=(4,), chain_offset=17)
        z = rng.normal(grid, 5, 3, 2, (4,), (3,), chain_offset=2)
        draws[path] = (*blocks, mom, z, *one)
    for a, b in zip(draws["jit"], draws["numpy"]):
        a, b = (torch.as_tensor(t) for t in (a, b))
        assert a.shape == b.shape and torch.equal(a, b)
    u0 = draws["jit"][0]
    for c, s, blk in [(0, 0, 0), (2, 4, 6), (1, 5, 3), (2, 3000, 1)]:
        ref = _contract_uniforms(seed, int(sites[s]), blk, 65000 + c, 11, 0xFFFFFFFF)
        assert u0[c, s, blk] == ref[0] and draws["jit"][1][c, s, blk] == ref[1]
    one0, one1 = draws["jit"][-2:]
    for c, s in [(0, 0), (2, 4), (1, 4199)]:
        ref = _contract_uniforms(seed, int(sites[s]), 0, 9 + c, 12, 5)
        assert (one0[c, s, 0], one1[c, s, 0]) == ref


def test_value_order_over_lead_and_trail() -> None:
    rng = SiteRNG(11)
    grid = single_rank_grid((4, 3))
    flat = rng.normal(grid, 5, 2, 3, trail=(24,))  # (B, 4, 3, 24)
    split = rng.normal(grid, 5, 2, 3, lead=(2, 3), trail=(4,))  # (B, 2, 3, 4, 3, 4)
    ref = flat.reshape(3, 4, 3, 2, 3, 4).permute(0, 3, 4, 1, 2, 5)
    assert torch.equal(split, ref)
    # an odd number of values uses the first slot of the last block
    odd = rng.normal(grid, 5, 2, 3, trail=(5,))
    assert torch.equal(odd, flat[..., :5])


def test_uniform_open_interval_extremes() -> None:
    zero = tuple(np.zeros(1, dtype=np.uint64) for _ in range(4))
    ones = tuple(np.full(1, 0xFFFFFFFF, dtype=np.uint64) for _ in range(4))
    lo, _ = _uniform_pair(zero)
    hi, _ = _uniform_pair(ones)
    assert lo[0] == 2.0**-53 and hi[0] == 1.0 - 2.0**-53 and 0.0 < lo[0] < hi[0] < 1.0
    # float32 output rounds 1 - 2^-53 up to 1.0 unless clamped
    u = SiteRNG(3).uniform(single_rank_grid((16, 16)), 1, 0, 64, dtype=torch.float32)
    assert u.dtype == torch.float32 and float(u.max()) < 1.0 and float(u.min()) > 0.0


def test_uniform_and_normal_statistics() -> None:
    rng = SiteRNG(2024)
    grid = single_rank_grid((10, 10))
    n = 100_000
    u = rng.uniform(grid, PURPOSE_START, 0, 250, trail=(4,)).flatten().numpy()
    z = rng.normal(grid, PURPOSE_MOMENTUM, 0, 250, trail=(4,)).flatten().numpy()
    assert u.size == z.size == n
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24.0 / n)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # neighbouring values, neighbouring sites and neighbouring chains are uncorrelated
    zz = rng.normal(grid, PURPOSE_MOMENTUM, 0, 250, trail=(4,)).numpy()
    pairs = [
        (zz[..., 0], zz[..., 1]),  # same block
        (zz[..., 1], zz[..., 2]),  # adjacent blocks
        (zz[:, :-1], zz[:, 1:]),  # adjacent sites along axis 0
        (zz[:-1], zz[1:]),  # adjacent chains
    ]
    for a, b in pairs:
        a, b = a.ravel(), b.ravel()
        assert abs(np.mean(a * b)) < 5 / np.sqrt(a.size)


def test_streams_differ() -> None:
    grid = single_rank_grid((8, 8))
    base = SiteRNG(1).normal(grid, PURPOSE_MOMENTUM, 3, 4)
    assert torch.equal(base, SiteRNG(1).normal(grid, PURPOSE_MOMENTUM, 3, 4))
    others = [
        SiteRNG(2).normal(grid, PURPOSE_MOMENTUM, 3, 4),
        SiteRNG(1 << 32 | 1).normal(grid, PURPOSE_MOMENTUM, 3, 4),  # high key word
        SiteRNG(1).normal(grid, PURPOSE_START, 3, 4),
        SiteRNG(1).normal(grid, PURPOSE_MOMENTUM, 4, 4),
        SiteRNG(1).normal(grid, PURPOSE_MOMENTUM, 3, 4, chain_offset=4),
    ]
    for o in others:
        assert not torch.any(o == base)
        assert abs(float((o * base).mean())) < 5 / np.sqrt(base.numel())
    # chains are independent streams: chain_offset shifts the batch
    wide = SiteRNG(1).normal(grid, PURPOSE_MOMENTUM, 3, 8)
    assert torch.equal(wide[4:], others[-1]) and torch.equal(wide[:4], base)
    # the per-chain stream is not any site's stream
    cu = SiteRNG(1).chain_uniform(PURPOSE_MOMENTUM, 3, 4)
    assert not torch.any(cu[:, None, None] == SiteRNG(1).uniform(grid, PURPOSE_MOMENTUM, 3, 4))


def test_bit_width_errors() -> None:
    grid = single_rank_grid((2, 2))
    for seed in (-1, 1 << 64):
        with pytest.raises(ValueError, match="seed"):
            SiteRNG(seed)
    rng = SiteRNG((1 << 64) - 1)
    rng.uniform(grid, (1 << 16) - 1, (1 << 32) - 1, 1, chain_offset=(1 << 16) - 1)
    with pytest.raises(ValueError, match="purpose"):
        rng.uniform(grid, 1 << 16, 0, 1)
    with pytest.raises(ValueError, match="counter"):
        rng.normal(grid, 1, 1 << 32, 1)
    with pytest.raises(ValueError, match="counter"):
        rng.normal(grid, 1, -1, 1)
    with pytest.raises(ValueError, match="chain"):
        rng.normal(grid, 1, 0, 2, chain_offset=(1 << 16) - 1)
    with pytest.raises(ValueError, match="chain"):
        rng.chain_uniform(1, 0, (1 << 16) + 1)
    with pytest.raises(ValueError, match="block"):
        rng.normal(grid, 1, 0, 1, trail=(2**17 + 1,))
    with pytest.raises(ValueError, match="48-bit"):
        rng.uniform(single_rank_grid((1 << 24, 1 << 24)), 1, 0, 1)


def test_state_round_trip() -> None:
    rng = SiteRNG(987654321)
    st = rng.state()
    assert st["seed"] == 987654321 and st["generator"] == "philox4x32-10"
    grid = single_rank_grid((4, 4))
    again = SiteRNG.from_state(st)
    assert torch.equal(again.normal(grid, 1, 5, 2), rng.normal(grid, 1, 5, 2))
    with pytest.raises(ValueError, match="mt19937"):
        SiteRNG.from_state({**st, "generator": "mt19937"})
    with pytest.raises(ValueError, match="layout"):
        SiteRNG.from_state({**st, "layout": 99})


def test_gell_mann_matrices() -> None:
    s = np.sqrt(3.0)
    ref3 = np.array(
        [
            [[0, 1, 0], [1, 0, 0], [0, 0, 0]],
            [[0, -1j, 0], [1j, 0, 0], [0, 0, 0]],
            [[1, 0, 0], [0, -1, 0], [0, 0, 0]],
            [[0, 0, 1], [0, 0, 0], [1, 0, 0]],
            [[0, 0, -1j], [0, 0, 0], [1j, 0, 0]],
            [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
            [[0, 0, 0], [0, 0, -1j], [0, 1j, 0]],
            [[1 / s, 0, 0], [0, 1 / s, 0], [0, 0, -2 / s]],
        ]
    )
    assert np.allclose(gell_mann(3), ref3, atol=1e-15)
    pauli = np.array([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]])
    assert np.array_equal(gell_mann(2), pauli)
    # su(3) structure constants: [lambda_a, lambda_b] = 2i f_abc lambda_c
    lam = gell_mann(3)
    tr3 = np.einsum("aij,bjk,cki->abc", lam, lam, lam)
    f = (tr3 - tr3.transpose(1, 0, 2)) / 4j
    assert np.isclose(f[0, 1, 2], 1.0) and np.isclose(f[3, 4, 7], np.sqrt(3) / 2)
    assert np.isclose(f[0, 3, 6], 0.5) and np.isclose(f[1, 4, 6], 0.5)
    for n in (2, 3, 4, 5):
        lam = gell_mann(n)
        assert lam.shape == (n * n - 1, n, n)
        assert np.allclose(lam, lam.conj().transpose(0, 2, 1))
        assert np.allclose(np.trace(lam, axis1=1, axis2=2), 0)
        gram = np.einsum("aij,bji->ab", lam, lam)
        assert np.allclose(gram, 2 * np.eye(n * n - 1), atol=1e-14)
        t = su_generators(n)
        assert np.allclose(np.einsum("aij,bji->ab", t, t), -0.5 * np.eye(n * n - 1), atol=1e-14)


@pytest.mark.parametrize("n", [2, 3])
def test_su_algebra_statistics(n: int) -> None:
    rng = SiteRNG(5)
    grid = single_rank_grid((6, 5))
    batch, nd = 40, 2
    p = rng.su_algebra(grid, PURPOSE_MOMENTUM, 1, batch, n, lead=(nd,))
    assert p.shape == (batch, nd, 6, 5, n, n) and p.dtype == torch.complex128
    assert torch.allclose(p, -p.mH, atol=0, rtol=0)
    assert p.diagonal(dim1=-2, dim2=-1).sum(-1).abs().max() < 1e-14
    # components p_a = -2 Tr(T_a P) are the documented normals
    t = torch.from_numpy(su_generators(n))
    comp = -2 * torch.einsum("aij,...ji->...a", t, p)
    assert comp.imag.abs().max() < 1e-14
    ref = rng.normal(grid, PURPOSE_MOMENTUM, 1, batch, lead=(nd,), trail=(n * n - 1,))
    assert torch.allclose(comp.real, ref, atol=1e-14, rtol=0)
    # K = -Tr P^2 = (1/2) sum_a p_a^2 has mean (n^2-1)/2 and variance (n^2-1)/2
    k = -torch.einsum("...ij,...ji->...", p, p).real.flatten().numpy()
    ngen = n * n - 1
    assert abs(k.mean() - ngen / 2) < 5 * np.sqrt(ngen / 2 / k.size)
    # components uncorrelated with unit variance
    c = comp.real.reshape(-1, ngen).numpy()
    cov = c.T @ c / c.shape[0]
    assert np.abs(cov - np.eye(ngen)).max() < 5 * np.sqrt(2.0 / c.shape[0])
    # complex64 output is the rounded complex128 one
    p32 = rng.su_algebra(grid, PURPOSE_MOMENTUM, 1, batch, n, lead=(nd,), dtype=torch.complex64)
    assert torch.equal(p32, p.to(torch.complex64))


def test_su_algebra_rejects_small_n() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        SiteRNG(1).su_algebra(single_rank_grid((2, 2)), 1, 0, 1, 1)


def test_compiled_draws_leave_numba_threading_to_the_backends() -> None:
    """A large draw before any kernel backend is loaded must not start numba's threading
    layer (the default OpenMP layer's spinning workers slowed every later kernel ~10x with
    two ranks on two cores); the backends then pick the work-queue layer."""
    pytest.importorskip("numba")
    import subprocess
    import sys

    code = (
        "import os\n"
        "os.environ.pop('NUMBA_THREADING_LAYER', None)\n"
        "import torch\n"
        "from parallel import single_rank_grid\n"
        "from parallel.rng import SiteRNG, _philox_jit\n"
        "from kernels.theories.su3 import SU3Gauge\n"
        "import kernels.backends as kb\n"
        "assert _philox_jit() is not None\n"
        "th = SU3Gauge(single_rank_grid((4, 4, 4, 4)), 6.0)\n"
        "u = th.hot_start(SiteRNG(1), 0, 2)\n"
        "kb.set_backend('numba')\n"
        "th.force(u)\n"
        "import numba\n"
        "print(numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "workqueue"
