"""HDF5 ensembles (read back with plain h5py), crash safety of appends, and the
``convert`` / ``info`` functions across ILDG, NERSC and HDF5."""

from __future__ import annotations

import errno
import hashlib
import json

import h5py
import numpy as np
import pytest
from io_fields import configs_dir_or_skip, random_links

from app.io import gauge_stats
from app.io.convert import convert
from app.io.errors import ConfigFormatError, StorageError
from app.io.formats import detect_format
from app.io.hdf5 import EnsembleWriter, read_config, read_metadata, read_observables
from app.io.info import config_info
from app.io.lime import read_records
from app.io.nersc import read_nersc

DECK = "theory: {name: u1, beta: 2.0}\nlattice: {shape: [4, 6]}\n"


def make_writer(path, **kw) -> EnsembleWriter:
    args = dict(
        theory_name="u1",
        params={"beta": 2.0},
        lattice=(4, 6),
        sampler={"name": "hmc", "steps": 10, "flow": None},
        seed=1234,
        code_version="0.1.0",
        deck_text=DECK,
        flow_hash="abc123",
    )
    args.update(kw)
    return EnsembleWriter(path, **args)


def digest(path) -> str:
    """Hash of what a plain h5py reader sees: every dataset's shape, dtype and contents and
    every attribute (the bytes change in place; the contents must not)."""
    h = hashlib.sha256()

    def visit(name, obj):
        h.update(name.encode())
        for key in sorted(obj.attrs):
            h.update(f"{key}={obj.attrs[key]!r}".encode())
        if isinstance(obj, h5py.Dataset):
            h.update(f"{obj.shape}{obj.dtype}".encode() + obj[()].tobytes())

    with h5py.File(path, "r") as f:
        visit("/", f)
        f.visititems(visit)
    return h.hexdigest()


def test_layout_readable_with_plain_h5py(tmp_path):
    path = tmp_path / "ens.h5"
    rng = np.random.default_rng(0)
    configs = [rng.uniform(-np.pi, np.pi, size=(2, 4, 6)) for _ in range(3)]
    w = make_writer(path)
    for i, cfg in enumerate(configs):
        for t in range(10 * i, 10 * i + 10):
            w.append_observables(t, {"plaquette": 0.5 + t, "action": float(-t)})
        w.append_observables(10 * i + 9, {"topo": 1.0})  # an observable appearing late
        assert w.append_config(cfg, 10 * i + 9, first=1) == i
    w.append_observables(30, {"plaquette": 99.0})
    w.set_rng_counters({"momentum": 31, "accept": 31})
    w.close()

    with h5py.File(path, "r") as f:  # no trivhmc code below this line
        assert f.attrs["format"] == "trivhmc-ensemble"
        assert f.attrs["theory"] == "u1"
        assert list(f.attrs["lattice"]) == [4, 6]
        assert f.attrs["seed"] == 1234
        assert f.attrs["code_version"] == "0.1.0"
        assert f.attrs["flow_hash"] == "abc123"
        assert f.attrs["deck"] == DECK
        assert json.loads(f.attrs["sampler"]) == {"name": "hmc", "steps": 10, "flow": None}
        assert f["parameters"].attrs["beta"] == 2.0
        assert f["configs"].shape == (3, 2, 4, 6)
        assert f["configs"].chunks == (1, 2, 4, 6)
        assert f["configs"].compression is None
        for i, cfg in enumerate(configs):
            assert np.array_equal(f["configs"][i], cfg)
        assert list(f["config_trajectory"][:]) == [9, 19, 29]
        obs = f["observables"]
        assert list(obs["trajectory"][:]) == [
            *range(10),
            9,
            *range(10, 20),
            19,
            *range(20, 30),
            29,
            30,
        ]
        plaq = obs["plaquette"][:]
        assert plaq[0] == 0.5 and plaq[-1] == 99.0 and np.isnan(plaq[10])
        assert np.isnan(obs["topo"][0]) and obs["topo"][10] == 1.0
        assert dict(f["rng"].attrs) == {"momentum": 31, "accept": 31}

    assert np.array_equal(read_config(path, 1), configs[1])
    assert np.array_equal(read_config(path, -1), configs[2])
    with pytest.raises(IndexError, match="holds 3"):
        read_config(path, 3)
    meta = read_metadata(path)
    assert meta["n_configs"] == 3 and meta["parameters"] == {"beta": 2.0}
    assert read_observables(path)["action"][3] == -3.0


def test_compression_option(tmp_path):
    path = tmp_path / "c.h5"
    w = make_writer(path, compression="gzip")
    w.append_config(np.zeros((2, 4, 6)), 0, first=1)
    with h5py.File(path, "r") as f:
        assert f["configs"].compression == "gzip"


def test_continue_and_refuse_changed_physics(tmp_path):
    path = tmp_path / "ens.h5"
    make_writer(path).append_config(np.ones((2, 4, 6)), 5, first=1)
    w = make_writer(path, mode="a")
    w.append_config(2 * np.ones((2, 4, 6)), 6, first=1)
    assert read_metadata(path)["config_trajectory"] == [5, 6]
    with pytest.raises(ValueError, match=r"parameters differ: beta: file 2.0 != 2.2"):
        make_writer(path, mode="a", params={"beta": 2.2})
    with pytest.raises(ValueError, match=r"lattice \[4, 6\] != \[4, 4\]"):
        make_writer(path, mode="a", lattice=(4, 4))
    with pytest.raises(ValueError, match="lattice dims"):
        w.append_config(np.ones((2, 4, 4)), 7, first=1)


