"""``TRIVHMC_*`` environment settings: one reader for on/off switches, one error for bad values.

The code reads a few settings from the environment (``TRIVHMC_SIMD512``,
``TRIVHMC_STOUT_KERNEL``, ``TRIVHMC_KERNELS``, ``TRIVHMC_PREFETCH``, ...). Every on/off switch
goes through :func:`flag`, which accepts ``1/0``, ``true/false``, ``yes/no`` and ``on/off`` (any
case; unset or empty gives the default) and nothing else; every switch is listed in
:data:`SWITCHES`, and the command line checks them all when it starts
(:func:`check_switches`), so that a bad value fails before any output, also where this run does
not read it; so are the settings that take one of a few words (:data:`CHOICES`, read through
:func:`choice`). A value the code does not accept raises
:class:`SettingError`, whose message names the variable, the value and what is accepted. The
command line reports it as bad input (exit status 2, docs/errors.md) on rank 0 alone:
``mpiexec`` gives every rank the same environment, so every rank raises it at the same point.
"""

from __future__ import annotations

import os

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


#: every on/off switch the code reads through :func:`flag` -> what it does when on (default)
SWITCHES: dict[str, str] = {
    "TRIVHMC_DEBUG": "tracebacks on every rank (off)",
    "TRIVHMC_MALLOC": "glibc keeps freed memory for reuse, parallel/memory.py (on)",
    "TRIVHMC_GPU_AWARE_MPI": "device buffers passed to MPI directly (off)",
    "TRIVHMC_SIMD512": "512-bit numba vectors on AVX-512 hosts (on)",
    "TRIVHMC_PREFETCH": "software prefetch in the fused SU(3) kernels (on)",
    "TRIVHMC_SERIAL_TWIN": "serial twins of the threaded kernels on one thread (on)",
    "TRIVHMC_VNODE_OVERLAP": "vnode MD layout computes the interior while faces travel (on)",
    "TRIVHMC_OVERLAP": "eager SU(3) Wilson force overlaps the halo exchange (off)",
    "TRIVHMC_COMPILE_DYNAMIC": "one dynamic-shape torch.compile per kernel (on)",
    "TRIVHMC_RNG_JIT": "numba Philox generator (on)",
    "TRIVHMC_SUM_JIT": "numba exact sums (on)",
    "TRIVHMC_CONV_JIT": "numba parallel-transport convolutions (on)",
}

#: the other ``TRIVHMC_*`` variables, with values of their own -> what they hold
OTHER_VARIABLES: dict[str, str] = {
    "TRIVHMC_KERNELS": "kernel backend when the deck has no `parallel.kernels` (a backend name)",
    "TRIVHMC_STOUT_KERNEL": "stout-flow core: auto (fused numba where it applies) or eager (auto)",
    "TRIVHMC_MODELS": "model registry directory when the deck names none",
    "TRIVHMC_CACHE": "directory of numba's compiled-kernel cache",
    "TRIVHMC_CHAIN_INDEX": "position in a job chain (set by the job scripts)",
}


#: the ``OTHER_VARIABLES`` that take one of a few words -> the words (any case; unset or
#: empty gives the caller's default), read through :func:`choice`
CHOICES: dict[str, tuple[str, ...]] = {
    "TRIVHMC_STOUT_KERNEL": ("auto", "eager"),
}


class SettingError(ValueError):
    """A ``TRIVHMC_*`` environment variable holds a value the code does not accept."""


def _read(name: str) -> tuple[str | None, str]:
    """``$name`` as set (None if unset) and normalised (blanks stripped, lower case)."""
    raw = os.environ.get(name)
    return raw, "" if raw is None else raw.strip().lower()


def flag(name: str, default: bool) -> bool:
    """The on/off switch ``$name``: True for 1/true/yes/on, False for 0/false/no/off (any
    case, surrounding blanks ignored), ``default`` when unset or empty; any other value raises
    :class:`SettingError`. ``name`` must be listed in :data:`SWITCHES`."""
    if name not in SWITCHES:
        raise KeyError(f"{name} is not a registered switch (parallel.settings.SWITCHES)")
    raw, value = _read(name)
    if value == "":
        return default
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise SettingError(f"{name}={raw!r}: expected an on/off switch, one of {TRUE + FALSE}")


def choice(name: str, default: str) -> str:
    """The setting ``$name``, one of the words in :data:`CHOICES` (lower case; surrounding
    blanks ignored), ``default`` when unset or empty; any other value raises
    :class:`SettingError`."""
    words = CHOICES[name]
    raw, value = _read(name)
    if value in words:
        return value
    if value == "":
        return default
    raise SettingError(f"{name}={raw!r}: expected one of {words}")


def check_switches() -> None:
    """Read every switch in :data:`SWITCHES` and every setting in :data:`CHOICES` once: raises
    :class:`SettingError` on the first bad value (called by the command line before it does
    anything)."""
    for name in SWITCHES:
        flag(name, False)
    for name, words in CHOICES.items():
        choice(name, words[0])
