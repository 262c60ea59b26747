"""Launch a pytest module of ``tests/mpi`` under ``mpiexec -n N`` and report its outcome."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPI_DIR = ROOT / "tests" / "mpi"
RANKS = (1, 2, 4)


def mpiexec() -> str:
    exe = shutil.which(
        "mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    )
    if exe is None:
        pytest.fail("mpiexec not found: install the test extra (pip install -e '.[test]')")
    return exe


def run_under_mpi(
    module: str | list[str], nranks: int, timeout: float = 300.0, args: tuple = ()
) -> None:
    """Run ``tests/mpi/<module>`` (or several modules in one launch) on ``nranks`` ranks;
    fail with the output if any rank fails."""
    modules = [module] if isinstance(module, str) else list(module)
    env = dict(
        os.environ,
        TRIVHMC_UNDER_MPIEXEC="1",
        TRIVHMC_MPI_RANKS=str(nranks),  # tests/mpi/conftest.py checks the world's size
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    for name in [k for k in env if k.startswith("PYTEST_XDIST_")]:
        del env[name]  # the ranks are not this xdist worker (tests/mpi/conftest.py checks)
    cmd = [
        mpiexec(),
        "-n",
        str(nranks),
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        *(str(MPI_DIR / m) for m in modules),
        *args,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"")[-4000:] if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"{modules} on {nranks} ranks timed out after {timeout}s\n{out[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(
            f"{modules} on {nranks} ranks failed (rc={proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
