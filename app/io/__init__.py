"""Ensemble and configuration file I/O (one module per job; see docs/formats.md).

* ``lime`` - LIME records; ``scidac_checksum`` - SciDAC CRC32 checksum (distributed);
* ``ildg`` - ILDG/SciDAC SU(3) files, parallel MPI-IO; ``nersc`` - NERSC archive files;
* ``hdf5`` - HDF5 ensembles (configs, observables, metadata);
* ``atomic`` - atomic file replacement used by every writer;
* ``convert`` / ``info`` - ``trivhmc convert`` and ``trivhmc info``;
* ``gauge_stats`` - plaquette, link trace, unitarity checks in numpy (grid-independent sums
  via ``exact_sum``); ``formats`` - format detection; ``errors`` - exceptions and warnings.

Submodules are imported on demand (``from app.io.ildg import read_ildg``).
"""
