"""HDF5 ensemble files: configurations, per-trajectory observables and run metadata.

Layout (readable with plain h5py; documented in docs/formats.md)::

    /                       attrs: format="trivhmc-ensemble", format_version, theory,
                                   lattice (int array), sampler (JSON), sampler_name, seed,
                                   code_version, flow_hash ("" if none), deck (text),
                                   params (JSON), created (ISO 8601 UTC)
    /parameters             attrs: one per coupling (e.g. beta)
    /configs                (n_configs, *global field shape), chunked one config per chunk,
                            resizable; attrs: first (array dim of lattice axis 0 in a config)
    /config_trajectory      (n_configs,) int64: number of each stored config, the 1-based
                            trajectory count (the config saved after record ``n`` is
                            ``n + 1``, as the ILDG/NERSC file names; format_version >= 3).
                            Versions 1, 2 stored the 0-based record number; the readers
                            here return the count for every version (:func:`config_numbers`)
    /config_checksum        (n_configs, 2) uint32: SciDAC (suma, sumb) of each config (see
                            :func:`field_checksum`; for SU(3) it equals the checksum of the
                            double-precision ILDG file of the same field)
    /observables/trajectory (n_rows,) int64
    /observables/<name>     (n_rows,) float64, NaN where a row lacks the observable
    /rng                    attrs: the RNG counters (name -> int)
    / attrs ``committed``   int64 [n_configs, n_rows]: the commit marker (see Durability)

Configurations are stored in the global lattice order of the in-memory convention (e.g.
SU(3): ``(4, Lx, Ly, Lz, Lt, 3, 3)``). A distributed field is gathered to the root rank of
its domain group, which alone touches the file (h5py without parallel HDF5).

Durability: the datasets grow in place (chunked, unlimited first axis), so a save costs O(1)
in the ensemble length. With ``atomic=True`` (default) each update is a two-phase commit:
(1) the new rows (config, trajectory, checksum, buffered observables) are written past the
committed ones, ``H5Fflush`` + ``fsync``; (2) the root attribute ``committed`` =
``[n_configs, n_rows]`` and the RNG counters are written, ``H5Fflush`` + ``fsync``. Only the
first ``committed`` rows are valid: the readers here use only those, and a writer opened
with ``mode="a"`` (resume) cuts a tail left by a crash back to them and verifies the last
committed configuration against its checksum. A failed update (full disk, I/O error) is
rolled back the same way at once. ``atomic=False`` skips the fsyncs (fast, no crash
guarantee). Plain h5py readers see exactly the committed rows, except after a crash
before the next resume (then read ``committed``). Limits (measured, docs/formats.md):
HDF5 has no journal, so a kill in the middle of an ``H5Fflush`` can in principle leave
damaged metadata; opening such a file raises :class:`EnsembleDamagedError` naming it.
Files written before the marker existed (no ``committed``) count every row as committed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from app.errors import InputError
from parallel import ProcessGrid, gather_to_root

from .atomic import atomic_path, is_storage_error, remove_stale_temporaries
from .collective import on_root
from .errors import (
    ChecksumError,
    ConfigFormatError,
    InvalidFieldError,
    MissingChecksumWarning,
    StorageError,
)
from .scidac_checksum import format_checksum, scidac_checksum
from .validate import check_finite, check_links

FORMAT = "trivhmc-ensemble"
FORMAT_VERSION = 3  # 2: the ``committed`` marker (version 1 files are read as fully committed)
#: 3: ``config_trajectory`` holds the 1-based trajectory count (1, 2: the 0-based record)
COUNT_NUMBERING = 3
COMMITTED = "committed"
#: free space required beyond the bytes of one update before it is started
SPACE_MARGIN = 1 << 20


class EnsembleDamagedError(ConfigFormatError):
    """An ensemble file cannot be opened by HDF5 (its metadata is damaged)."""


class EnsembleBusyError(InputError):
    """An ensemble file is locked by another process for longer than the writer waits."""


#: how long a writer waits for a file locked by another process (seconds, with backoff)
LOCK_WAIT_S = 60.0


def _is_lock_conflict(exc: OSError) -> bool:
    """True when HDF5 could not take its file lock (another process has the file open)."""
    text = str(exc).lower()
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in text


def _open_h5(path: str | os.PathLike, mode: str) -> h5py.File:
    """``h5py.File``: readers without HDF5's file lock, writers waiting for other holders.

    A reader (``mode="r"``) takes no lock, so ``trivhmc analyze``/``info``/``measure`` on a
    running run never makes the run's next update fail; what it reads is safe because only
    the committed rows count (see Durability). A writer whose file is locked by another
    process (an external tool holding it open) retries for :data:`LOCK_WAIT_S` seconds.
    """
    if mode == "r":
        for delay in (0.2, 0.5, None):  # a writer's update in flight: look again shortly
            try:
                return h5py.File(path, "r", locking=False)
            except OSError as exc:
                if "locking flag" in str(exc):  # open in this process with the lock
                    return h5py.File(path, "r")
                if delay is None or isinstance(exc, FileNotFoundError) or is_storage_error(exc):
                    raise
            time.sleep(delay)
    delay, waited = 0.05, 0.0
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as exc:
            if not _is_lock_conflict(exc) or waited >= LOCK_WAIT_S:
                raise
        time.sleep(delay)
        waited += delay
        delay = min(2 * delay, 2.0)


@contextlib.contextmanager
def open_ensemble(path: str | os.PathLike, mode: str = "r"):
    """``h5py.File(path, mode)`` (readers without a file lock, writers waiting for one); a
    file HDF5 cannot open raises :class:`EnsembleDamagedError` naming it (a missing file keeps
    ``FileNotFoundError``; a lock held elsewhere for longer than :data:`LOCK_WAIT_S` raises
    :class:`EnsembleBusyError`)."""
    if mode == "r" and not os.path.exists(path):
        raise FileNotFoundError(f"no such ensemble file: {path}")
    try:
        f = _open_h5(path, mode)
    except OSError as exc:
        if is_storage_error(exc) or isinstance(exc, FileNotFoundError):
            raise
        if _is_lock_conflict(exc):
            raise EnsembleBusyError(
                f"cannot open HDF5 ensemble {path} for writing: another process has held it "
                f"open with a lock for {LOCK_WAIT_S:.0f} s (an HDF5 tool or a program that "
                "opened it with h5py's default locking); close it and run again (trivhmc's "
                "own readers take no lock)"
            ) from None
        raise EnsembleDamagedError(
            f"cannot open HDF5 ensemble {path}: {str(exc).splitlines()[0]}. The file is not "
            "HDF5 or its HDF5 metadata is damaged (e.g. the process was killed while HDF5 "
            "flushed its metadata, docs/formats.md 'Durability'); h5py cannot read it"
        ) from exc
    with f:
        yield f


def committed_counts(f: h5py.File) -> tuple[int, int]:
    """``(n_configs, n_rows)`` committed in an open ensemble file (the valid rows); an HDF5
    file without the ensemble layout (e.g. a checkpoint) raises :class:`ConfigFormatError`."""
    obs = f.get("observables")
    if "config_trajectory" not in f or not isinstance(obs, h5py.Group) or "trajectory" not in obs:
        kind = f.attrs.get("format", "")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        raise ConfigFormatError(
            f"{f.filename} is not a {FORMAT} file"
            + (f" (its format attribute says {kind!r})" if kind else "")
            + ": it has no config_trajectory / observables/trajectory datasets"
        )
    n_cfg = int(f["config_trajectory"].shape[0])
    n_obs = int(f["observables"]["trajectory"].shape[0])
    if COMMITTED in f.attrs:
        c = [int(x) for x in np.asarray(f.attrs[COMMITTED]).ravel()]
        if len(c) != 2 or not (0 <= c[0] <= n_cfg and 0 <= c[1] <= n_obs):
            raise EnsembleDamagedError(
                f"{f.filename}: commit marker {c} is inconsistent with the stored "
                f"{n_cfg} configurations and {n_obs} observable rows"
            )
        return c[0], c[1]
    return n_cfg, n_obs


def numbering_shift(f: h5py.File) -> int:
    """What to add to a stored ``config_trajectory`` to get the 1-based trajectory count:
    0 for format_version >= 3, 1 for older files (they stored the 0-based record number)."""
    return 0 if int(f.attrs.get("format_version", 1)) >= COUNT_NUMBERING else 1


def config_numbers(f: h5py.File) -> np.ndarray:
    """The committed configurations' numbers as 1-based trajectory counts (any version)."""
    n_cfg = committed_counts(f)[0]
    return f["config_trajectory"][:n_cfg] + numbering_shift(f)


