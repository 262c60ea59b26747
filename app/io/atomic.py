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
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from mpi4py import MPI

from .errors import StorageError

TMP_MARK = ".tmp-"
#: errno values that mean "the storage cannot take this write" (not a bug of ours)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}
_STORAGE_TEXT = ("no space left", "quota exceeded", "disk quota", "input/output error")


def is_storage_error(exc: BaseException) -> bool:
    """An ``OSError`` (also h5py's, which often carries only the text) from full/quota/IO."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in STORAGE_ERRNOS:
        return True
    return any(t in str(exc).lower() for t in _STORAGE_TEXT)


def storage_error(exc: OSError, path: Path, tmp: Path | None) -> StorageError:
    """One clear :class:`StorageError` for a failed write of ``path``."""
    written = 0
    with contextlib.suppress(OSError, TypeError):
        written = os.path.getsize(tmp)
    old = 0
    with contextlib.suppress(OSError):
        old = os.path.getsize(path)
    free = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(path.parent).free
    need = max(written, old)
    reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
    return StorageError(
        f"cannot write {path}: {reason}. The write needed at least {need / 2**20:.1f} MiB "
        f"({need} bytes: the new version is written next to the old one, then renamed); "
        + (f"{free / 2**20:.1f} MiB free on its file system. " if free is not None else "")
        + "Earlier data are intact (the previous file was kept, the temporary removed); "
        "free space or raise the quota, then resume the run."
    )


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
    failure: str | None = "failed"  # this rank's failure, as text (for the other ranks)
    try:
        yield tmp
        ok, failure = True, None
    except OSError as exc:
        if is_storage_error(exc):
            err = storage_error(exc, path, tmp)
            failure = f"storage:{err}"
            raise err from None
        failure = f"other:{exc}"
        raise
    finally:
        failures = [failure] if comm is None else comm.allgather(failure)
        all_ok = all(f is None for f in failures)
        if rank == 0:
            if all_ok:
                try:
                    fsync_file(tmp)
                    os.replace(tmp, path)
                    fsync_dir(path.parent)
                except OSError as exc:
                    err = storage_error(exc, path, tmp) if is_storage_error(exc) else None
                    _remove(tmp)
                    if err is not None:
                        raise err from None
                    raise
                except BaseException:
                    _remove(tmp)
                    raise
            else:
                _remove(tmp)
        if comm is not None:
            comm.Barrier()
        if not all_ok and ok:
            # this rank succeeded but another failed: do not pretend the write happened
            storage = [f for f in failures if f and f.startswith("storage:")]
            if storage:
                raise StorageError(storage[0].removeprefix("storage:"))
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
