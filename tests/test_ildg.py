"""ILDG/LIME reader and writer: real files from other codes, round trips, corruption."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from io_fields import configs_dir_or_skip, lime_records, random_links, write_lime

from app.io import gauge_stats, lime
from app.io.errors import (
    ChecksumError,
    ConfigFormatError,
    InvalidFieldError,
    MissingChecksumWarning,
)
from app.io.ildg import read_ildg, write_ildg
from app.io.scidac_checksum import format_checksum, parse_checksum
from parallel import single_rank_grid

DATE = "Thu Jan 01 00:00:00 2026 UTC"


def serial_scidac_reference(payload: bytes, site_bytes: int) -> tuple[int, int]:
    """Plain-Python SciDAC checksum (QIO's loop), independent of app.io.scidac_checksum."""
    suma = sumb = 0
    for rank in range(len(payload) // site_bytes):
        crc = zlib.crc32(payload[rank * site_bytes : (rank + 1) * site_bytes])
        for r, name in ((rank % 29, "a"), (rank % 31, "b")):
            rot = ((crc << r) | (crc >> (32 - r))) & 0xFFFFFFFF
            if name == "a":
                suma ^= rot
            else:
                sumb ^= rot
    return suma, sumb


def binary_payload(path) -> bytes:
    return next(p for t, p, _, _ in lime_records(path) if t == "ildg-binary-data")


# --------------------------------------------------------------------- real files
def test_weak_field_chroma_qio():
    cfg = configs_dir_or_skip() / "weak_field.lime"
    links, info = read_ildg(cfg)
    assert links.shape == (4, 4, 4, 4, 8, 3, 3) and links.dtype == np.complex128
    assert info.lattice == (4, 4, 4, 8) and info.precision == "double"
    assert info.checksum_file == (0xA2C41090, 0x11193C39) == info.checksum_data
    assert info.checksum_status == "ok"
    plaq = gauge_stats.plaquette(links)
    assert plaq.total == pytest.approx(0.9948041322666998, abs=1e-12)
    assert plaq.spatial == pytest.approx(0.9947985783413031, abs=1e-12)
    assert plaq.temporal == pytest.approx(0.9948096861920964, abs=1e-12)


def test_weak_field_detects_layout_bugs():
    """Reading the 3x3 matrices transposed or mu in (t,x,y,z) order changes the plaquette."""
    cfg = configs_dir_or_skip() / "weak_field.lime"
    raw = np.frombuffer(binary_payload(cfg), dtype=">c16").reshape(8, 4, 4, 4, 4, 3, 3)
    right = np.transpose(raw, (4, 3, 2, 1, 0, 5, 6)).astype(np.complex128)
    expected = 0.9948041322666998
    assert gauge_stats.plaquette(right).total == pytest.approx(expected, abs=1e-12)
    # each mistake moves the plaquette by 1e-6 .. 1e-4, far beyond the 1e-12 tolerance
    transposed = np.swapaxes(right, -1, -2)
    assert abs(gauge_stats.plaquette(transposed).total - expected) > 1e-5
    for perm in ([3, 0, 1, 2], [1, 2, 3, 0]):  # mu index taken in (t,x,y,z) order
        assert abs(gauge_stats.plaquette(right[perm]).total - expected) > 1e-6
    # sites taken as [x][y][z][t] (t fastest) instead of [t][z][y][x]
    wrong_sites = np.transpose(raw.reshape(4, 4, 4, 8, 4, 3, 3), (4, 0, 1, 2, 3, 5, 6))
    assert abs(gauge_stats.plaquette(wrong_sites).total - expected) > 1e-5


def test_unity_tmlqcd():
    cfg = configs_dir_or_skip() / "unity.lime"
    links, info = read_ildg(cfg)
    assert info.lattice == (4, 4, 4, 4)
    assert np.array_equal(links, np.broadcast_to(np.eye(3), links.shape))
    assert info.checksum_file == (0x35B49A1B, 0xB49A1B35) == info.checksum_data
    assert info.plaquette_header == 1.0  # from the xlf-info record
    assert gauge_stats.plaquette(links).total == 1.0


def test_l8t4b3360_simulateqcd():
    cfg = configs_dir_or_skip() / "ildg.l8t4b3360"
    assert all(r.mb and r.me for r in lime.read_records(cfg))  # MB=ME=1 on every record
    links, info = read_ildg(cfg)
    assert info.lattice == (8, 8, 8, 4)
    assert info.checksum_file == (0x10D0EA1A, 0xA6A1B3B8) == info.checksum_data
    assert info.lfn == "mc://ldg///_s008t04_b0336000/ildg_s008t04_b0336000"
    plaq = gauge_stats.plaquette(links)
    assert plaq.total == pytest.approx(0.503866446949594, abs=1e-12)
    assert plaq.spatial == pytest.approx(0.502524597593524, abs=1e-12)
    assert plaq.temporal == pytest.approx(0.505208296305664, abs=1e-12)
    assert gauge_stats.link_trace(links) == pytest.approx(0.005406083857887, abs=1e-12)


def test_lime_header_bytes_match_qio():
    cfg = configs_dir_or_skip() / "weak_field.lime"
    head = cfg.read_bytes()[: lime.HEADER_SIZE]
    assert lime.header_bytes("scidac-private-file-xml", 149, mb=True) == head
    magic, version, flags, length = struct.unpack(">IHHQ", head[:16])
    assert (magic, version, flags, length) == (0x456789AB, 1, 0x8000, 149)


# --------------------------------------------------------------------- round trips
def test_writer_reproduces_chroma_payload(tmp_path):
    """Our bytes for the weak_field links equal Chroma's, so do the checksums."""
    cfg = configs_dir_or_skip() / "weak_field.lime"
    links, _ = read_ildg(cfg)
    out = tmp_path / "w.lime"
    assert write_ildg(out, links, date=DATE) == (0xA2C41090, 0x11193C39)
    assert binary_payload(out) == binary_payload(cfg)
    types = [t for t, _, _, _ in lime_records(out)]
    assert types == [
        "scidac-private-file-xml",
        "scidac-file-xml",
        "scidac-private-record-xml",
        "scidac-record-xml",
        "ildg-format",
        "ildg-data-lfn",
        "ildg-binary-data",
        "scidac-checksum",
    ]


@pytest.mark.parametrize("precision", ["double", "single"])
def test_round_trip(tmp_path, precision):
    links = random_links((2, 4, 2, 6), seed=11)
    out = tmp_path / "cfg.lime"
    checksum = write_ildg(out, links, precision=precision, lfn="lfn://test/cfg", extra_info="x<y")
    back, info = read_ildg(out)
    if precision == "double":
        assert np.array_equal(back, links)
    else:
        assert np.array_equal(back, links.astype(np.complex64).astype(np.complex128))
        assert not np.array_equal(back, links)
    assert info.precision == precision and info.lattice == (2, 4, 2, 6)
    assert info.lfn == "lfn://test/cfg" and info.info == "x<y"
    itemsize = 16 if precision == "double" else 8
    ref = serial_scidac_reference(binary_payload(out), 4 * 9 * itemsize)
    assert ref == checksum == info.checksum_file == info.checksum_data
    plaq = gauge_stats.plaquette(links).total
    assert info.plaquette_header == pytest.approx(plaq, abs=1e-15 if itemsize == 16 else 1e-6)
    assert info.link_trace_header == pytest.approx(gauge_stats.link_trace(links), abs=1e-6)


def test_torch_in_and_out(tmp_path):
    links = random_links((2, 2, 2, 4), seed=3)
    out = tmp_path / "t.lime"
    write_ildg(out, torch.from_numpy(links)[None], single_rank_grid((2, 2, 2, 4)))
    back, _ = read_ildg(out, device="cpu")
    assert isinstance(back, torch.Tensor) and torch.equal(back, torch.from_numpy(links))


def test_checksum_text_forms():
    assert parse_checksum("a2c41090") == parse_checksum("0xA2C41090") == 0xA2C41090
    assert parse_checksum("0x0000ff") == parse_checksum("00ff") == 255
    assert format_checksum(0x0A) == "a"
    with pytest.raises(ValueError, match="hex checksum"):
        parse_checksum("xyz")


def test_reads_checksum_with_0x_and_leading_zeros(tmp_path):
    links = random_links((2, 2, 2, 2), seed=5)
    out = tmp_path / "c.lime"
    suma, sumb = write_ildg(out, links)
    recs = lime_records(out)
    xml = (
        f"<?xml version='1.0'?><scidacChecksum><version>1.0</version>"
        f"<suma>0x{suma:016x}</suma><sumb>0X{sumb:08X}</sumb></scidacChecksum>"
    ).encode()
    write_lime(out, [r if r[0] != "scidac-checksum" else (r[0], xml, r[2], r[3]) for r in recs])
    _, info = read_ildg(out)
    assert info.checksum_status == "ok"


# --------------------------------------------------------------------- corruption
@pytest.fixture
def good_file(tmp_path):
    links = random_links((2, 2, 4, 4), seed=7)
    out = tmp_path / "good.lime"
    write_ildg(out, links, date=DATE)
    return out, links


def test_truncated_file(good_file):
    path, _ = good_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])  # cut inside the binary payload
    with pytest.raises(ConfigFormatError, match="truncated LIME file.*ildg-binary-data"):
        read_ildg(path)