def committed_rows(f: h5py.File) -> tuple[int | None, int | None]:
    """``(n_configs, n_rows)`` to read from an open HDF5 file: the committed counts of a
    trivhmc ensemble (a crash's uncommitted tail excluded), ``None`` (all rows) for the parts
    a file without that layout lacks."""
    obs = f.get("observables")
    if "config_trajectory" in f and isinstance(obs, h5py.Group) and "trajectory" in obs:
        return committed_counts(f)
    return None, None


def read_configs(
    path: str | os.PathLike, local: tuple[slice, ...] = (), default_first: int = 0
) -> np.ndarray:
    """The committed configurations of an ensemble, ``(n, *field)`` (or of each the block
    ``local`` of the lattice dims, e.g. a rank's ``grid.local_slices()``; the lattice dims
    start at the ``configs`` attribute ``first``, else ``default_first``). Rows past the commit
    marker (left by a crash before the next resume) are not read. No checksum check (a block
    cannot be checked; :func:`read_config` checks whole configurations)."""
    with open_ensemble(path, "r") as f:
        if "configs" not in f:
            raise ConfigFormatError(f"{path} holds no configurations")
        ds = f["configs"]
        n = committed_counts(f)[0]
        first = int(ds.attrs.get("first", default_first))
        block = (slice(None),) * first + tuple(local) if local else ()
        return np.asarray(ds[(slice(0, n), *block)])


