"""The configuration files of other codes (../shared/data/configs) parsed byte by byte with an
independent LIME/NERSC parser (tests/independent_reference.py), against their README values,
their own checksum records and headers, and the application's readers; NERSC files in every
supported variant written here by hand (2-row and 3x3, 32/64 bit, big/little endian) read
by the application; ILDG and NERSC files the application writes, parsed independently.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from independent_reference import (
    ildg_links,
    plaquette_and_trace,
    rand_su3,
    scidac_checksum,
    xml_number,
)
from io_fields import configs_dir_or_skip

from app.io.ildg import read_ildg, write_ildg
from app.io.nersc import read_nersc, write_nersc

#: file -> (plaquette, spatial, temporal, link trace or None, suma, sumb), from the README
EXPECTED = {
    "weak_field.lime": (
        0.9948041322666998, 0.9947985783413031, 0.9948096861920964, None, 0xA2C41090, 0x11193C39
    ),
    "unity.lime": (1.0, 1.0, 1.0, 1.0, 0x35B49A1B, 0xB49A1B35),
    "ildg.l8t4b3360": (
        0.503866446949594, 0.502524597593524, 0.505208296305664, 0.005406083857887,
        0x10D0EA1A, 0xA6A1B3B8,
    ),
}  # fmt: skip


def _nersc(path):
    data = open(path, "rb").read()
    end = data.index(b"END_HEADER\n") + len(b"END_HEADER\n")
    header = dict(re.findall(r"^\s*(\S+)\s*=\s*(.*?)\s*$", data[:end].decode(), re.M))
    return header, data[end:]


def _word_sum(body: bytes, order: str) -> int:
    return int(np.frombuffer(body, dtype=f"{order}u4").astype(np.uint64).sum() & 0xFFFFFFFF)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_ildg_files_of_other_codes(name):
    path = configs_dir_or_skip() / name
    links, dims, raw, records = ildg_links(path)
    plaq, spatial, temporal, trace, suma, sumb = EXPECTED[name]
    got = plaquette_and_trace(links)
    np.testing.assert_allclose(got[:3], (plaq, spatial, temporal), rtol=0, atol=1e-13)
    if trace is not None:
        assert got[3] == pytest.approx(trace, abs=1e-13)
    assert np.abs(links @ np.conj(np.swapaxes(links, -1, -2)) - np.eye(3)).max() < 1e-13
    # the file's own checksum record, our own CRC, and the reader's
    text = records["scidac-checksum"].decode(errors="replace")
    stated = tuple(int(xml_number(text, k), 16) for k in ("suma", "sumb"))
    assert stated == (suma, sumb) == scidac_checksum(raw, int(np.prod(dims)))
    if "xlf-info" in records:  # tmLQCD states its plaquette in the xlf-info record
        stated_plaq = re.search(rb"plaquette\s*=\s*([0-9.eE+-]+)", records["xlf-info"])
        assert float(stated_plaq.group(1)) == pytest.approx(got[0], abs=1e-12)
    app_links, info = read_ildg(path)
    np.testing.assert_array_equal(app_links, links)
    assert info.lattice == dims
    assert info.checksum_file == info.checksum_data == (suma, sumb)


def test_nersc_file_of_another_code():
    path = configs_dir_or_skip() / "nersc.l8t4b3360"
    header, body = _nersc(path)
    dims = tuple(int(header[f"DIMENSION_{i}"]) for i in range(1, 5))
    assert header["DATATYPE"] == "4D_SU3_GAUGE_3x3" and header["FLOATING_POINT"] == "IEEE64BIG"
    links = np.transpose(
        np.frombuffer(body, ">c16").reshape(*dims[::-1], 4, 3, 3), (4, 3, 2, 1, 0, 5, 6)
    )
    plaq, _, _, trace = plaquette_and_trace(links)
    assert plaq == pytest.approx(float(header["PLAQUETTE"]), abs=1e-10)
    assert trace == pytest.approx(float(header["LINK_TRACE"]), abs=1e-12)
    assert _word_sum(body, ">") == int(header["CHECKSUM"], 16)
    app_links, info = read_nersc(path)
    np.testing.assert_array_equal(app_links, links)
    assert info.checksum_status == "ok"
    ildg, _, _, _ = ildg_links(configs_dir_or_skip() / "ildg.l8t4b3360")
    assert np.abs(links - ildg).max() < 2e-15  # the same configuration, written twice


@pytest.mark.parametrize("datatype", ["4D_SU3_GAUGE", "4D_SU3_GAUGE_3x3"])
@pytest.mark.parametrize("fp", ["IEEE64BIG", "IEEE64LITTLE", "IEEE32BIG", "IEEE32LITTLE"])
def test_hand_written_nersc_variants(tmp_path, datatype, fp):
    dims = (4, 2, 6, 8)
    u = rand_su3(np.random.default_rng(9), (4, *dims), scale=0.9)
    order = ">" if fp.endswith("BIG") else "<"
    dtype = f"{order}c{16 if fp.startswith('IEEE64') else 8}"
    rows = 2 if datatype == "4D_SU3_GAUGE" else 3
    data = np.ascontiguousarray(np.transpose(u, (4, 3, 2, 1, 0, 5, 6))[..., :rows, :], dtype)
    stored = data.astype(complex)
    if rows == 2:  # third row = conj(row 0 x row 1)
        third = np.conj(np.cross(stored[..., 0, :], stored[..., 1, :]))
        stored = np.concatenate([stored, third[..., None, :]], axis=-2)
    links = np.transpose(stored, (4, 3, 2, 1, 0, 5, 6))
    plaq, _, _, trace = plaquette_and_trace(links)
    text = (
        f"BEGIN_HEADER\nHDR_VERSION = 1.0\nDATATYPE = {datatype}\n"
        + "".join(f"DIMENSION_{i + 1} = {n}\n" for i, n in enumerate(dims))
        + f"LINK_TRACE = {trace:.10f}\nPLAQUETTE = {plaq:.10f}\n"
        + f"CHECKSUM = {_word_sum(data.tobytes(), order):x}\nFLOATING_POINT = {fp}\nEND_HEADER\n"
    )
    path = tmp_path / "cfg.nersc"
    path.write_bytes(text.encode() + data.tobytes())
    got, info = read_nersc(path)
    np.testing.assert_array_equal(got, links)
    assert info.checksum_status == "ok"


@pytest.mark.parametrize("precision", ["double", "single"])
def test_files_we_write_parse_independently(tmp_path, precision):
    dims = (4, 6, 2, 8)
    u = rand_su3(np.random.default_rng(5), (4, *dims), scale=0.8)
    plaq, _, _, trace = plaquette_and_trace(u)
    write_ildg(tmp_path / "a.lime", u, precision=precision)
    links, got_dims, raw, records = ildg_links(tmp_path / "a.lime")
    assert got_dims == dims
    np.testing.assert_allclose(links, u, rtol=0, atol=1e-15 if precision == "double" else 1e-7)
    text = records["scidac-checksum"].decode()
    stated = tuple(int(xml_number(text, k), 16) for k in ("suma", "sumb"))
    assert stated == scidac_checksum(raw, int(np.prod(dims)))
    info = records["scidac-record-xml"].decode()
    assert float(xml_number(info, "plaq")) == pytest.approx(plaq, abs=1e-9)
    assert float(xml_number(info, "linktr")) == pytest.approx(trace, abs=1e-9)
    if precision == "double":
        write_nersc(tmp_path / "a.nersc", u)
        header, body = _nersc(tmp_path / "a.nersc")
        assert _word_sum(body, ">") == int(header["CHECKSUM"], 16)
        assert float(header["PLAQUETTE"]) == pytest.approx(plaq, abs=1e-14)
        assert float(header["LINK_TRACE"]) == pytest.approx(trace, abs=1e-14)
        got = np.frombuffer(body, ">c16").reshape(*dims[::-1], 4, 3, 3)
        np.testing.assert_array_equal(np.transpose(got, (4, 3, 2, 1, 0, 5, 6)), u)