def test_truncate_after(tmp_path):
    path = tmp_path / "ens.h5"
    w = make_writer(path)
    for t in range(1, 7):
        w.append_observables(t, {"plaquette": float(t)})
        if t % 2 == 0:  # configs numbered by the 1-based count: record t gives t + 1
            w.append_config(np.full((2, 4, 6), float(t)), t + 1, first=1)
    w.truncate_after(3)
    obs = read_observables(path)
    assert list(obs["trajectory"]) == [1, 2, 3] and list(obs["plaquette"]) == [1.0, 2.0, 3.0]
    assert read_metadata(path)["config_trajectory"] == [3]


@pytest.mark.parametrize(
    "failure", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("killed")]
)
def test_failed_append_keeps_earlier_configs(tmp_path, monkeypatch, failure):
    path = tmp_path / "ens.h5"
    w = make_writer(path)
    w.append_config(np.ones((2, 4, 6)), 1, first=1)
    before = digest(path)
    original = EnsembleWriter._write_pending

    def fail_midway(self, f, n0):
        original(self, f, n0)  # the new config and rows are already in the file, uncommitted
        raise failure

    monkeypatch.setattr(EnsembleWriter, "_write_pending", fail_midway)
    w.append_observables(2, {"plaquette": 0.1})
    expected = StorageError if isinstance(failure, OSError) else type(failure)
    with pytest.raises(expected):
        w.append_config(np.zeros((2, 4, 6)), 2, first=1)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.h5"]
    assert np.array_equal(read_config(path, -1), np.ones((2, 4, 6)))


# ------------------------------------------------------------------ convert and info
def test_convert_round_trip_between_formats(tmp_path):
    src = configs_dir_or_skip() / "ildg.l8t4b3360"
    links, _ = read_nersc(configs_dir_or_skip() / "nersc.l8t4b3360")
    h5 = tmp_path / "a.h5"
    nersc = tmp_path / "b.nersc"
    lime = tmp_path / "c.lime"
    assert convert(src, h5) == "hdf5"
    assert convert(h5, nersc) == "nersc"
    assert convert(nersc, lime) == "ildg"
    assert [detect_format(p) for p in (h5, nersc, lime)] == ["hdf5", "nersc", "ildg"]
    ildg_links = read_config(h5, 0)
    np.testing.assert_allclose(ildg_links, links, rtol=0, atol=2e-15)
    for path in (h5, nersc, lime):
        info = config_info(path)
        assert info["lattice"] == [8, 8, 8, 4]
        assert info["plaquette"] == pytest.approx(0.503866446949594, abs=1e-12)
        assert info["plaquette_spatial"] == pytest.approx(0.502524597593524, abs=1e-12)
        assert info["link_trace"] == pytest.approx(0.005406083857887, abs=1e-12)
        json.dumps(info)
    assert config_info(lime)["checksum"]["status"] == "ok"
    assert config_info(nersc)["checksum"]["status"] == "ok"
    with pytest.raises(ValueError, match="target format"):
        convert(src, tmp_path / "noext")


def test_convert_single_precision_and_refuse_non_su3(tmp_path):
    links = random_links((2, 2, 2, 2), seed=4)
    h5 = tmp_path / "su3.h5"
    w = make_writer(h5, theory_name="su3", lattice=(2, 2, 2, 2))
    w.append_config(links, 3, first=1)
    out = tmp_path / "s.lime"
    convert(h5, out, precision="single")
    info = config_info(out)
    assert info["precision"] == "single"
    assert info["plaquette"] == pytest.approx(gauge_stats.plaquette(links).total, abs=1e-6)
    u1 = tmp_path / "u1.h5"
    make_writer(u1).append_config(np.zeros((2, 4, 6)), 0, first=1)
    with pytest.raises(ConfigFormatError, match="not an SU\\(3\\) gauge field"):
        convert(u1, tmp_path / "x.lime")
    assert config_info(u1)["theory"] == "u1" and "plaquette" not in config_info(u1)


def test_info_reports_checksum_mismatch(tmp_path):
    links = random_links((2, 2, 2, 2), seed=6)
    h5 = tmp_path / "su3.h5"
    make_writer(h5, theory_name="su3", lattice=(2, 2, 2, 2)).append_config(links, 0, first=1)
    path = tmp_path / "x.lime"
    convert(h5, path)
    rec = next(r for r in read_records(path) if r.type == "ildg-binary-data")
    data = bytearray(path.read_bytes())
    data[rec.offset + 100] ^= 1
    path.write_bytes(bytes(data))
    info = config_info(path)
    assert info["checksum"]["status"] == "mismatch"
    assert info["checksum"]["file"] != info["checksum"]["computed"]


def test_stale_temporaries_of_a_killed_writer_are_reclaimed(tmp_path):
    path = tmp_path / "ens.h5"
    w = make_writer(path)
    w.append_config(np.ones((2, 4, 6)), 1, first=1)
    stale = tmp_path / ".ens.h5.tmp-4242-deadbeef"  # what SIGKILL during an update leaves
    stale.write_bytes(path.read_bytes())
    make_writer(path, mode="a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.h5"]