def _config_datasets(f: h5py.File) -> list[h5py.Dataset]:
    return [f[name] for name in ("configs", "config_trajectory", "config_checksum") if name in f]


def _resize_to(f: h5py.File, n_cfg: int, n_obs: int) -> bool:
    """Cut every dataset back to the committed rows; True if something was cut."""
    cut = False
    for ds in _config_datasets(f):
        if ds.shape[0] > n_cfg:
            ds.resize(n_cfg, axis=0)
            cut = True
    for ds in f["observables"].values():
        if ds.shape[0] > n_obs:
            ds.resize(n_obs, axis=0)
            cut = True
    return cut


def _dataset_names(f: h5py.Group, prefix: str = "") -> set[str]:
    """Paths of the datasets under ``f``, walking the links (``visititems`` asks HDF5 for
    every object's full info, which walks the chunk index of a dataset: ~80 ms per save at
    10^5 configurations)."""
    names: set[str] = set()
    for key in f.keys():
        obj = f[key]
        if isinstance(obj, h5py.Dataset):
            names.add(prefix + key)
        elif isinstance(obj, h5py.Group):
            names |= _dataset_names(obj, f"{prefix}{key}/")
    return names


def _fsync_h5(f: h5py.File) -> None:
    """``H5Fflush`` and fsync of the file's descriptor (sec2 driver)."""
    f.flush()
    fd = f.id.get_vfd_handle()
    if isinstance(fd, int):
        os.fsync(fd)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _attr_value(value: Any) -> Any:
    """A value h5py can store as an attribute (None -> not stored)."""
    if isinstance(value, bool | int | float | str | np.generic):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        return np.asarray(value)
    return _json(value)


def field_checksum(config: np.ndarray, first: int, ndim: int) -> tuple[int, int]:
    """SciDAC (QIO) checksum ``(suma, sumb)`` of one configuration in global order.

    Sites in ILDG order (x fastest, the last lattice axis slowest), each site's record being
    all its values (the non-lattice dims in array order) as big-endian float64 (complex128
    for complex fields). For SU(3) links ``(4, Lx, Ly, Lz, Lt, 3, 3)`` this is byte for byte
    the payload of a double-precision ILDG file, so the checksums agree."""
    config = np.asarray(config)
    lat = list(range(first, first + ndim))
    perm = lat[::-1] + [d for d in range(config.ndim) if d not in lat]
    dtype = ">c16" if np.iscomplexobj(config) else ">f8"
    nsites = int(np.prod([config.shape[d] for d in lat], dtype=np.int64))
    sites = np.ascontiguousarray(np.transpose(config, perm), dtype=dtype).reshape(nsites, -1)
    return scidac_checksum(sites.view(np.uint8), np.arange(nsites, dtype=np.int64))


