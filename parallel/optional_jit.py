"""Import of an optional compiled module of :mod:`parallel` (numba).

The compiled loops (:mod:`parallel.philox_jit`, :mod:`parallel.exact_sum_jit`) give the same
numbers as their numpy/torch references; they are used when numba is installed and their
environment switch is not ``0`` (for comparisons, and as a way out).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .settings import flag


def optional_jit(module: str, switch: str) -> ModuleType | None:
    """``parallel.<module>`` unless ``$switch`` is ``0`` or numba is missing (then None)."""
    if not flag(switch, True):
        return None
    try:
        return importlib.import_module(f"parallel.{module}")
    except ImportError:
        return None
