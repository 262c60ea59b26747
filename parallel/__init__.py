"""Everything MPI: process grid, halo exchange, distributed shifts and convolutions,
reductions, gather/scatter, and the counter-based RNG keyed by global site.

``parallel`` knows nothing about physics. See docs/conventions.md for the axis conventions.
"""

from .comm import gpu_aware, set_gpu_aware
from .conv import LatticeConv
from .grid import GridError, ProcessGrid, choose_grid, single_rank_grid
from .halo import HaloError, HaloHandle, halo_begin, halo_end, halo_pad, halo_pad_adjoint
from .reduce import (
    allgather_field,
    allreduce_gradients,
    broadcast,
    broadcast_parameters,
    exact_segment_sum,
    exact_sum,
    gather_to_root,
    global_max,
    global_sum,
    lattice_mean,
    lattice_sum,
    row_sum,
    scatter_from_root,
)
from .rng import SiteRNG
from .shifts import ShiftHandle, shift, shift_begin, shift_end

__all__ = [
    "GridError",
    "HaloError",
    "HaloHandle",
    "LatticeConv",
    "ProcessGrid",
    "ShiftHandle",
    "SiteRNG",
    "allgather_field",
    "allreduce_gradients",
    "broadcast",
    "broadcast_parameters",
    "choose_grid",
    "exact_segment_sum",
    "exact_sum",
    "gather_to_root",
    "global_max",
    "global_sum",
    "gpu_aware",
    "halo_begin",
    "halo_end",
    "halo_pad",
    "halo_pad_adjoint",
    "lattice_mean",
    "lattice_sum",
    "row_sum",
    "scatter_from_root",
    "set_gpu_aware",
    "shift",
    "shift_begin",
    "shift_end",
    "single_rank_grid",
]