def _checksum_dataset(f: h5py.File) -> h5py.Dataset:
    """``/config_checksum``, created (and filled for configs stored without one) if missing."""
    if "config_checksum" in f:
        return f["config_checksum"]
    n = f["configs"].shape[0] if "configs" in f else 0
    ds = f.create_dataset("config_checksum", (n, 2), np.uint32, maxshape=(None, 2), chunks=(256, 2))
    ds.attrs["algorithm"] = (
        "SciDAC/QIO suma,sumb: CRC32 per site (ILDG order, x fastest; big-endian float64 or "
        "complex128 site record), rotated by site index mod 29 / mod 31, XOR-reduced"
    )
    if n:
        first = int(f["configs"].attrs.get("first", 0))
        ndim = len(f.attrs["lattice"])
        for i in range(n):
            ds[i] = field_checksum(f["configs"][i], first, ndim)
    return ds


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class EnsembleWriter:
    """Append configurations and per-trajectory observables to an HDF5 ensemble file.

    ``mode="w"`` creates (replaces) the file; ``mode="a"`` continues an existing one and
    refuses (``ValueError``) when theory, parameters or lattice differ from the file's. With
    a ``grid`` only its root rank touches the file, but the constructor, :meth:`append_config`
    (a gather), :meth:`flush`, :meth:`close` and :meth:`truncate_after` are collective over
    ``grid.cart``: every rank calls them and an error on the root is raised on every rank.
    :meth:`append_observables` and :meth:`set_rng_counters` only buffer (on the root).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        theory_name: str,
        params: Mapping[str, Any],
        lattice: Sequence[int],
        sampler: Mapping[str, Any] | str,
        seed: int | None,
        code_version: str,
        deck_text: str = "",
        flow_hash: str | None = None,
        *,
        grid: ProcessGrid | None = None,
        compression: str | None = None,
        mode: str = "w",
        atomic: bool = True,
    ) -> None:
        self.path = Path(path)
        self.grid = grid
        self.compression = compression
        self.atomic = atomic
        self.lattice = tuple(int(n) for n in lattice)
        self.theory_name = str(theory_name)
        self.params = dict(params)
        self._rows: list[tuple[int, dict[str, float]]] = []
        self._rng: dict[str, int] | None = None
        self._shift = 0  # numbering_shift of the file (continued old files keep theirs)
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' or 'a', got {mode!r}")
        sampler_d = {"name": sampler} if isinstance(sampler, str) else dict(sampler)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "theory": self.theory_name,
            "lattice": np.asarray(self.lattice, dtype=np.int64),
            "sampler": _json(sampler_d),
            "sampler_name": str(sampler_d.get("name", "")),
            "code_version": str(code_version),
            "flow_hash": "" if flow_hash is None else str(flow_hash),
            "deck": str(deck_text),
            "params": _json(self.params),
        }
        if seed is not None:
            meta["seed"] = int(seed)
        self._collective(lambda: self._open(mode, meta))

    def _open(self, mode: str, meta: dict[str, Any]) -> None:
        # copies left by a writer killed mid-update (the output directory is locked to one
        # run, app/lock.py): reclaim their space
        remove_stale_temporaries(self.path)
        if mode == "w":
            meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

            def create(f: h5py.File) -> None:
                f.attrs.update(meta)
                g = f.create_group("parameters")
                for key, value in self.params.items():
                    if value is not None:
                        g.attrs[key] = _attr_value(value)
                obs = f.create_group("observables")
                obs.create_dataset("trajectory", (0,), np.int64, maxshape=(None,), chunks=(1024,))
                f.create_dataset(
                    "config_trajectory", (0,), np.int64, maxshape=(None,), chunks=(64,)
                )
                f.create_group("rng")

                f.attrs[COMMITTED] = np.zeros(2, np.int64)

            with atomic_path(self.path) as tmp:  # an empty file: O(1)
                with h5py.File(tmp, "w") as f:
                    create(f)
        else:
            self._check_compatible(meta)
            self._repair()
            with open_ensemble(self.path, "r") as f:
                self._shift = numbering_shift(f)

    def _repair(self) -> None:
        """Cut a tail left by a crash back to the commit marker; verify the last config."""
        with open_ensemble(self.path, "r") as f:
            n_cfg, n_obs = committed_counts(f)
            tail = _config_datasets(f) + list(f["observables"].values())
            needs_cut = any(
                ds.shape[0] > (n_obs if ds.parent.name == "/observables" else n_cfg) for ds in tail
            )
            last = None
            if n_cfg and "configs" in f and "config_checksum" in f:
                last = config_checksum_status(f, n_cfg - 1, f["configs"][n_cfg - 1])
        if last is not None and last["status"] == "mismatch":
            raise ChecksumError(
                f"cannot continue ensemble {self.path}: its last committed configuration "
                f"({n_cfg - 1}) does not match its SciDAC checksum (damaged file)"
            )
        if needs_cut:
            with open_ensemble(self.path, "a") as f:
                _resize_to(f, n_cfg, n_obs)
                self._sync(f)

    # ------------------------------------------------------------------ helpers
    @property
    def is_writer(self) -> bool:
        """True on the rank that writes the file (the domain root, or without a grid)."""
        return self.grid is None or self.grid.is_root

    def _collective(self, fn, grid: ProcessGrid | None = None):
        """Run ``fn`` on the writer; with a grid, raise its errors on every rank."""
        grid = self.grid if grid is None else grid
        if grid is None:
            return fn()
        return on_root(fn, grid.cart, broadcast=False)

    def _sync(self, f: h5py.File) -> None:
        if self.atomic:
            _fsync_h5(f)
        else:
            f.flush()

    def _check_space(self, nbytes: int) -> None:
        """Refuse (:class:`StorageError`, file untouched) an update the disk cannot take."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        need = nbytes + SPACE_MARGIN
        if free < need:
            raise self._storage_error(OSError(errno.ENOSPC, ""), need, free, started=False)

    def _storage_error(
        self, exc: OSError, need: int, free: int | None = None, started: bool = True
    ) -> StorageError:
        if free is None:
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(self.path.parent).free
        reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
        return StorageError(
            f"cannot write {self.path}: {reason}. The update needed about "
            f"{need / 2**20:.1f} MiB ({need} bytes, appended in place); "
            + (f"{free / 2**20:.1f} MiB free on its file system. " if free is not None else "")
            + (
                "Earlier data are intact (the partial update was rolled back to the last commit); "
                if started
                else "Nothing was written; "
            )
            + "free space or raise the quota, then resume the run."
        )

    def _update(self, fn, nbytes: int = 0) -> None:
        """Two-phase in-place update: ``fn(f, n_cfg, n_obs) -> (n_cfg', n_obs')`` writes rows
        past the committed ones (flushed, fsynced), then the commit marker (flushed, fsynced).
        On an error the uncommitted rows are cut off again; storage errors become
        :class:`StorageError`."""
        self._check_space(nbytes)
        known: set[str] | None = None
        try:
            with open_ensemble(self.path, "a") as f:
                n_cfg, n_obs = committed_counts(f)
                _resize_to(f, n_cfg, n_obs)
                known = _dataset_names(f)
                new = fn(f, n_cfg, n_obs)
                self._sync(f)
                f.attrs[COMMITTED] = np.asarray(new, np.int64)
                if self._rng is not None:
                    f["rng"].attrs.update(self._rng)
                self._sync(f)
        except BaseException as exc:
            self._rollback(known)
            if (
                isinstance(exc, OSError)
                and not isinstance(exc, StorageError)
                and is_storage_error(exc)
            ):
                raise self._storage_error(exc, nbytes) from None
            raise

    def _rollback(self, known: set[str] | None) -> None:
        """Best effort: cut uncommitted rows after a failed update (resume also does it) and
        delete datasets the update created (``known``: the names before it)."""
        with contextlib.suppress(Exception), open_ensemble(self.path, "a") as f:
            _resize_to(f, *committed_counts(f))
            for name in sorted(_dataset_names(f) - (known or _dataset_names(f))):
                del f[name]
            f.flush()

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"cannot continue ensemble {self.path}: no such file")
        with open_ensemble(self.path, "r") as f:
            diffs = compatibility_problems(f, meta["theory"], self.lattice, self.params)
        if diffs:
            raise ValueError(f"cannot continue ensemble {self.path}: " + "; ".join(diffs))

    # ------------------------------------------------------------------ appends
    def append_config(
        self, field: Any, trajectory: int, grid: ProcessGrid | None = None, first: int = 0
    ) -> int | None:
        """Store one configuration (collective over ``grid`` when given).

        ``field`` is this rank's local block of one configuration whose lattice axes start at
        array dim ``first`` (e.g. SU(3) ``(4, *local, 3, 3)``: ``first=1``). ``trajectory``
        is the configuration's number, the 1-based trajectory count (the configuration after
        record ``n`` is ``n + 1``). Buffered observables are written in the same update.
        Returns the config index on the writer.
        """
        grid = self.grid if grid is None else grid
        full = _to_numpy(field) if grid is None else gather_to_root(_to_numpy(field), grid, first)
        return self._collective(lambda: self._append(full, int(trajectory), first), grid)

    def _append(self, full: np.ndarray, trajectory: int, first: int) -> int:
        lattice_dims = tuple(full.shape[first : first + len(self.lattice)])
        if lattice_dims != self.lattice:
            raise ValueError(
                f"configuration of shape {full.shape} has lattice dims {lattice_dims} at "
                f"dims {first}..., the ensemble lattice is {self.lattice}"
            )
        index: list[int] = []
        checksum = field_checksum(full, first, len(self.lattice))

        def append(f: h5py.File, n: int, n_obs: int) -> tuple[int, int]:
            if "configs" not in f:
                f.create_dataset(
                    "configs",
                    shape=(0, *full.shape),
                    dtype=full.dtype,
                    maxshape=(None, *full.shape),
                    chunks=(1, *full.shape),
                    compression=self.compression,
                )
                f["configs"].attrs["first"] = first
            ds = f["configs"]
            if ds.shape[1:] != full.shape or ds.dtype != full.dtype:
                raise ValueError(
                    f"configuration {full.shape} {full.dtype} does not match the stored "
                    f"{ds.shape[1:]} {ds.dtype}"
                )
            ds.resize(n + 1, axis=0)
            ds[n] = full
            tr = f["config_trajectory"]
            tr.resize(n + 1, axis=0)
            tr[n] = trajectory - self._shift  # old (version < 3) files: 0-based as before
            cs = _checksum_dataset(f)
            cs.resize(n + 1, axis=0)
            cs[n] = checksum
            index.append(n)
            return n + 1, self._write_pending(f, n_obs)

        self._update(append, full.nbytes + 64 * len(self._rows) + 4096)
        self._rows.clear()
        self._rng = None
        return index[0]

    def append_observables(self, trajectory: int, values: Mapping[str, float]) -> None:
        """Buffer one row of the per-trajectory table (written at the next update)."""
        if not self.is_writer:
            return
        row = {}
        for key, value in values.items():
            if key == "trajectory" or "/" in key:
                raise ValueError(f"invalid observable name {key!r}")
            row[key] = float(_to_numpy(value))
        self._rows.append((int(trajectory), row))

    def set_rng_counters(self, counters: Mapping[str, int]) -> None:
        """Record the RNG counters (written at the next update)."""
        if self.is_writer:
            self._rng = {k: int(v) for k, v in counters.items()}

    def flush(self) -> None:
        """Write buffered observables and RNG counters now (one atomic update; collective)."""
        self._collective(self._flush)

    def _flush(self) -> None:
        if self._rows or self._rng is not None:
            self._update(lambda f, n_cfg, n_obs: (n_cfg, self._write_pending(f, n_obs)))
            self._rows.clear()
            self._rng = None

    def close(self) -> None:
        """Flush and close the file (writer rank only)."""
        self.flush()

    def __enter__(self) -> EnsembleWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()

    def _write_pending(self, f: h5py.File, n0: int) -> int:
        """Write the buffered observable rows after row ``n0``; the new row count."""
        if not self._rows:
            return n0
        obs = f["observables"]
        n1 = n0 + len(self._rows)
        names = sorted({k for _, row in self._rows for k in row} | set(obs) - {"trajectory"})
        obs["trajectory"].resize(n1, axis=0)
        obs["trajectory"][n0:n1] = [t for t, _ in self._rows]
        for name in names:
            if name not in obs:
                ds = obs.create_dataset(
                    name, (n0,), np.float64, maxshape=(None,), chunks=(1024,), fillvalue=np.nan
                )
                if n0:
                    ds[:] = np.nan
            ds = obs[name]
            ds.resize(n1, axis=0)
            ds[n0:n1] = [row.get(name, np.nan) for _, row in self._rows]
        return n1

    # ------------------------------------------------------------------ restart
    def truncate_after(self, trajectory: int) -> None:
        """Drop observable rows with (0-based record) trajectory > ``trajectory`` and the
        configurations saved after them (number, the 1-based count, > ``trajectory + 1``).

        For restarts: a run resumed from the checkpoint at ``trajectory`` regenerates what
        came after it. Collective; the file is rewritten only if something is dropped.
        """
        self._collective(lambda: self._truncate(int(trajectory)))

    def _truncate(self, trajectory: int) -> None:
        self._rows = [(t, r) for t, r in self._rows if t <= trajectory]
        with open_ensemble(self.path, "a") as f:
            n_cfg, n_obs = committed_counts(f)
            # rows are in trajectory order: search only the committed ones (O(log N) reads
            # would do; the trajectory columns are 8 bytes a row)
            keep = int(np.count_nonzero(config_numbers(f) <= trajectory + 1))
            rows = int(np.count_nonzero(f["observables"]["trajectory"][:n_obs] <= trajectory))
            if (keep, rows) == (n_cfg, n_obs) and not _resize_to(f, n_cfg, n_obs):
                return
            # marker first, then the cut: a crash in between leaves an uncommitted tail
            f.attrs[COMMITTED] = np.asarray([keep, rows], np.int64)
            self._sync(f)
            _resize_to(f, keep, rows)
            self._sync(f)


