"""One run per output directory: an exclusively created lock file with a heartbeat.

``<output.directory>/.trivhmc.lock`` holds JSON ``{host, pid, job_id, started, token}`` of the
run that owns the directory. It is created atomically in a way that works on parallel file
systems shared by many nodes (NFS, Lustre, GPFS), where ``flock``/``fcntl`` locks are not
reliable: the holder's record is written to a uniquely named file, fsynced, and hard-linked
to the lock name (``link`` fails with ``EEXIST`` if the name exists; one of several
concurrent creators wins). While the run lives, a daemon thread touches the lock file every
:data:`HEARTBEAT_S` seconds (its mtime is the heartbeat).

A lock is **stale**, and is taken over, when

* its host is this host and its pid is not a live process (a killed job on the same node), or
* its heartbeat is older than :data:`STALE_AFTER_S` seconds (a job killed on another node;
  the limit is ten missed heartbeats, so a live run is never taken over because of a slow
  file system).

A takeover renames the stale lock away (atomic: of several takers only one succeeds), then
creates a new one; it is logged to ``<directory>/lock-takeovers.log`` and the ``trivhmc``
logger. A live lock refuses the run with :class:`RunLockedError`, naming the holder.
Scheduler job ids are read from ``SLURM_JOB_ID``, ``PBS_JOBID``, ``LSB_JOBID``,
``FLUX_JOB_ID`` or ``COBALT_JOBID``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .errors import InputError, is_storage_error

LOCK_NAME = ".trivhmc.lock"
TAKEOVER_LOG = "lock-takeovers.log"
#: seconds between heartbeats (mtime updates of the lock file)
HEARTBEAT_S = 60.0
#: a lock whose heartbeat is older than this many seconds is stale
STALE_AFTER_S = 600.0
JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID", "COBALT_JOBID")

log = logging.getLogger("trivhmc.lock")


class RunLockedError(InputError):
    """The output directory is in use by another live run."""


class OutputDirectoryError(InputError):
    """The output directory cannot be created or written (a file in the way, permissions)."""


def job_id() -> str | None:
    """The scheduler job id of this process (PBS, Slurm, ...), or None."""
    for var in JOB_ID_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running process on this host. A zombie (killed, not yet reaped:
    e.g. an MPI rank whose launcher was killed too, waiting for an init that reaps slowly)
    holds no lock and counts as dead; ``/proc`` tells (Linux), elsewhere ``kill(pid, 0)``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces and ")"; the state follows the last ")"
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def describe(holder: dict[str, Any]) -> str:
    """The holder of a lock in words (host, pid, job id, start time)."""
    job = holder.get("job_id")
    return (
        f"host {holder.get('host')!r}, pid {holder.get('pid')}"
        + (f", job {job}" if job else ", no scheduler job id")
        + f", started {holder.get('started')}"
    )


class RunLock:
    """The lock of one output directory; :meth:`acquire`, then :meth:`release` (idempotent)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s)
        self.token = uuid.uuid4().hex
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": job_id(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None

    # ------------------------------------------------------------------ acquire
    def _try_create(self) -> bool:
        tmp = self.directory / f"{LOCK_NAME}.{self.record['host']}.{os.getpid()}.{self.token}"
        with open(tmp, "w") as fh:
            json.dump(self.record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def holder(self) -> dict[str, Any] | None:
        """The current lock record plus ``age_s`` (seconds since its heartbeat), or None."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(text)
        except ValueError:
            rec = {"host": "?", "pid": "?", "unreadable": text[:200]}
        rec["age_s"] = age
        return rec

    def stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why ``holder`` is stale, or None when it belongs to a live run."""
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return f"pid {holder['pid']} is not running on this host"
        if holder["age_s"] > self.stale_after_s:
            return (
                f"its heartbeat is {holder['age_s']:.0f} s old (limit {self.stale_after_s:.0f} s)"
            )
        return None

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; raise :class:`RunLockedError` if held."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._try_create():
                self._start_heartbeat()
                atexit.register(self.release)
                return self
            holder = self.holder()
            if holder is None:  # released meanwhile
                continue
            reason = self.stale_reason(holder)
            if reason is None:
                raise RunLockedError(
                    f"output directory {self.directory} is in use by another run "
                    f"({describe(holder)}; last heartbeat {holder['age_s']:.0f} s ago). "
                    f"Wait for it, use another output.directory, or, if that run is dead, "
                    f"its lock is taken over after {self.stale_after_s:.0f} s without a "
                    f"heartbeat (or remove {self.path})."
                )
            self._take_over(holder, reason)
        raise RunLockedError(f"could not acquire {self.path}: other runs keep taking it")

    def _take_over(self, holder: dict[str, Any], reason: str) -> None:
        moved = self.directory / f"{LOCK_NAME}.stale-{self.token}"
        try:
            os.rename(self.path, moved)  # only one of several takers gets the old lock
        except FileNotFoundError:
            return
        moved.unlink(missing_ok=True)
        msg = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} took over the stale lock of "
            f"{self.directory} ({describe(holder)}): {reason}; new holder: {describe(self.record)}"
        )
        with open(self.directory / TAKEOVER_LOG, "a") as fh:
            fh.write(msg + "\n")
        log.warning(msg)
        self.took_over = holder

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:  # removed or file system trouble: keep trying
                    pass

        self._thread = threading.Thread(target=beat, name="trivhmc-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


def acquire_run_lock(directory: Path, comm, is_root: bool) -> RunLock | None:
    """Collective: the root of ``comm`` takes the lock of ``directory``; a refusal is raised
    on every rank. Returns the lock on the root, None elsewhere."""
    lock, error = None, None
    if is_root:
        try:
            lock = RunLock(directory).acquire()
        except RunLockedError as err:
            error = err
        except OSError as err:  # a plain file in the way, no permission, full disk
            error = err if is_storage_error(err) else _unusable(directory, err)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error
    return lock


def _unusable(directory: Path, err: OSError) -> OutputDirectoryError:
    path = Path(directory)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        what = f"{blocker} exists and is not a directory"
    else:
        what = f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
    return OutputDirectoryError(
        f"cannot use output.directory {path}: {what}; choose another output.directory"
    )
