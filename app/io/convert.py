"""Convert one SU(3) configuration between ILDG, NERSC and HDF5 (``trivhmc convert``).

Serial (one rank; ``trivhmc convert`` under MPI converts on world rank 0 and raises its
error on every rank). The target's directory must exist and be writable
(:class:`app.io.paths.OutputPathError`, exit status 2). Reading verifies the source
(checksums, unitarity, header values); the output is written atomically in double
precision unless ``precision="single"`` (ILDG only). An HDF5 source must hold SU(3) links
``(4, Lx, Ly, Lz, Lt, 3, 3)``; ``index`` picks the configuration (default: the last). An
HDF5 target is a new one-configuration ensemble file whose metadata name the source.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import code_version
from .errors import ConfigFormatError
from .formats import FORMATS, detect_format, format_from_name
from .hdf5 import EnsembleWriter, read_config, read_metadata
from .ildg import read_ildg, write_ildg
from .nersc import read_nersc, write_nersc
from .paths import check_output_dir


def read_any(path: str | os.PathLike, index: int = -1) -> tuple[np.ndarray, dict[str, Any]]:
    """Global SU(3) links of any supported file plus a small description of the source."""
    fmt = detect_format(path)
    if fmt == "ildg":
        links, info = read_ildg(path)
        return links, {"format": fmt, "trajectory": 0, "lfn": info.lfn}
    if fmt == "nersc":
        links, info = read_nersc(path)
        seq = info.header.get("SEQUENCE_NUMBER", "0")
        return links, {"format": fmt, "trajectory": int(seq) if seq.isdigit() else 0}
    meta = read_metadata(path)
    links = read_config(path, index)
    if links.ndim != 7 or links.shape[0] != 4 or links.shape[-2:] != (3, 3):
        raise ConfigFormatError(
            f"{path}: configuration of shape {links.shape} (theory {meta.get('theory')!r}) is "
            f"not an SU(3) gauge field (4, Lx, Ly, Lz, Lt, 3, 3)"
        )
    n = meta["n_configs"]
    traj = meta["config_trajectory"][index if index >= 0 else n + index]
    return links, {"format": fmt, "trajectory": int(traj), "theory": meta.get("theory")}


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str | None = None,
    *,
    index: int = -1,
    precision: str = "double",
) -> str:
    """Convert ``src`` to ``dst`` in format ``to`` (default: from ``dst``'s suffix).

    Returns the format written.
    """
    fmt = to or format_from_name(dst)
    if fmt not in FORMATS:
        raise ValueError(
            f"cannot tell the target format of {dst}: pass to= one of {', '.join(FORMATS)} "
            f"(or use a .lime/.ildg, .nersc, .h5/.hdf5 suffix)"
        )
    check_output_dir(dst)  # before the (long) read: a missing directory is one clear error
    links, source = read_any(src, index)
    if fmt == "ildg":
        write_ildg(dst, links, precision=precision, extra_info=f"converted from {src}")
    elif fmt == "nersc":
        if precision != "double":
            raise ValueError("the NERSC writer writes double precision (IEEE64BIG) only")
        write_nersc(dst, links, sequence_number=source["trajectory"])
    else:
        writer = EnsembleWriter(
            dst,
            theory_name=source.get("theory") or "su3",
            params={},
            lattice=links.shape[1:5],
            sampler={"name": "converted", "source": str(src), "source_format": source["format"]},
            seed=None,
            code_version=code_version(),
            deck_text="",
        )
        writer.append_config(links, source["trajectory"], first=1)
        writer.close()
    return fmt
