"""Atomic file replacement: write to a temporary name, fsync, rename, fsync the directory.

A reader of ``path`` sees either the previous complete file or the new complete file, never a
partial one. If the writer fails (an exception, a full disk: ``OSError(ENOSPC)``), the
temporary file is removed and the previous ``path`` is left untouched. A process killed with
SIGKILL may leave a stale ``.<name>.tmp-*`` file next to ``path`` but never a damaged ``path``;
:func:`remove_stale_temporaries` cleans those up.

With an MPI communicator every rank gets the same temporary name (chosen on rank 0), so the
ranks can write it collectively (MPI-IO); the rename happens on rank 0 only if every rank
finished without an exception.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from mpi4py import MPI

TMP_MARK = ".tmp-"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush the file's data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename/creation inside directory ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, comm: MPI.Comm | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The caller creates and writes the temporary file by any means (``open``, h5py, MPI-IO)
    and closes it before the ``with`` block ends. On normal exit the file is fsynced and
    renamed onto ``path`` and the directory fsynced. On an exception (on any rank, when
    ``comm`` is given) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    rank = 0 if comm is None else comm.Get_rank()
    tmp = _tmp_name(path) if rank == 0 else None
    if comm is not None:
        tmp = comm.bcast(tmp, root=0)
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        all_ok = ok if comm is None else bool(comm.allreduce(int(ok), op=MPI.MIN))
        if rank == 0:
            if all_ok:
                try:
                    fsync_file(tmp)
                    os.replace(tmp, path)
                    fsync_dir(path.parent)
                except BaseException:
                    _remove(tmp)
                    raise
            else:
                _remove(tmp)
        if comm is not None:
            comm.Barrier()
        if not all_ok and ok:
            # this rank succeeded but another failed: do not pretend the write happened
            raise OSError(f"writing {path} failed on another rank; previous file kept")


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], mode: str = "wb"
) -> None:
    """Write ``path`` atomically with ``write(f)`` on an open temporary file (serial)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` atomically by ``data``."""
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files left next to ``path`` by killed writers; return what was removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}{TMP_MARK}*"))
    for p in stale:
        _remove(p)
    return stale
