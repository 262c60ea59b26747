"""Target features of the numba-compiled kernels: full-width (512-bit) vectors on AVX-512 CPUs.

LLVM tunes the Intel server CPUs with AVX-512 (Skylake-SP to Emerald Rapids, and the Sapphire
Rapids hosts of Aurora's nodes) with the subtarget feature ``prefer-256-bit``: its vectoriser
then emits 256-bit (``ymm``) code although the CPU runs 512-bit FMAs (``zmm``) on two ports.
Our kernels are lane loops (16 sites of one matrix component, or long rows of ``sin``/``cos``)
that LLVM vectorises; with 512-bit vectors each FMA instruction does twice the work.

:func:`configure` makes numba compile for the host CPU with ``-prefer-256-bit`` appended to
the host's feature string (``numba.config.CPU_FEATURES``) when the host has ``avx512f``. numba
fixes its target machine when the first function is decorated in the process (its CPU target
context), so every module of ours that defines numba kernels calls :func:`configure` before
its first ``@njit``. Nothing changes when:

* ``NUMBA_CPU_FEATURES`` or ``NUMBA_CPU_NAME`` is set (the user's choice wins);
* ``TRIVHMC_SIMD512=0`` is set (LLVM's own choice: 256-bit on these CPUs);
* the CPU has no AVX-512 (AMD Zen 2/3, Frontier's hosts). On Zen 4/5, which LLVM does not tune
  for 256 bits, the setting is applied and changes nothing measurable (session 17, Zen 5);
* numba's CPU target already exists (another library compiled a function first): the width
  is then whatever that compilation chose, reported by :func:`describe`.

Results: every kernel computes each lane (site) with the same operations at either width
(no reassociation: ``fastmath`` is at most ``contract``), so records stay byte-identical
between process grids; the tests compare the kernels with the eager reference either way.
numba's disk cache keys its entries by the feature string, so the two widths never share a
compiled object. Measured gains: docs/performance.md, "Kernel backends", session 17.

Only the process's own numba configuration is changed, not the environment: a child process
(``mpiexec`` started from Python, possibly on another node) decides for its own CPU.
"""

from __future__ import annotations

import os

from .settings import flag

ENV = "TRIVHMC_SIMD512"
_NO_PREFER_256 = "-prefer-256-bit"
_state: str | None = None


def _setting() -> bool:
    return flag(ENV, True)  # off: LLVM's vector width; on: 512-bit


def _target_exists() -> bool:
    from numba.core.registry import cpu_target

    return "_toplevel_target_context" in vars(cpu_target)


def configure() -> str:
    """Choose 512-bit vectors for numba on an AVX-512 host, once per process; returns why.

    Returns one of ``"512"`` (set here), ``"user"`` (``NUMBA_CPU_FEATURES``/``NUMBA_CPU_NAME``
    set), ``"off"`` (``TRIVHMC_SIMD512=0``), ``"no-avx512"``, ``"late"`` (numba's target was
    created before this call).
    """
    global _state
    if _state is not None:
        return _state
    import llvmlite.binding as llvm
    import numba

    if os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        _state = "user"
    elif not _setting():
        _state = "off"
    elif "+avx512f" not in llvm.get_host_cpu_features().flatten().split(","):
        _state = "no-avx512"
    elif _target_exists():
        _state = "late"
    else:
        numba.config.CPU_FEATURES = f"{llvm.get_host_cpu_features().flatten()},{_NO_PREFER_256}"
        _state = "512"
    return _state


def describe() -> str:
    """One line for benchmark headers: the CPU numba compiles for and its vector width choice
    (read from numba's code generator, i.e. what the kernels were actually compiled with)."""
    from numba.core.registry import cpu_target

    state = configure()
    _, cpu, features = cpu_target.target_context.codegen().magic_tuple()
    width = "512-bit vectors" if _NO_PREFER_256 in features.split(",") else "LLVM's width"
    return f"numba target {cpu}, {width} ({ENV}: {state})"
