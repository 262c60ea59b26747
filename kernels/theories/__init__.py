"""Lattice theories: 2D phi^4, 2D U(1) gauge, 4D SU(3) gauge (and later Schwinger).

``make_theory(name, grid, **couplings)`` builds one by name (the names used in input decks).
"""

from __future__ import annotations

from importlib import import_module

from parallel import ProcessGrid

from ..theory import Theory

#: deck name -> "module:class"
REGISTRY = {
    "phi4": "kernels.theories.phi4:Phi4",
    "u1": "kernels.theories.u1:U1Gauge",
    "su3": "kernels.theories.su3:SU3Gauge",
    "schwinger": "kernels.theories.schwinger:Schwinger",
}


def theory_class(name: str) -> type[Theory]:
    try:
        module, cls = REGISTRY[name].split(":")
    except KeyError:
        raise ValueError(f"unknown theory {name!r}; known: {sorted(REGISTRY)}") from None
    return getattr(import_module(module), cls)


def make_theory(name: str, grid: ProcessGrid, **kwargs) -> Theory:
    """Instantiate the theory ``name`` on ``grid`` with its couplings as keyword arguments."""
    return theory_class(name)(grid, **kwargs)
