"""parallel/memory.py: with glibc, freed field-sized arrays are reused without page faults."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# page faults of the second allocation and first touch of a 64 MB array, after a first one
# was allocated, touched and freed (64 MB: above glibc's largest automatic mmap threshold)
PROBE = """
import os, resource, sys
import numpy as np
from parallel.memory import keep_freed_memory
on = keep_freed_memory()
a = np.ones(8 << 20); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(8 << 20)
print(int(on), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str) -> tuple[bool, int]:
    env = dict(os.environ, TRIVHMC_MALLOC=setting)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    on, faults = out.stdout.split()
    return bool(int(on)), int(faults)


def test_freed_memory_is_reused_without_page_faults():
    """With the setting the second 64 MB array faults in (almost) nothing; with glibc's
    defaults (``TRIVHMC_MALLOC=0``: the function does nothing and says so) it is a fresh
    mapping whose every page (4 kB, or 2 MB with transparent huge pages) faults."""
    on, faults = _probe("1")
    off, faults_default = _probe("0")
    assert on and not off
    assert faults_default >= 32, faults_default  # 64 MB / 2 MB pages at the least
    assert faults < 8, faults
