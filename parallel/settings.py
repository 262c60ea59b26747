"""The error for a bad value of a ``TRIVHMC_*`` environment variable read by the kernels.

The kernels read a few settings from the environment (``TRIVHMC_SIMD512``,
``TRIVHMC_STOUT_KERNEL``, ...), often at import. A value they do not accept raises
:class:`SettingError`, whose message names the variable, the value and what is accepted. The
command line reports it as bad input (exit status 2, docs/errors.md) on rank 0 alone:
``mpiexec`` gives every rank the same environment, so every rank raises it at the same point.
"""

from __future__ import annotations


class SettingError(ValueError):
    """A ``TRIVHMC_*`` environment variable holds a value the code does not accept."""
