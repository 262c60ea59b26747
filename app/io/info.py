"""Summary of a configuration file for ``trivhmc info FILE [--json]``.

Reports the format, lattice, precision, checksum status, plaquette (total, spatial,
temporal), link trace and unitarity of the links, computed in numpy on the global array
(see gauge_stats.py for the conventions), plus the values the file's header states. A
corrupt checksum is *reported* here (status ``"mismatch"`` with both values) rather than
raised; structural damage (truncation, not a known format) still raises. A decoded payload
that is not a valid field (non-finite, not unitary to the file's precision, lattice not the
header's) is reported as ``valid: false`` with ``problem`` (the reader's message); the
``info`` command then exits non-zero.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from . import gauge_stats
from .errors import InvalidFieldError, MissingChecksumWarning
from .formats import detect_format
from .hdf5 import (
    check_config,
    config_checksum_status,
    open_ensemble,
    read_config,
    read_metadata,
)
from .ildg import read_ildg
from .nersc import read_nersc
from .scidac_checksum import format_checksum
from .validate import check_links


def _links_summary(links: np.ndarray) -> dict[str, Any]:
    plaq = gauge_stats.plaquette(links)
    return {
        "plaquette": plaq.total,
        "plaquette_spatial": plaq.spatial,
        "plaquette_temporal": plaq.temporal,
        "link_trace": gauge_stats.link_trace(links),
        "unitarity_deviation": gauge_stats.unitarity_deviation(links),
    }


def _problem(check) -> str | None:
    try:
        check()
    except InvalidFieldError as err:
        return str(err)
    return None


def config_info(path: str | os.PathLike, index: int = -1) -> dict[str, Any]:
    """A JSON-serialisable description of the configuration file at ``path``."""
    fmt = detect_format(path)
    problem: str | None = None
    out: dict[str, Any] = {"path": str(path), "format": fmt}
    if fmt == "ildg":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingChecksumWarning)
            links, info = read_ildg(
                path, verify_checksum=False, check_unitarity=False, check_header=False
            )
        out.update(
            lattice=list(info.lattice),
            precision=info.precision,
            lfn=info.lfn,
            records=[r.type for r in info.records],
            checksum={
                "kind": "scidac",
                "status": info.checksum_status,
                "file": None
                if info.checksum_file is None
                else [format_checksum(v) for v in info.checksum_file],
                "computed": [format_checksum(v) for v in info.checksum_data],
            },
            header_plaquette=info.plaquette_header,
            header_link_trace=info.link_trace_header,
        )
        with warnings.catch_warnings():  # the reader's own verdict, with its byte-order hint
            warnings.simplefilter("ignore", MissingChecksumWarning)
            problem = _problem(lambda: read_ildg(path, verify_checksum=False, check_header=False))
    elif fmt == "nersc":
        links, info = read_nersc(
            path, verify_checksum=False, check_header=False, check_unitarity=False
        )
        out.update(
            lattice=list(info.lattice),
            precision=info.precision,
            datatype=info.datatype,
            floating_point=info.floating_point,
            checksum={
                "kind": "nersc",
                "status": info.checksum_status,
                "file": None if info.checksum_file is None else f"{info.checksum_file:x}",
                "computed": f"{info.checksum_data:x}",
            },
            header_plaquette=info.plaquette_header,
            header_link_trace=info.link_trace_header,
        )
        fp = info.floating_point
        problem = _problem(
            lambda: check_links(
                links, str(path), info.precision, hint=lambda: f"FLOATING_POINT = {fp} wrong?"
            )
        )
    else:
        meta = read_metadata(path)
        out.update(
            lattice=meta.get("lattice"),
            theory=meta.get("theory"),
            parameters=meta.get("parameters"),
            sampler=meta.get("sampler"),
            n_configs=meta["n_configs"],
            n_trajectories=meta["n_trajectories"],
            code_version=meta.get("code_version"),
            flow_hash=meta.get("flow_hash") or None,
        )
        if not meta["n_configs"]:
            return out
        out["precision"] = "double" if "128" in meta["config_dtype"] else meta["config_dtype"]
        links = read_config(path, index, verify=False)
        with open_ensemble(path, "r") as f:  # no file lock: safe on a running run
            try:
                out["checksum"] = config_checksum_status(f, index, links)
            except InvalidFieldError as err:
                problem = str(err)
        if problem is None:
            problem = _problem(lambda: check_config(links, str(path), meta.get("theory")))
        out["valid"], out["problem"] = problem is None, problem
        is_su3 = links.ndim == 7 and links.shape[0] == 4 and links.shape[-2:] == (3, 3)
        if not is_su3 or problem is not None:
            return out
        out.update(_links_summary(links))
        return out
    out["valid"], out["problem"] = problem is None, problem
    out.update(_links_summary(links))
    return out