def test_truncated_inside_a_header(good_file):
    path, _ = good_file
    recs = lime.read_records(path)
    path.write_bytes(path.read_bytes()[: recs[-1].offset - 100])
    with pytest.raises(ConfigFormatError, match="truncated LIME file.*record header"):
        read_ildg(path)


def test_bit_flip_fails_checksum(good_file):
    path, _ = good_file
    rec = next(r for r in lime.read_records(path) if r.type == "ildg-binary-data")
    data = bytearray(path.read_bytes())
    data[rec.offset + 1239] ^= 0x01  # last mantissa bit of a double: still unitary
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"checksum mismatch.*records suma=\w+ .*give suma="):
        read_ildg(path)
    _, info = read_ildg(path, verify_checksum=False)
    assert info.checksum_status == "mismatch"


def test_missing_checksum_warns(good_file):
    path, links = good_file
    write_lime(path, [r for r in lime_records(path) if r[0] != "scidac-checksum"])
    with pytest.warns(MissingChecksumWarning, match="no scidac-checksum"):
        back, info = read_ildg(path)
    assert np.array_equal(back, links) and info.checksum_status == "missing"


def test_dims_do_not_match_payload(good_file):
    path, _ = good_file
    recs = lime_records(path)
    fixed = []
    for t, p, mb, me in recs:
        if t == "ildg-format":
            assert b"<lt>4</lt>" in p
            p = p.replace(b"<lt>4</lt>", b"<lt>6</lt>")
        fixed.append((t, p, mb, me))
    write_lime(path, fixed)
    with pytest.raises(
        ConfigFormatError,
        match=r"dims \[2, 2, 4, 6\].*need 55296 bytes.*holds 36864 \(.*64 sites, not 96",
    ):
        read_ildg(path)


