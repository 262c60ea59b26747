"""Atomic writes: a failure mid-write (exception, full disk) leaves the previous file intact
and no temporary file behind; this holds for the ILDG (MPI-IO) and NERSC writers too."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from io_fields import random_links
from mpi4py import MPI

from app.io import atomic, ildg, nersc
from app.io.atomic import atomic_path, atomic_write, atomic_write_bytes, remove_stale_temporaries
from app.io.errors import StorageError

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_replaces_content(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    atomic_write(path, lambda f: f.write(b"new content"))
    assert path.read_bytes() == b"new content"
    assert names(tmp_path) == ["f.bin"]


@pytest.mark.parametrize(
    "failure,raised", [(ENOSPC, StorageError), (RuntimeError("boom"), RuntimeError)]
)
def test_failure_in_callback_keeps_previous(tmp_path, failure, raised):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"previous")

    def write(f):
        f.write(b"partial data that must never be seen")
        raise failure

    with pytest.raises(raised) as err:
        atomic_write(path, write)
    if raised is StorageError:  # one clear message: the file, the space needed and free
        assert str(path) in str(err.value) and "No space left on device" in str(err.value)
        assert "bytes" in str(err.value) and "MiB free" in str(err.value)
    assert path.read_bytes() == b"previous"
    assert names(tmp_path) == ["f.bin"]


def test_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(StorageError):
        with atomic_path(tmp_path / "new.h5") as tmp:
            tmp.write_bytes(b"half")
            raise ENOSPC
    assert names(tmp_path) == []


def test_temporary_is_in_the_same_directory(tmp_path):
    path = tmp_path / "x.lime"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.lime.tmp-")
        tmp.write_bytes(b"1")
        assert not path.exists()
    assert path.read_bytes() == b"1"


def test_remove_stale_temporaries(tmp_path):
    path = tmp_path / "cfg.lime"
    path.write_bytes(b"keep")
    stale = tmp_path / ".cfg.lime.tmp-123-abcd"
    stale.write_bytes(b"left by a killed writer")
    (tmp_path / ".other.tmp-1").write_bytes(b"not ours")
    assert remove_stale_temporaries(path) == [stale]
    assert names(tmp_path) == [".other.tmp-1", "cfg.lime"]


class _FullDiskFile:
    """An MPI file whose collective payload write fails (the metadata got written)."""

    def __init__(self, fh):
        self._fh = fh

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def Write_all(self, buf):  # noqa: N802 - MPI name
        raise ENOSPC


class _MPIWithFullDisk:
    def __getattr__(self, name):
        return getattr(MPI, name)

    class File:
        @staticmethod
        def Open(*args, **kwargs):  # noqa: N802 - MPI name
            return _FullDiskFile(MPI.File.Open(*args, **kwargs))


def test_ildg_write_failure_keeps_previous_config(tmp_path, monkeypatch):
    path = tmp_path / "cfg.lime"
    old = random_links((2, 2, 2, 2), seed=1)
    ildg.write_ildg(path, old)
    before = path.read_bytes()
    monkeypatch.setattr(ildg, "MPI", _MPIWithFullDisk())
    with pytest.raises(StorageError, match="No space left"):
        ildg.write_ildg(path, random_links((2, 2, 2, 2), seed=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert names(tmp_path) == ["cfg.lime"]
    back, info = ildg.read_ildg(path)
    assert np.array_equal(back, old) and info.checksum_status == "ok"


def test_nersc_write_failure_keeps_previous_config(tmp_path, monkeypatch):
    path = tmp_path / "cfg.nersc"
    old = random_links((2, 2, 2, 2), seed=3)
    nersc.write_nersc(path, old)
    before = path.read_bytes()

    def disk_fills_during_payload(target, write, mode="wb"):
        def wrapped(f):
            calls = []

            class Proxy:
                def write(self, data):
                    calls.append(len(data))
                    if len(calls) == 2:  # header went through, the payload does not fit
                        f.write(data[: len(data) // 3])
                        raise ENOSPC
                    return f.write(data)

            write(Proxy())

        atomic.atomic_write(target, wrapped, mode)

    monkeypatch.setattr(nersc, "atomic_write", disk_fills_during_payload)
    with pytest.raises(StorageError, match="No space left"):
        nersc.write_nersc(path, random_links((2, 2, 2, 2), seed=4))
    assert path.read_bytes() == before
    assert names(tmp_path) == ["cfg.nersc"]
