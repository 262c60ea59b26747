"""One run per output directory (app/lock.py): refusal naming the holder, heartbeat,
stale-lock takeover (dead pid on this host, or an old heartbeat from another host)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.lock import LOCK_NAME, TAKEOVER_LOG, RunLock, RunLockedError


def fake_lock(directory: Path, host: str, pid: int, job: str | None, age_s: float = 0.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    rec = {"host": host, "pid": pid, "job_id": job, "started": "2026-12-01T00:00:00Z"}
    path.write_text(json.dumps({**rec, "token": "other"}))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_lock_is_refused_and_names_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "424242")
    first = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        msg = str(err.value)
        assert socket.gethostname() in msg and str(os.getpid()) in msg and "424242" in msg
    finally:
        first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()  # free again


def test_live_lock_of_another_host_is_refused(tmp_path):
    fake_lock(tmp_path, "node0042", 12345, "7.pbs01", age_s=30)
    with pytest.raises(RunLockedError, match=r"node0042.*12345.*7\.pbs01"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "node0042"


def test_dead_pid_on_this_host_is_taken_over_and_logged(tmp_path):
    pid = dead_pid()
    fake_lock(tmp_path, socket.gethostname(), pid, "99")
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock.took_over["pid"] == pid
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        log = (tmp_path / TAKEOVER_LOG).read_text()
        assert f"pid {pid} is not running" in log and "job 99" in log
    finally:
        lock.release()


def test_old_heartbeat_of_another_host_is_taken_over(tmp_path):
    fake_lock(tmp_path, "node0042", 12345, None, age_s=1000)
    lock = RunLock(tmp_path, stale_after_s=600).acquire()
    try:
        assert lock.took_over["host"] == "node0042"
        assert "heartbeat is 1000 s old" in (tmp_path / TAKEOVER_LOG).read_text()
    finally:
        lock.release()


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    try:
        path = tmp_path / LOCK_NAME
        old = time.time() - 500
        os.utime(path, (old, old))
        deadline = time.time() + 5
        while time.time() < deadline and path.stat().st_mtime < old + 100:
            time.sleep(0.02)
        assert path.stat().st_mtime > time.time() - 5
    finally:
        lock.release()


def test_trivhmc_run_refuses_a_directory_in_use(tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(
        "theory: {name: u1, beta: 2.0}\nlattice: {shape: [4, 4]}\n"
        "sampler: {name: hmc, integrator: leapfrog, steps: 2, trajectory_length: 0.2}\n"
        "run: {seed: 1, thermalization: 0, trajectories: 2}\n"
        "output: {directory: out, formats: [hdf5]}\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake_lock(tmp_path / "out", socket.gethostname(), holder.pid, "555")
        exe = str(Path(sys.executable).parent / "trivhmc")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [exe, "run", str(deck), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 2
        assert f"pid {holder.pid}" in proc.stderr and "job 555" in proc.stderr
        assert not (tmp_path / "out" / "records.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: the next run takes the lock over, runs, and releases it
    proc = subprocess.run(
        [exe, "run", str(deck), "--no-progress"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not running on this host" in (tmp_path / "out" / TAKEOVER_LOG).read_text()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_but_unreaped_holder_counts_as_dead(tmp_path):
    """A killed rank that nobody has reaped yet (a zombie: its launcher died with it and init
    reaps late) holds no lock: a resume right after the kill takes the lock over."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake_lock(tmp_path, socket.gethostname(), proc.pid, None)
        with pytest.raises(RunLockedError):  # alive: refused
            RunLock(tmp_path).acquire()
        proc.kill()
        deadline = time.time() + 10
        stat = Path(f"/proc/{proc.pid}/stat")
        while ") Z " not in stat.read_text() and time.time() < deadline:
            time.sleep(0.01)
        assert ") Z " in stat.read_text()  # killed, not reaped (no wait() yet)
        lock = RunLock(tmp_path).acquire()
        try:
            assert lock.took_over["pid"] == proc.pid
        finally:
            lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_an_output_directory_in_the_way_of_a_file_is_bad_input(tmp_path):
    """A plain file where the directory (or a parent) should be: one collective error."""
    from mpi4py import MPI

    from app.lock import OutputDirectoryError, acquire_run_lock

    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(OutputDirectoryError, match="exists and is not a directory"):
            acquire_run_lock(target, MPI.COMM_SELF, True)
    assert (tmp_path / "file").read_text() == "x"
