"""Test helpers for the file-format tests: random SU(3) fields and LIME surgery."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.io import lime

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT.parent / "shared" / "data" / "configs"


def configs_dir_or_skip() -> Path:
    """The folder of real configurations from other codes (skip the test when absent)."""
    import pytest

    if not (CONFIGS / "README.md").exists():
        pytest.skip(f"reference configurations not found at {CONFIGS} (../shared/data/configs)")
    return CONFIGS


def random_su3(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Haar-random SU(3) matrices of shape ``(*shape, 3, 3)`` (QR of complex Gaussians)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(*shape, 3, 3)) + 1j * rng.normal(size=(*shape, 3, 3))
    q, r = np.linalg.qr(z)
    d = np.diagonal(r, axis1=-2, axis2=-1)
    q = q * (d / np.abs(d))[..., None, :]
    det = np.linalg.det(q)
    return q / (det ** (1 / 3))[..., None, None]


def random_links(lattice: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """A random SU(3) configuration ``(4, Lx, Ly, Lz, Lt, 3, 3)``."""
    return random_su3((4, *lattice), seed)


def lime_records(path: Path) -> list[tuple[str, bytes, bool, bool]]:
    """All records of a LIME file as (type, payload, MB, ME)."""
    out = []
    with open(path, "rb") as f:
        for rec in lime.iter_records(f):
            out.append((rec.type, lime.read_payload(f, rec), rec.mb, rec.me))
    return out


def write_lime(path: Path, records: list[tuple[str, bytes, bool, bool]]) -> None:
    path.write_bytes(b"".join(lime.record_bytes(*r) for r in records))
