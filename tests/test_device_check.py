"""benchmarks/device_check.sh would run: shell syntax, --help, --dry-run (which imports and
parses benchmarks/device_check.py), a clear error for a bad argument; the CPU-only
correctness part of device_check.py passes (slow)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _run(*args: str, env_python: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    if env_python:
        env["PYTHON"] = sys.executable
    return subprocess.run(
        [BASH, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_shell_syntax_and_help():
    assert subprocess.run([BASH, "-n", str(SCRIPT)]).returncode == 0
    r = _run("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout and "cuda|xpu|cpu|auto" in r.stdout


def test_dry_run_lists_every_check_and_installs_nothing():
    r = _run("--dry-run", "xpu")
    assert r.returncode == 0, r.stderr
    steps = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    parts = [s.split("--part ")[1].split()[0] for s in steps]
    assert parts == ["correctness", "halo", "halo", "table", "compiled"]
    assert all(s.endswith("--device xpu") for s in steps)
    assert "-n 2" in steps[1] and "--aware off" in steps[1]
    assert "-n 2" in steps[2] and "--aware on" in steps[2]
    assert sum(int(s.split()[1]) for s in steps) <= 480  # the time limits: < 8 minutes
    assert not (REPO / ".venv-device").exists()


def test_bad_argument_is_named():
    r = _run("gpu")
    assert r.returncode == 2 and "unknown argument 'gpu'" in r.stderr


@pytest.mark.slow
def test_correctness_part_passes_on_cpu():
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "device_check.py"),
            "--part",
            "correctness",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and r.stdout.count("PASS") >= 10
