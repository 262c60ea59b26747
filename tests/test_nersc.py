"""NERSC reader and writer: the real SIMULATeQCD file, 2-row/single/little-endian variants,
round trip, corruption."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from io_fields import configs_dir_or_skip, random_links

from app.io import gauge_stats
from app.io.errors import ChecksumError, ConfigFormatError
from app.io.ildg import read_ildg
from app.io.nersc import read_nersc, write_nersc


def word_sum(payload: bytes, byteorder: str) -> int:
    """Reference NERSC checksum: wrapping sum of 32-bit words, written out with struct."""
    n = len(payload) // 4
    return sum(struct.unpack(f"{byteorder}{n}I", payload)) & 0xFFFFFFFF


def nersc_file(path, links, datatype="4D_SU3_GAUGE_3x3", fp="IEEE64BIG", extra=None) -> bytes:
    """Write a NERSC file by hand (independent of app.io.nersc's writer)."""
    endian = "<" if fp.endswith(("LITTLE", "SMALL")) else ">"
    bits = 32 if fp.startswith("IEEE32") else 64
    data = np.transpose(links, (4, 3, 2, 1, 0, 5, 6))
    if datatype == "4D_SU3_GAUGE":
        data = data[..., :2, :]
    payload = np.ascontiguousarray(data, dtype=f"{endian}c{bits // 4}").tobytes()
    plaq = gauge_stats.plaquette(links).total
    header = {
        "HDR_VERSION": "1.0",
        "DATATYPE": datatype,
        "DIMENSION_1": links.shape[1],
        "DIMENSION_2": links.shape[2],
        "DIMENSION_3": links.shape[3],
        "DIMENSION_4": links.shape[4],
        "CHECKSUM": f"{word_sum(payload, endian):x}",
        "LINK_TRACE": f"{gauge_stats.link_trace(links):.10f}",
        "PLAQUETTE": f"{plaq:.10f}",
        "FLOATING_POINT": fp,
    }
    header.update(extra or {})
    text = "BEGIN_HEADER\n" + "".join(f"{k} = {v}\n" for k, v in header.items()) + "END_HEADER\n"
    path.write_bytes(text.encode() + payload)
    return payload


def test_real_file_simulateqcd():
    cfg = configs_dir_or_skip() / "nersc.l8t4b3360"
    links, info = read_nersc(cfg)
    assert info.lattice == (8, 8, 8, 4) and info.data_offset == 216
    assert info.datatype == "4D_SU3_GAUGE_3x3" and info.precision == "double"
    assert info.checksum_file == info.checksum_data == 0xB379560A
    assert info.plaquette_header == 0.5038664469 and info.link_trace_header == 0.005406083858
    plaq = gauge_stats.plaquette(links)
    assert plaq.total == pytest.approx(0.503866446949594, abs=1e-12)
    assert plaq.spatial == pytest.approx(0.502524597593524, abs=1e-12)
    assert plaq.temporal == pytest.approx(0.505208296305664, abs=1e-12)
    assert gauge_stats.link_trace(links) == pytest.approx(0.005406083857887, abs=1e-12)
    payload = cfg.read_bytes()[216:]
    assert word_sum(payload, ">") == 0xB379560A


def test_nersc_and_ildg_files_hold_the_same_links():
    cfg = configs_dir_or_skip()
    a, _ = read_nersc(cfg / "nersc.l8t4b3360")
    b, _ = read_ildg(cfg / "ildg.l8t4b3360")
    # the two files were written separately; they agree to the last bits of a double
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-15)


@pytest.mark.parametrize(
    "datatype,fp",
    [
        ("4D_SU3_GAUGE_3x3", "IEEE64BIG"),
        ("4D_SU3_GAUGE_3x3", "IEEE32BIG"),
        ("4D_SU3_GAUGE_3x3", "IEEE64LITTLE"),
        ("4D_SU3_GAUGE", "IEEE64BIG"),
        ("4D_SU3_GAUGE", "IEEE32LITTLE"),
    ],
)
def test_variants(tmp_path, datatype, fp):
    links = random_links((2, 2, 4, 2), seed=21)
    path = tmp_path / "cfg.nersc"
    nersc_file(path, links, datatype, fp)
    back, info = read_nersc(path)
    assert info.datatype == datatype and info.floating_point == fp
    assert info.checksum_status == "ok"
    tol = 1e-14 if fp.startswith("IEEE64") else 1e-6
    np.testing.assert_allclose(back, links, rtol=0, atol=tol)
    if datatype == "4D_SU3_GAUGE_3x3" and fp.startswith("IEEE64"):
        assert np.array_equal(back, links)