def compatibility_problems(
    f: h5py.File,
    theory: str,
    lattice: Sequence[int],
    params: Mapping[str, Any],
    seed: int | None = None,
) -> list[str]:
    """Why the open file ``f`` cannot be continued by a run of ``theory`` on ``lattice`` with
    couplings ``params`` (and ``seed``, if given): one line per difference, [] if none."""
    if f.attrs.get("format") != FORMAT:
        return [f"it is not a {FORMAT} file"]
    diffs = []
    if f.attrs["theory"] != theory:
        diffs.append(f"theory {f.attrs['theory']!r} != {theory!r}")
    if tuple(int(n) for n in f.attrs["lattice"]) != tuple(int(n) for n in lattice):
        diffs.append(f"lattice {f.attrs['lattice'].tolist()} != {list(lattice)}")
    stored, wanted = json.loads(f.attrs["params"]), json.loads(_json(dict(params)))
    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if keys:
        diffs.append(
            "parameters differ: "
            + ", ".join(f"{k}: file {stored.get(k)!r} != {wanted.get(k)!r}" for k in keys)
        )
    if seed is not None and "seed" in f.attrs and int(f.attrs["seed"]) != int(seed):
        diffs.append(f"seed {int(f.attrs['seed'])} != {int(seed)}")
    return diffs


