"""Device-side Philox (parallel/rng.py, torch integer ops) against the host stream.

Run on CPU tensors with ``device_philox = "always"`` (no GPU on the test machines): the
words must reproduce the Random123 known answers, the words and uniforms must equal the host
(numpy) stream bit for bit for any shape, chain offset, counter and site index up to 2^48,
and the normals / su(3) momenta must equal it to the rounding of the math library.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_rng import KAT

from parallel import single_rank_grid
from parallel.rng import CHAIN_SITE, SiteRNG, philox4x32, philox4x32_torch


def _words(ctr, key):
    c = [torch.tensor(int(w), dtype=torch.int64) for w in ctr]
    return tuple(int(w) for w in philox4x32_torch(c, int(key[0]), int(key[1])))


def test_known_answers():
    for ctr, key, out in KAT:
        assert _words(ctr, key) == out


def test_words_equal_host_on_random_counters():
    rng = np.random.default_rng(5)
    ctr = rng.integers(0, 2**32, size=(257, 4), dtype=np.uint64).astype(np.uint32)
    key = (0xDEADBEEF, 0x01234567)
    host = philox4x32(ctr, np.array(key, dtype=np.uint32))
    dev = philox4x32_torch([torch.from_numpy(ctr[:, i].astype(np.int64)) for i in range(4)], *key)
    assert np.array_equal(np.stack([d.numpy() for d in dev], -1).astype(np.uint32), host)


@pytest.mark.parametrize("seed", [0, 2**40 + 12345, 2**64 - 1])
def test_uniforms_bitwise_normals_to_rounding(seed):
    grid = single_rank_grid((4, 6, 2, 3))
    host, dev = SiteRNG(seed), SiteRNG(seed)
    dev.device_philox = "always"
    kw = dict(lead=(4,), trail=(5,), chain_offset=7)
    for counter in (0, 2**32 - 1):
        u_h, u_d = (r.uniform(grid, 3, counter, 3, **kw) for r in (host, dev))
        assert torch.equal(u_h, u_d)
        z_h, z_d = (r.normal(grid, 3, counter, 3, **kw) for r in (host, dev))
        assert torch.allclose(z_d, z_h, rtol=4e-16, atol=4e-16)
        assert (z_h != z_d).float().mean() < 0.5  # mostly bitwise; ulps where libms differ
    p_h, p_d = (r.su_algebra(grid, 1, 9, 2, 3, lead=(4,)) for r in (host, dev))
    assert torch.allclose(p_d, p_h, rtol=0, atol=1e-15)
    # the uniforms of a float32 draw go through the same path
    f_h, f_d = (r.uniform(grid, 3, 1, 2, dtype=torch.float32) for r in (host, dev))
    assert torch.equal(f_h, f_d)


def test_site_index_high_bits_and_chain_site():
    """Blocks at site indices above 2^32 (word 1 carries bits 32..47) and the reserved
    per-chain site equal the host words."""
    rng = SiteRNG(77)
    sites = np.array([0, 1, 2**32 - 1, 2**32, 2**40 + 3, CHAIN_SITE], dtype=np.int64)
    h0, h1 = rng._blocks(sites, 5, 11, 3, 4, 2)
    d0, d1 = rng._blocks(sites, 5, 11, 3, 4, 2, device=torch.device("cpu"))
    assert np.array_equal(d0.numpy(), h0) and np.array_equal(d1.numpy(), h1)


def test_mode_selection():
    rng = SiteRNG(1)
    assert rng._device("cpu") is None  # auto: host stream on the CPU
    rng.device_philox = "always"
    assert rng._device("cpu") == torch.device("cpu")
    rng.device_philox = "sometimes"
    with pytest.raises(ValueError, match="device_philox"):
        rng._device("cpu")
