"""The CPU a benchmark ran on, for its table header.

A virtual machine's "model name" is often just the vendor line ("AMD EPYC"), while the same VM
lands on hosts of different generations (on the dev VM: dgemm 87 GFLOP/s on one, 40 on
another, same day); family, model and clock tell them apart.
"""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """``model name`` with ``family``, ``model`` and ``MHz`` from /proc/cpuinfo (Linux)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "cpu MHz") and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown cpu"
    extra = [f"{k} {info[k]}" for k in ("cpu family", "model", "cpu MHz") if k in info]
    return f"{name} ({', '.join(extra)})" if extra else name


def numba_target() -> str:
    """The CPU and vector width numba compiles the kernels for (parallel/jit_target.py)."""
    try:
        from parallel import jit_target

        return jit_target.describe()
    except ImportError:
        return "numba not installed"