# ---------------------------------------------------------------------- readers
def read_config(path: str | os.PathLike, index: int = -1, *, verify: bool = True) -> np.ndarray:
    """Configuration ``index`` (negative counts from the end) in global lattice order.

    With ``verify`` (default) the configuration must match its stored SciDAC checksum
    (:class:`ChecksumError`; a file without checksums warns with
    :class:`MissingChecksumWarning`), have the lattice of the file's header and be a valid
    field (:func:`check_config`; :class:`InvalidFieldError`)."""
    with open_ensemble(path, "r") as f:
        n = committed_counts(f)[0] if "configs" in f else 0
        if n == 0:
            raise IndexError(f"{path} holds no configurations")
        if not -n <= index < n:
            raise IndexError(f"config index {index} out of range: {path} holds {n}")
        config = f["configs"][index % n]
        if not verify:
            return config
        status = config_checksum_status(f, index, config)
        theory = f.attrs.get("theory")
    if status["status"] == "mismatch":
        raise ChecksumError(
            f"SciDAC checksum mismatch in {path}, configuration {index % n}: the file records "
            f"suma={status['file'][0]} sumb={status['file'][1]}, the data give "
            f"suma={status['computed'][0]} sumb={status['computed'][1]} (corrupted data)"
        )
    if status["status"] == "none":
        warnings.warn(
            f"{path}: configuration {index % n} has no checksum; it could not be verified",
            MissingChecksumWarning,
            stacklevel=2,
        )
    check_config(config, str(path), theory)
    return config


