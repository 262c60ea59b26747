"""Re-export of :func:`parallel.reduce.exact_sum` (the correctly rounded, grid-independent
sum now lives in ``parallel``, next to the other global reductions)."""

from parallel.reduce import exact_sum

__all__ = ["exact_sum"]
