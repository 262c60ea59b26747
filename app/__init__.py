"""The trivhmc batch application: CLI, decks, run loop, ensemble I/O, registry, analysis.

Importing it sets ``MKL_CBWR=COMPATIBLE`` unless ``MKL_CBWR`` is already set, before torch is
loaded: MKL's default float64 matrix products (float64 network convolutions and linear layers
on CPU) round a column differently depending on the size of the product and the column's
place in it, so a network's output at a site would depend on the local block and records
would differ between process grids in the last bits (docs/conventions.md, "Reductions").
"""

import os
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")


def code_version() -> str:
    """The installed trivhmc version (recorded in ensembles, checkpoints and model cards)."""
    try:
        return version("trivhmc")
    except PackageNotFoundError:
        return "unknown"