def config_checksum_status(f: h5py.File, index: int, config: np.ndarray) -> dict[str, Any]:
    """``{"kind", "status" (ok|mismatch|none), "file", "computed"}`` for one stored config;
    raises :class:`InvalidFieldError` when the config's lattice disagrees with the header."""
    first = int(f["configs"].attrs.get("first", 0))
    lattice = tuple(int(x) for x in f.attrs["lattice"])
    dims = tuple(config.shape[first : first + len(lattice)])
    if dims != lattice:
        raise InvalidFieldError(
            f"{f.filename}: configuration of shape {config.shape} has lattice dims {dims}, the "
            f"file's header says {list(lattice)}"
        )
    computed = field_checksum(config, first, len(lattice))
    out: dict[str, Any] = {"kind": "scidac", "computed": [format_checksum(c) for c in computed]}
    ds = f.get("config_checksum")
    n = committed_counts(f)[0]
    if ds is None or ds.shape[0] < n:
        return {**out, "status": "none", "file": None}
    stored = tuple(int(c) for c in ds[index % n])
    out["file"] = [format_checksum(c) for c in stored]
    out["status"] = "ok" if stored == computed else "mismatch"
    return out


def is_su3_links(config: np.ndarray) -> bool:
    """True for an SU(3) link field ``(4, *lattice, 3, 3)``."""
    return config.ndim == 7 and config.shape[0] == 4 and config.shape[-2:] == (3, 3)


