"""The device code paths on a CPU-only machine: the scenarios of tests/fake_device.py on its
fake accelerator (device ``fakegpu``: computes on the CPU, routes and refuses like a GPU), each
in its own interpreter (the fake backend stays registered for the rest of a process), the MPI
one under ``mpiexec -n 2`` with GPU-aware MPI off and on.

What they cover: the eager SU(3) kernels and HMC trajectory, the CPU-only backends handing
device tensors to eager, the stout trivialized force and the Schwinger pseudofermion force and
CG solve (benchmarks/device_check.py's checks), a ``trivhmc run`` with files, measurements,
checkpoints and a resume, an L2HMC training checkpoint (no device tensor in a pickled MPI
message), ``bcast_array`` never writing into the caller's tensor, halo exchanges and an HMC
trajectory on a split lattice with device buffers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mpi_launch import mpiexec

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "fake_device.py"


def _run(scenario: str, nranks: int = 0) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRIVHMC_KERNELS="eager")
    env.pop("TRIVHMC_GPU_AWARE_MPI", None)
    for name in [k for k in env if k.startswith("PYTEST_XDIST_")]:
        del env[name]
    cmd = [sys.executable, str(SCRIPT), scenario]
    if nranks:
        cmd = [mpiexec(), "-n", str(nranks), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=HERE.parent)
    assert r.returncode == 0 and f"OK {scenario}" in r.stdout, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.mark.parametrize(
    "scenario",
    ["harness", "su3_hmc", "device_check", "app_run", "l2hmc_checkpoint", "bcast_no_write"],
)
def test_scenario_on_fake_device(scenario: str) -> None:
    _run(scenario)


@pytest.mark.parametrize("scenario", ["mpi", "l2hmc_checkpoint"])
def test_scenario_on_fake_device_two_ranks(scenario: str) -> None:
    _run(scenario, nranks=2)