def test_round_trip_and_header(tmp_path):
    links = random_links((2, 4, 2, 4), seed=8)
    path = tmp_path / "out.nersc"
    checksum = write_nersc(path, links, sequence_number=120)
    back, info = read_nersc(path)
    assert np.array_equal(back, links)
    assert info.header["DATATYPE"] == "4D_SU3_GAUGE_3x3"
    assert info.header["FLOATING_POINT"] == "IEEE64BIG"
    assert info.header["SEQUENCE_NUMBER"] == "120"
    payload = path.read_bytes()[info.data_offset :]
    assert len(payload) == 4 * 64 * 9 * 16
    assert checksum == info.checksum_file == word_sum(payload, ">")
    assert info.plaquette_header == gauge_stats.plaquette(links).total
    assert info.link_trace_header == gauge_stats.link_trace(links)


@pytest.fixture
def good(tmp_path):
    links = random_links((2, 2, 2, 4), seed=9)
    path = tmp_path / "good.nersc"
    payload = nersc_file(path, links)
    return path, len(payload)


def test_bit_flip(good):
    path, n = good
    data = bytearray(path.read_bytes())
    data[len(data) - n + 500] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="NERSC checksum mismatch.*header says [0-9a-f]+"):
        read_nersc(path)


def test_truncated(good):
    path, _ = good
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigFormatError, match="truncated NERSC file"):
        read_nersc(path)


def test_wrong_plaquette_in_header(tmp_path):
    links = random_links((2, 2, 2, 2), seed=10)
    path = tmp_path / "p.nersc"
    nersc_file(path, links, extra={"PLAQUETTE": "0.9"})
    with pytest.raises(ConfigFormatError, match="header PLAQUETTE = 0.9 but the links give"):
        read_nersc(path)


def test_little_endian_data_declared_big(tmp_path):
    """The word sum read in the wrong byte order differs: a clear error, not garbage links."""
    links = random_links((2, 2, 2, 2), seed=12)
    path = tmp_path / "le.nersc"
    nersc_file(path, links, fp="IEEE64LITTLE")
    text = path.read_bytes().replace(b"IEEE64LITTLE", b"IEEE64BIG   ")
    path.write_bytes(text)
    with pytest.raises(ChecksumError, match="wrong FLOATING_POINT"):
        read_nersc(path)
    with pytest.raises(ConfigFormatError, match="not (unitary|finite).*FLOATING_POINT = IEEE64BIG"):
        read_nersc(path, verify_checksum=False)


def test_not_nersc(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"hello world\n")
    with pytest.raises(ConfigFormatError, match="not a NERSC file"):
        read_nersc(path)
    path.write_bytes(b"BEGIN_HEADER\nDATATYPE = 4D_SU3_GAUGE_3x3\n")
    with pytest.raises(ConfigFormatError, match="no END_HEADER"):
        read_nersc(path)


def test_a_run_labels_its_nersc_files_by_run_and_chain(tmp_path):
    """The run writes ENSEMBLE_LABEL = the stem of its file names, SEQUENCE_NUMBER = the
    1-based trajectory count (the number in the name)."""
    from app.cli import main

    (tmp_path / "deck.yaml").write_text(
        "theory: {name: su3, beta: 6.0, action: wilson}\n"
        "lattice: {shape: [2, 2, 2, 4]}\n"
        "sampler: {name: hmc, steps: 2, trajectory_length: 0.1}\n"
        "run: {seed: 1, thermalization: 0, trajectories: 2, save_every: 2, chains: 2}\n"
        "output: {directory: b6, formats: [nersc], progress: false}\n"
    )
    assert main(["run", str(tmp_path / "deck.yaml")]) == 0
    for chain in (0, 1):
        _, info = read_nersc(tmp_path / "b6" / "configs" / f"b6_c{chain}_000002.nersc")
        assert info.header["ENSEMBLE_LABEL"] == f"b6_c{chain}"
        assert info.header["SEQUENCE_NUMBER"] == "2"