def test_precision_does_not_match_payload(good_file):
    path, _ = good_file
    fixed = [
        (t, p.replace(b"<precision>64<", b"<precision>32<") if t == "ildg-format" else p, mb, me)
        for t, p, mb, me in lime_records(path)
    ]
    write_lime(path, fixed)
    with pytest.raises(ConfigFormatError, match="would fit precision 64, not 32"):
        read_ildg(path)


def test_little_endian_payload_under_ildg_header(good_file):
    """A buggy writer stored native little-endian doubles (and checksummed those bytes)."""
    path, links = good_file
    le = np.ascontiguousarray(np.transpose(links, (4, 3, 2, 1, 0, 5, 6)), dtype="<c16").tobytes()
    suma, sumb = serial_scidac_reference(le, 576)
    xml = (
        f"<scidacChecksum><version>1.0</version><suma>{suma:x}</suma>"
        f"<sumb>{sumb:x}</sumb></scidacChecksum>"
    ).encode()
    recs = []
    for t, p, mb, me in lime_records(path):
        p = {"ildg-binary-data": le, "scidac-checksum": xml}.get(t, p)
        recs.append((t, p, mb, me))
    write_lime(path, recs)
    with pytest.raises(InvalidFieldError, match="not (unitary|finite).*little-endian"):
        read_ildg(path)


def test_not_a_lime_file(tmp_path):
    path = tmp_path / "junk.lime"
    path.write_bytes(b"BEGIN_HEADER\n" + b"\0" * 300)
    with pytest.raises(ConfigFormatError, match="not a LIME file"):
        read_ildg(path)
    empty = tmp_path / "empty.lime"
    empty.write_bytes(b"")
    with pytest.raises(ConfigFormatError, match="no ildg-binary-data"):
        read_ildg(empty)


def test_header_plaquette_mismatch(good_file):
    path, _ = good_file
    fixed = []
    for t, p, mb, me in lime_records(path):
        if t == "scidac-record-xml":
            start = p.index(b"<plaq>") + 6
            stop = p.index(b"</plaq>")
            p = p[:start] + b"0.25" + p[stop:]
        fixed.append((t, p, mb, me))
    write_lime(path, fixed)
    with pytest.raises(ConfigFormatError, match="header states plaquette 0.25"):
        read_ildg(path)


def test_grid_for_another_lattice(good_file):
    path, _ = good_file
    with pytest.raises(ConfigFormatError, match=r"holds a \[2, 2, 4, 4\] lattice"):
        read_ildg(path, single_rank_grid((2, 2, 2, 4)))


# ------------------------------------------------------------------ output directory
@pytest.mark.parametrize("suffix", ["lime", "nersc", "h5"])
def test_convert_into_a_missing_directory(tmp_path, capsys, suffix):
    """``trivhmc convert x.lime nodir/y.lime``: exit 2 naming the directory (was an internal
    error from MPI_File_open), nothing written, the source untouched."""
    from app.cli import main
    from app.io.convert import convert
    from app.io.paths import OutputPathError

    src = tmp_path / "x.lime"
    write_ildg(src, random_links((2, 2, 2, 2), seed=5), date=DATE)
    before = src.read_bytes()
    dst = tmp_path / "nodir" / f"y.{suffix}"
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {dst}" in err and "does not exist" in err
    assert "internal error" not in err and "MPI_File_open" not in err
    assert not (tmp_path / "nodir").exists() and src.read_bytes() == before
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputPathError, match="afile is not a directory"):
        convert(src, tmp_path / "afile" / f"y.{suffix}")
    assert main(["convert", str(src), str(tmp_path / f"y.{suffix}")]) == 0  # and a good one


def test_write_ildg_into_a_missing_directory(tmp_path):
    from app.errors import InputError

    links = random_links((2, 2, 2, 2), seed=6)
    with pytest.raises(InputError, match="nodir does not exist"):
        write_ildg(tmp_path / "nodir" / "y.lime", links, date=DATE)
    assert list(tmp_path.iterdir()) == []
