"""Ensemble output of a run: one HDF5 ensemble per chain and SU(3) configuration files.

``ensemble_c<chain>.h5`` (app/io/hdf5.py) is written by the domain root of the chain's replica
group: observables every measured trajectory, configurations every ``save_every``; ILDG and
NERSC files go to ``configs/<name>_c<chain>_<traj>.lime|.nersc`` (collective MPI-IO writes).
"""

from __future__ import annotations

from app import code_version


def open_ensembles(deck, grid, theory, chains, offset, out, resume, flow_hash=None):
    """One HDF5 ensemble per chain (``ensemble_c<chain>.h5``), written by its domain root."""
    if "hdf5" not in deck.output.formats:
        return Writers()
    from app.io.hdf5 import EnsembleWriter

    writers = []
    for b in range(chains):
        path = out / f"ensemble_c{offset + b}.h5"
        exists = path.exists() if grid.is_root else False
        exists = grid.cart.bcast(exists, root=0)
        w = EnsembleWriter(
            path,
            deck.theory.name,
            deck.theory.model_dump(mode="json", by_alias=True, exclude={"name"}),
            deck.lattice.shape,
            deck.sampler.model_dump(mode="json", by_alias=True),
            deck.run.seed,
            code_version(),
            deck_text=deck.text,
            flow_hash=flow_hash,
            grid=grid,
            mode="a" if (resume and exists) else "w",
        )
        writers.append((w, b))
    return Writers(writers)


class Writers(list):
    """List of (writer, chain) with a truncate applied to every writer."""

    def truncate_after(self, trajectory: int) -> None:
        """Drop every writer's rows after ``trajectory`` (resume from a checkpoint)."""
        for w, _ in self:
            w.truncate_after(trajectory)


def save_configs(deck, grid, theory, physical, traj, offset, out, writers) -> None:
    """Append ``physical`` to the HDF5 ensembles and write the ILDG/NERSC files of
    trajectory ``traj``."""
    for w, b in writers:  # numbered by the 1-based trajectory count, as the files below
        w.append_config(physical[b], traj + 1, grid, first=theory.first - 1)
    fmts = deck.output.formats
    if "ildg" in fmts or "nersc" in fmts:
        name = deck.output_dir.name
        for b in range(physical.shape[0]):
            links = physical[b]
            # files numbered by the 1-based trajectory count (records' "trajectory" + 1)
            stem = out / "configs" / f"{name}_c{offset + b}_{traj + 1:06d}"
            if "ildg" in fmts:
                from app.io.ildg import write_ildg

                lfn = f"{deck.output.ildg_lfn}{traj + 1}" if deck.output.ildg_lfn else None
                prec = "double" if deck.output.ildg_precision == 64 else "single"
                write_ildg(stem.with_suffix(".lime"), links, grid, precision=prec, lfn=lfn)
            if "nersc" in fmts:
                from app.io.nersc import write_nersc

                write_nersc(
                    stem.with_suffix(".nersc"),
                    links,
                    grid,
                    ensemble_label=f"{name}_c{offset + b}",  # the run and its chain
                    sequence_number=traj + 1,
                )
