"""Distributed file I/O under mpiexec (1, 2, 4 ranks): ILDG files written through MPI-IO
subarray views are byte-identical for every process grid and to the single-rank file; the
distributed reads give each rank exactly its block; errors are raised on every rank."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from io_fields import CONFIGS, random_links
from mpi4py import MPI

from app.io import gauge_stats
from app.io.errors import ChecksumError
from app.io.hdf5 import EnsembleWriter, read_config
from app.io.ildg import read_ildg, write_ildg
from app.io.nersc import read_nersc, write_nersc
from parallel import ProcessGrid, single_rank_grid

WORLD = MPI.COMM_WORLD
SIZE = WORLD.Get_size()
LATTICE = (4, 2, 2, 8)
DATE = "Thu Jan 01 00:00:00 2026 UTC"

GRIDS = {
    1: [(1, 1, 1, 1)],
    2: [(1, 1, 1, 2), (2, 1, 1, 1)],
    4: [(1, 1, 1, 4), (2, 2, 1, 1), (4, 1, 1, 1), (1, 2, 1, 2)],
}[SIZE]


@pytest.fixture(scope="module")
def shared_dir():
    path = tempfile.mkdtemp(prefix="trivhmc_io_") if WORLD.Get_rank() == 0 else None
    path = Path(WORLD.bcast(path, root=0))
    yield path
    WORLD.Barrier()
    if WORLD.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def links():
    return random_links(LATTICE, seed=2024)  # the same global field on every rank


def local_block(full: np.ndarray, grid: ProcessGrid) -> np.ndarray:
    return np.ascontiguousarray(full[(slice(None), *grid.local_slices())])


_REFERENCE: dict[str, bytes] = {}


def serial_reference(shared_dir: Path, links: np.ndarray, precision: str) -> bytes:
    """The file written by rank 0 alone (MPI.COMM_SELF), read by every rank (cached)."""
    if precision in _REFERENCE:
        return _REFERENCE[precision]
    path = shared_dir / f"serial_{precision}.lime"
    if WORLD.Get_rank() == 0:
        write_ildg(
            path, links, single_rank_grid(LATTICE), precision=precision, lfn="lfn://t", date=DATE
        )
    WORLD.Barrier()
    _REFERENCE[precision] = path.read_bytes()
    return _REFERENCE[precision]


@pytest.mark.parametrize("precision", ["double", "single"])
@pytest.mark.parametrize("dims", GRIDS)
def test_ildg_bytes_identical_for_every_grid(shared_dir, links, dims, precision):
    reference = serial_reference(shared_dir, links, precision)
    grid = ProcessGrid(LATTICE, grid=dims)
    path = shared_dir / f"grid_{'x'.join(map(str, dims))}_{precision}.lime"
    checksum = write_ildg(
        path, local_block(links, grid), grid, precision=precision, lfn="lfn://t", date=DATE
    )
    assert path.read_bytes() == reference
    back, info = read_ildg(path, grid)
    expected = local_block(links, grid)
    if precision == "single":
        expected = expected.astype(np.complex64).astype(np.complex128)
    assert np.array_equal(back, expected)
    assert info.checksum_file == info.checksum_data == checksum
    # the distributed plaquette equals the single-rank one
    serial = gauge_stats.plaquette(links)
    dist = gauge_stats.plaquette(local_block(links, grid), grid)
    assert abs(dist.total - serial.total) < 1e-12
    assert abs(dist.spatial - serial.spatial) < 1e-12
    assert abs(dist.temporal - serial.temporal) < 1e-12
    grid.free()


@pytest.mark.parametrize("dims", GRIDS)
def test_read_real_file_distributed(dims):
    cfg = CONFIGS / "ildg.l8t4b3360"
    if not cfg.exists():
        pytest.skip(f"reference configurations not found at {CONFIGS}")
    full, _ = read_ildg(cfg)  # single rank
    grid = ProcessGrid((8, 8, 8, 4), grid=dims)
    block, info = read_ildg(cfg, grid)
    assert np.array_equal(block, local_block(full, grid))
    assert info.checksum_data == (0x10D0EA1A, 0xA6A1B3B8)
    nersc_block, _ = read_nersc(CONFIGS / "nersc.l8t4b3360", grid)
    assert np.allclose(nersc_block, block, rtol=0, atol=2e-15)
    plaq = gauge_stats.plaquette(block, grid)
    assert abs(plaq.total - 0.503866446949594) < 1e-12
    grid.free()


@pytest.mark.parametrize("dims", GRIDS)
def test_corruption_raises_on_every_rank(shared_dir, links, dims):
    reference = serial_reference(shared_dir, links, "double")
    path = shared_dir / f"flipped_{'x'.join(map(str, dims))}.lime"
    if WORLD.Get_rank() == 0:
        data = bytearray(reference)
        data[-400] ^= 0x01  # inside the last site of the payload
        path.write_bytes(bytes(data))
    WORLD.Barrier()
    grid = ProcessGrid(LATTICE, grid=dims)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        read_ildg(path, grid)
    grid.free()


@pytest.mark.parametrize("dims", GRIDS)
def test_nersc_and_hdf5_distributed(shared_dir, links, dims):
    grid = ProcessGrid(LATTICE, grid=dims)
    tag = "x".join(map(str, dims))
    mine = local_block(links, grid)
    nersc_path = shared_dir / f"cfg_{tag}.nersc"
    write_nersc(nersc_path, mine, grid)
    back, info = read_nersc(nersc_path, grid)
    assert np.array_equal(back, mine) and info.checksum_status == "ok"

    h5 = shared_dir / f"ens_{tag}.h5"
    writer = EnsembleWriter(h5, "su3", {"beta": 6.0}, LATTICE, "hmc", 1, "test", grid=grid)
    assert (writer.append_config(mine, 10, first=1) is None) != grid.is_root
    writer.append_observables(10, {"plaquette": 0.5})
    writer.close()
    grid.barrier()
    assert np.array_equal(read_config(h5, 0), links)
    # a refusal on the writing rank is an error on every rank (no rank left waiting)
    with pytest.raises(ValueError, match="parameters differ: beta"):
        EnsembleWriter(h5, "su3", {"beta": 5.5}, LATTICE, "hmc", 1, "test", grid=grid, mode="a")
    grid.free()


@pytest.mark.parametrize("dims", GRIDS)
def test_write_into_a_missing_directory_fails_on_every_rank(shared_dir, links, dims):
    """A missing target directory is one OutputPathError (exit 2) on every rank, decided
    before MPI_File_open (which would fail with an MPI-IO error on each rank alone)."""
    from app.io.paths import OutputPathError

    grid = ProcessGrid(LATTICE, grid=dims)
    mine = local_block(links, grid)
    for name in ("nodir/cfg.lime", "nodir/cfg.nersc"):
        write = write_ildg if name.endswith(".lime") else write_nersc
        with pytest.raises(OutputPathError, match="nodir does not exist"):
            write(shared_dir / name, mine, grid)
    grid.barrier()
    assert not (shared_dir / "nodir").exists()
    grid.free()


def test_convert_command_into_a_missing_directory(shared_dir, links, capsys):
    """``mpiexec -n N trivhmc convert x.lime nodir/y.lime``: exit 2 on every rank, the message
    once (rank 0), no MPI_Abort; a good target is written once."""
    from app.cli import main

    src = shared_dir / "convert_src.lime"
    if WORLD.Get_rank() == 0:
        write_ildg(src, links, date=DATE)
    WORLD.Barrier()
    assert main(["convert", str(src), str(shared_dir / "nodir" / "y.lime")]) == 2
    err = capsys.readouterr().err
    if WORLD.Get_rank() == 0:
        assert "cannot write" in err and "nodir does not exist" in err
    else:
        assert err == ""
    assert main(["convert", str(src), str(shared_dir / "converted.nersc")]) == 0
    WORLD.Barrier()
    back, info = read_nersc(shared_dir / "converted.nersc")
    assert np.array_equal(back, links) and info.checksum_status == "ok"
