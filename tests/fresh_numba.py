"""Run a probe script in a fresh interpreter with empty numba caches.

numba keeps no machine code or symbol table for functions it loads from its disk cache
(``inspect_asm`` refuses, a library has no IR), so tests that read compiled code compile it
afresh: ``NUMBA_CACHE_DIR`` and ``TRIVHMC_CACHE`` in a temporary directory, the repository on
``PYTHONPATH`` and as the working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(probe: str, tmp_path: Path, *args: str) -> str:
    """``python -c probe *args`` with empty caches under ``tmp_path``; its stdout (the test
    fails with the stderr's tail if the probe does)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), TRIVHMC_CACHE=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout
