"""Process grid: how a global lattice is split over MPI ranks.

The world communicator is split into ``replicas`` groups (independent Markov chains) of
``P = size / replicas`` ranks each (one lattice over several ranks, the *domain group*).
Inside a domain group the ranks form a periodic Cartesian communicator whose dims, the
*process grid*, divide the global lattice shape axis by axis.

Conventions (docs/conventions.md):

* The global lattice shape is ``(L_0, ..., L_{d-1})``; lattice axis ``mu`` is direction ``mu``
  (for 4D: ``mu = x, y, z, t``). Fields store the lattice axes in this order, in C order.
* The global site index is the C-order (row-major) flat index
  ``n = ((x_0 * L_1 + x_1) * L_2 + x_2) ...``. It keys the counter-based RNG, so a draw is the
  same for every process grid.
* The local domain of the rank with Cartesian coordinates ``c`` is the block
  ``[c_mu * l_mu, (c_mu + 1) * l_mu)`` along each axis, ``l_mu = L_mu / grid_mu``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from mpi4py import MPI


class GridError(ValueError):
    """The process grid cannot be built for this lattice and rank count."""


def _divisor_grids(nprocs: int, ndim: int) -> list[tuple[int, ...]]:
    """All ordered factorisations of ``nprocs`` into ``ndim`` positive factors."""
    if ndim == 1:
        return [(nprocs,)]
    out = []
    for f in range(1, nprocs + 1):
        if nprocs % f == 0:
            out.extend((f,) + rest for rest in _divisor_grids(nprocs // f, ndim - 1))
    return out


def choose_grid(
    shape: Sequence[int], nprocs: int, grid: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Pick a process grid for ``shape`` on ``nprocs`` ranks.

    A user grid is checked (product equals ``nprocs``, each factor divides its axis). Entries
    equal to 0 are free and filled in, as in ``MPI.Compute_dims``. With no grid,
    ``MPI.Compute_dims`` is tried first; if it does not divide the lattice, the valid
    factorisation with the smallest local surface is taken. Raises :class:`GridError` with
    the reason when no grid fits.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim == 0 or any(s < 1 for s in shape):
        raise GridError(f"lattice shape {list(shape)} must have positive extents")
    if grid is not None:
        grid = tuple(int(g) for g in grid)
        if len(grid) != ndim:
            raise GridError(
                f"process grid {list(grid)} has {len(grid)} entries but the lattice "
                f"{list(shape)} has {ndim} dimensions"
            )
        if any(g < 0 for g in grid):
            raise GridError(f"process grid {list(grid)} has a negative entry")
        if 0 in grid:
            fixed = int(np.prod([g for g in grid if g > 0]))
            if nprocs % fixed:
                raise GridError(
                    f"process grid {list(grid)}: fixed entries multiply to {fixed}, which "
                    f"does not divide {nprocs} ranks"
                )
            grid = tuple(MPI.Compute_dims(nprocs, list(grid)))
        if int(np.prod(grid)) != nprocs:
            raise GridError(
                f"process grid {list(grid)} has {int(np.prod(grid))} ranks but there are "
                f"{nprocs} ranks per lattice"
            )
        bad = [mu for mu in range(ndim) if shape[mu] % grid[mu]]
        if bad:
            mu = bad[0]
            raise GridError(
                f"process grid {list(grid)} does not divide lattice {list(shape)}: "
                f"axis {mu} has extent {shape[mu]}, not a multiple of {grid[mu]}"
            )
        return grid
    first = tuple(MPI.Compute_dims(nprocs, ndim))
    if all(s % g == 0 for s, g in zip(shape, first)):
        return first
    valid = [g for g in _divisor_grids(nprocs, ndim) if all(s % f == 0 for s, f in zip(shape, g))]
    if not valid:
        raise GridError(
            f"no process grid of {nprocs} ranks divides lattice {list(shape)}; "
            f"use a rank count whose factors divide the lattice extents"
        )

    def surface(g: tuple[int, ...]) -> float:
        local = [s // f for s, f in zip(shape, g)]
        vol = float(np.prod(local))
        return sum(vol / l for l, f in zip(local, g) if f > 1)

    return min(valid, key=surface)


class ProcessGrid:
    """A global lattice split over the ranks of one domain group, with replica groups.

    Parameters
    ----------
    shape:
        Global lattice extents ``(L_0, ..., L_{d-1})``.
    grid:
        Process grid (ranks per axis), ``None`` or zeros to choose automatically.
    replicas:
        Number of independent replica groups the world is split into.
    comm:
        The communicator to split (default ``MPI.COMM_WORLD``).
    """

    def __init__(
        self,
        shape: Sequence[int],
        grid: Sequence[int] | None = None,
        replicas: int = 1,
        comm: MPI.Comm | None = None,
    ) -> None:
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.replicas = int(replicas)
        self.grid = grid
        self.shape = tuple(int(s) for s in shape)
        size = self.comm.Get_size()
        if self.replicas < 1 or size % self.replicas:
            raise GridError(
                f"{size} ranks cannot be split into {self.replicas} replica groups of equal size"
            )
        self.ranks_per_replica = size // self.replicas
        self.grid = choose_grid(self.shape, self.ranks_per_replica, self.grid)
        world_rank = self.comm.Get_rank()
        self.replica = world_rank // self.ranks_per_replica
        self.domain_comm = self.comm.Split(self.replica, world_rank)
        self.cart = self.domain_comm.Create_cart(
            list(self.grid), periods=[True] * self.ndim, reorder=False
        )
        # ranks holding the same part of the lattice in each replica
        self.replica_comm = self.comm.Split(self.cart.Get_rank(), self.replica)
        self.rank = self.cart.Get_rank()
        self.size = self.cart.Get_size()
        self.coords = tuple(self.cart.Get_coords(self.rank))
        self.local_shape = tuple(s // g for s, g in zip(self.shape, self.grid))
        self.offset = tuple(c * l for c, l in zip(self.coords, self.local_shape))
        # neighbours[mu] = (rank at -1, rank at +1) along axis mu
        self.neighbours = [self.cart.Shift(mu, 1) for mu in range(self.ndim)]
        # communicators over one process (a single-rank grid): freeing them is a local call,
        # so they go with the grid (MPICH allows 2048 per process; a long test session or a
        # driver that builds many grids would run out). Over several ranks MPI_Comm_free is
        # collective and garbage collection runs in no agreed order: those stay until free().
        comms = (self.cart, self.domain_comm, self.replica_comm)
        self._release = weakref.finalize(self, _free_comms, comms) if size == 1 else None

    # ---------------------------------------------------------------- geometry
    @property
    def ndim(self) -> int:
        """Number of lattice dimensions."""
        return len(self.shape)

    @property
    def volume(self) -> int:
        """Global number of sites."""
        return int(np.prod(self.shape))

    @property
    def local_volume(self) -> int:
        """Sites on this rank."""
        return int(np.prod(self.local_shape))

    @property
    def is_root(self) -> bool:
        """Rank 0 of the domain group."""
        return self.rank == 0

    @property
    def is_world_root(self) -> bool:
        """True on rank 0 of MPI.COMM_WORLD."""
        return self.comm.Get_rank() == 0

    def local_slices(self, coords: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Slices of the global lattice owned by the rank at ``coords`` (default: this one)."""
        coords = self.coords if coords is None else coords
        return tuple(slice(c * l, (c + 1) * l) for c, l in zip(coords, self.local_shape))

    @cached_property
    def global_coords(self) -> tuple[np.ndarray, ...]:
        """Global coordinates of the local sites, one int64 array of ``local_shape`` per axis."""
        axes = [np.arange(o, o + l, dtype=np.int64) for o, l in zip(self.offset, self.local_shape)]
        return tuple(np.meshgrid(*axes, indexing="ij"))

    @cached_property
    def global_index(self) -> np.ndarray:
        """C-order flat global site index of each local site, int64 array of ``local_shape``."""
        return np.ravel_multi_index(self.global_coords, self.shape).astype(np.int64)

    def is_global_boundary(self, axis: int, side: int) -> bool:
        """True when this rank's face at ``side`` (-1 or +1) along ``axis`` is the lattice edge."""
        if side > 0:
            return self.coords[axis] == self.grid[axis] - 1
        return self.coords[axis] == 0

    # ---------------------------------------------------------------- helpers
    def barrier(self) -> None:
        """Barrier over the whole grid."""
        self.cart.Barrier()

    def describe(self) -> str:
        """One line describing the grid (for logs)."""
        return (
            f"lattice {list(self.shape)} on {self.comm.Get_size()} ranks: "
            f"{self.replicas} replica(s) x grid {list(self.grid)} "
            f"(local {list(self.local_shape)})"
        )

    def free(self) -> None:
        """Release the communicators this grid created (once; a single-rank grid also
        releases them when it is garbage collected)."""
        if self._release is not None:
            self._release()
            return
        _free_comms((self.cart, self.domain_comm, self.replica_comm))


def _free_comms(comms: tuple[MPI.Comm, ...]) -> None:
    """``Free`` each communicator that is not null (nothing after ``MPI_Finalize``)."""
    if MPI.Is_finalized():
        return
    for c in comms:
        if c != MPI.COMM_NULL:
            c.Free()


def single_rank_grid(shape: Sequence[int]) -> ProcessGrid:
    """A grid holding the whole lattice on this rank alone (``MPI.COMM_SELF``).

    Used for the single-rank reference in tests and for small serial work (I/O on root).
    """
    return ProcessGrid(tuple(shape), comm=MPI.COMM_SELF)