def check_config(config: np.ndarray, path: str, theory: str | None = None) -> None:
    """Finite entries; SU(3) links also unitary to the tolerance of their precision."""
    if theory == "su3" or (theory is None and is_su3_links(config)):
        precision = "single" if config.dtype == np.complex64 else "double"
        check_links(config, path, precision)
    else:
        check_finite(config, path)


def read_observables(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The per-trajectory table: ``{"trajectory": ..., name: ...}``."""
    with open_ensemble(path, "r") as f:
        rows = committed_counts(f)[1]
        return {name: ds[:rows] for name, ds in f["observables"].items()}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes (JSON ones decoded), parameters, RNG counters and counts."""
    with open_ensemble(path, "r") as f:
        n_cfg, n_obs = committed_counts(f)
        meta: dict[str, Any] = {}
        for key, value in f.attrs.items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            meta[key] = value
        for key in ("sampler", "params"):
            if key in meta:
                meta[key] = json.loads(meta[key])
        groups = {name: f[name].attrs if name in f else {} for name in ("parameters", "rng")}
        meta["parameters"] = {k: _plain(v) for k, v in groups["parameters"].items()}
        meta["rng"] = {k: int(v) for k, v in groups["rng"].items()}
        meta.pop(COMMITTED, None)
        meta["n_configs"] = n_cfg if "configs" in f else 0
        meta["config_trajectory"] = config_numbers(f).tolist()  # 1-based counts, any version
        meta["n_trajectories"] = n_obs
        if "configs" in f:
            meta["config_shape"] = list(f["configs"].shape[1:])
            meta["config_dtype"] = str(f["configs"].dtype)
            meta["config_first"] = int(f["configs"].attrs.get("first", 0))
        return meta


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_hdf5(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the HDF5 signature."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"
