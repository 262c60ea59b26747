"""Readers refuse what is not a valid field; HDF5 configurations carry the SciDAC checksum.

Hostile files: an ILDG payload written little-endian under a valid big-endian header and no
checksum (a buggy writer); links that are not unitary although correctly checksummed; an
HDF5 configuration with one flipped bit; an HDF5 header whose lattice disagrees with the
stored configuration. Each is refused by the reader, by ``trivhmc info`` (non-zero exit),
by ``trivhmc convert`` (nothing written) and as ``run.start``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from io_fields import lime_records, random_links, write_lime

from app.cli import main
from app.io.errors import ChecksumError, InvalidFieldError, MissingChecksumWarning
from app.io.hdf5 import EnsembleWriter, field_checksum, read_config
from app.io.ildg import read_ildg, write_ildg
from app.io.validate import unitarity_tolerance

LATTICE = (2, 2, 2, 4)


def ensemble(path: Path, links: np.ndarray) -> Path:
    w = EnsembleWriter(path, "su3", {"beta": 5.7}, LATTICE, "hmc", 1, "test")
    w.append_config(links, 3, first=1)
    w.close()
    return path


def byte_swapped_ildg(path: Path, links: np.ndarray) -> Path:
    """The links as little-endian doubles under the ILDG header, without a checksum."""
    write_ildg(path, links)
    le = np.ascontiguousarray(np.transpose(links, (4, 3, 2, 1, 0, 5, 6)), dtype="<c16")
    recs = [
        (t, le.tobytes() if t == "ildg-binary-data" else p, mb, me)
        for t, p, mb, me in lime_records(path)
        if t != "scidac-checksum"
    ]
    write_lime(path, recs)
    return path


def flip_bit(path: Path, index: tuple[int, ...], bit: int = 3) -> None:
    """Flip one low mantissa bit of one link entry of the stored configuration."""
    with h5py.File(path, "r+") as f:
        v = np.array([f["configs"][(0, *index)]])
        raw = v.view(np.uint8).copy()
        raw[0] ^= 1 << bit
        f["configs"][(0, *index)] = raw.view(v.dtype)[0]


def run_from(tmp: Path, start: Path) -> int:
    deck = tmp / "deck.yaml"
    deck.write_text(
        "theory: {name: su3, beta: 5.7, action: wilson}\nlattice: {shape: [2, 2, 2, 4]}\n"
        "sampler: {name: hmc, integrator: omelyan, steps: 2, trajectory_length: 0.2}\n"
        f"run: {{seed: 1, thermalization: 0, trajectories: 1, start: {start}}}\n"
        f"output: {{directory: out_{start.stem}, formats: [hdf5]}}\n"
    )
    return main(["run", str(deck), "--no-progress"])


def refused_everywhere(tmp: Path, bad: Path, match: str, capsys) -> None:
    """``info`` exits non-zero naming the problem, ``convert`` writes nothing, ``run`` with
    ``start: bad`` is refused before any trajectory; every message names the problem."""
    capsys.readouterr()
    assert main(["info", str(bad)]) != 0
    assert match in capsys.readouterr().err
    out = tmp / "converted.lime"
    assert main(["convert", str(bad), str(out)]) != 0
    assert not out.exists()
    assert match in capsys.readouterr().err
    assert run_from(tmp, bad) != 0
    assert match in capsys.readouterr().err
    assert not (tmp / f"out_{bad.stem}" / "records.jsonl").exists()


def test_byte_swapped_ildg_payload_is_refused_with_an_endianness_hint(tmp_path, capsys):
    links = random_links(LATTICE, seed=3)
    bad = byte_swapped_ildg(tmp_path / "le.lime", links)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingChecksumWarning)
        with pytest.raises(InvalidFieldError, match="little-endian") as err:
            read_ildg(bad)
        assert str(bad) in str(err.value)
        refused_everywhere(tmp_path, bad, "little-endian", capsys)


def test_non_unitary_links_with_a_valid_checksum_are_refused(tmp_path):
    links = random_links(LATTICE, seed=4)
    links[1, 0, 1, 0, 2] *= 1.0 + 1e-6  # above the double tolerance, below single's
    path = tmp_path / "scaled.lime"
    write_ildg(path, links)  # writes a matching checksum
    with pytest.raises(InvalidFieldError, match="not unitary.*double"):
        read_ildg(path)
    assert main(["info", str(path)]) != 0
    # the same deviation is acceptable for a single-precision file
    assert 1e-6 < unitarity_tolerance("single")


def test_hdf5_config_checksum_equals_the_ildg_checksum(tmp_path):
    links = random_links(LATTICE, seed=5)
    h5 = ensemble(tmp_path / "ens.h5", links)
    lime = tmp_path / "cfg.lime"
    write_ildg(lime, links)
    _, info = read_ildg(lime)
    with h5py.File(h5) as f:
        stored = tuple(int(c) for c in f["config_checksum"][0])  # plain h5py
    assert stored == info.checksum_file == field_checksum(links, 1, 4)
    np.testing.assert_array_equal(read_config(h5), links)
    assert main(["info", str(h5)]) == 0
    assert run_from(tmp_path, h5) == 0  # the control: a valid start file runs


def test_flipped_bit_in_hdf5_config_is_refused(tmp_path, capsys):
    links = random_links(LATTICE, seed=6)
    bad = ensemble(tmp_path / "ens.h5", links)
    flip_bit(bad, (2, 1, 0, 1, 3, 0, 2))
    with pytest.raises(ChecksumError, match="configuration 0"):
        read_config(bad)
    refused_everywhere(tmp_path, bad, "checksum mismatch", capsys)


def test_hdf5_non_unitary_and_wrong_lattice_are_refused(tmp_path):
    links = random_links(LATTICE, seed=7)
    links[0, 0, 0, 0, 0] = np.nan
    bad = ensemble(tmp_path / "nan.h5", links)  # correctly checksummed, but not a field
    with pytest.raises(InvalidFieldError, match="not finite"):
        read_config(bad)
    assert main(["info", str(bad)]) != 0
    good = ensemble(tmp_path / "good.h5", random_links(LATTICE, seed=8))
    with h5py.File(good, "r+") as f:
        f.attrs["lattice"] = np.array([2, 2, 4, 2])
    with pytest.raises(InvalidFieldError, match="header says"):
        read_config(good)
