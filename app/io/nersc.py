"""NERSC ("Gauge Connection archive") SU(3) configurations: reader and writer.

File: an ASCII header ::

    BEGIN_HEADER
    DATATYPE = 4D_SU3_GAUGE_3x3        (or 4D_SU3_GAUGE: the first two rows only)
    DIMENSION_1 = 8 ... DIMENSION_4 = 4
    CHECKSUM = b379560a
    LINK_TRACE = 0.005406083858
    PLAQUETTE = 0.5038664469
    FLOATING_POINT = IEEE64BIG         (IEEE32BIG, IEEE64LITTLE, IEEE32LITTLE; IEEE32 = BIG)
    END_HEADER

followed by the links in the ILDG site order: ``[t][z][y][x][mu][row][col]`` complex, with
``row`` running over 3 rows (3x3) or 2 rows (the third is ``conj(row1 x row2)``).

* ``CHECKSUM``: the 32-bit wrapping sum of the *stored* 32-bit words (read in the file's byte
  order), as MILC and Grid compute it (for 2-row files: of the 2 stored rows).
* ``PLAQUETTE``: ``<Re Tr U_P>/3`` over sites and 6 planes; ``LINK_TRACE``: ``<Re Tr U>/3``.

Reading and writing run on the root rank of the grid's domain group (serial file I/O), then
the field is scattered / gathered. The writer produces ``4D_SU3_GAUGE_3x3``, ``IEEE64BIG``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parallel import ProcessGrid, gather_to_root, scatter_from_root, single_rank_grid

from . import gauge_stats
from .atomic import atomic_write
from .collective import on_root
from .errors import ChecksumError, ConfigFormatError
from .ildg import NC, ND, _as_links, _check_grid, file_order_to_links
from .paths import check_output_dir
from .validate import check_links

BEGIN = b"BEGIN_HEADER"
END = b"END_HEADER"
MAX_HEADER = 1 << 16


@dataclass
class NerscInfo:
    """Header of a NERSC file plus what the reader checked."""

    path: str
    lattice: tuple[int, ...]
    datatype: str
    floating_point: str
    precision: str
    header: dict[str, str] = field(default_factory=dict)
    checksum_file: int | None = None
    checksum_data: int = 0
    plaquette_header: float | None = None
    link_trace_header: float | None = None
    data_offset: int = 0

    @property
    def checksum_status(self) -> str:
        """``ok``, ``mismatch`` or ``missing``: the header checksum against the data's."""
        if self.checksum_file is None:
            return "missing"
        return "ok" if self.checksum_file == self.checksum_data else "mismatch"


def is_nersc(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the NERSC ``BEGIN_HEADER`` line."""
    with open(path, "rb") as f:
        return f.read(len(BEGIN)) == BEGIN


def _parse_header(path: str) -> tuple[dict[str, str], int]:
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER)
    if not head.startswith(BEGIN):
        raise ConfigFormatError(f"{path} is not a NERSC file: it does not start with BEGIN_HEADER")
    end = head.find(END)
    if end < 0:
        raise ConfigFormatError(f"{path}: no END_HEADER in the first {MAX_HEADER} bytes")
    nl = head.find(b"\n", end)
    if nl < 0:
        raise ConfigFormatError(f"{path}: END_HEADER is not followed by a newline (truncated?)")
    header: dict[str, str] = {}
    for line in head[len(BEGIN) : end].decode("ascii", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip().upper()] = value.strip()
    return header, nl + 1


def _floating_point(fp: str, path: str) -> tuple[str, str]:
    """``IEEE64BIG`` -> (numpy complex dtype, precision name)."""
    s = fp.strip().upper()
    if s.startswith("IEEE64"):
        bits, rest = 64, s[6:]
    elif s.startswith("IEEE32"):
        bits, rest = 32, s[6:]
    else:
        raise ConfigFormatError(f"{path}: unsupported FLOATING_POINT = {fp!r}")
    if rest in ("", "BIG"):
        endian = ">"
    elif rest in ("LITTLE", "SMALL"):
        endian = "<"
    else:
        raise ConfigFormatError(f"{path}: unsupported byte order in FLOATING_POINT = {fp!r}")
    return f"{endian}c{bits // 4}", ("double" if bits == 64 else "single")


def nersc_checksum(data: np.ndarray, byteorder: str) -> int:
    """32-bit wrapping sum of the 32-bit words of ``data`` (raw bytes) in ``byteorder``."""
    words = np.ascontiguousarray(data).reshape(-1).view(f"{byteorder}u4")
    return int(words.sum(dtype=np.uint64) & np.uint64(0xFFFFFFFF))


def _layout(header: dict[str, str], path: str) -> tuple[tuple[int, ...], str, int]:
    """``(lattice, DATATYPE, stored rows per link)`` from a NERSC header."""
    try:
        lattice = tuple(int(header[f"DIMENSION_{i}"]) for i in range(1, ND + 1))
    except KeyError as err:
        raise ConfigFormatError(f"{path}: header has no {err.args[0]}") from None
    except ValueError as err:
        raise ConfigFormatError(f"{path}: bad lattice dimension ({err})") from None
    datatype = header.get("DATATYPE", "")
    if datatype == "4D_SU3_GAUGE_3x3":
        return lattice, datatype, 3
    if datatype == "4D_SU3_GAUGE":
        return lattice, datatype, 2
    raise ConfigFormatError(f"{path}: unsupported DATATYPE = {datatype!r}")


def _header_numbers(info: NerscInfo, header: dict[str, str], path: str) -> None:
    """The header's CHECKSUM, PLAQUETTE and LINK_TRACE into ``info`` (clear errors)."""
    if "CHECKSUM" in header:
        try:
            info.checksum_file = int(header["CHECKSUM"].lower().removeprefix("0x"), 16)
        except ValueError:
            raise ConfigFormatError(f"{path}: bad CHECKSUM = {header['CHECKSUM']!r}") from None
    for key, attr in (("PLAQUETTE", "plaquette_header"), ("LINK_TRACE", "link_trace_header")):
        if key in header:
            try:
                setattr(info, attr, float(header[key]))
            except ValueError:
                raise ConfigFormatError(f"{path}: bad {key} = {header[key]!r}") from None


def _read_global(
    path: str,
    verify_checksum: bool,
    check_header: bool,
    header_tol: float,
    check_unitarity: bool = True,
    unitarity_tol: float | None = None,
) -> tuple[np.ndarray, NerscInfo]:
    header, offset = _parse_header(path)
    lattice, datatype, rows = _layout(header, path)
    fp = header.get("FLOATING_POINT", "IEEE32BIG")
    dtype, precision = _floating_point(fp, path)
    volume = int(np.prod(lattice))
    count = volume * ND * rows * NC
    nbytes = count * np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size - offset < nbytes:
        raise ConfigFormatError(
            f"truncated NERSC file {path}: lattice {list(lattice)} ({datatype}, {fp}) needs "
            f"{nbytes} bytes of links after the header, the file has {size - offset}"
        )
    if size - offset > nbytes:
        raise ConfigFormatError(
            f"{path}: {size - offset} bytes after the header, expected {nbytes} for lattice "
            f"{list(lattice)} ({datatype}, {fp})"
        )
    data = np.fromfile(path, dtype=dtype, count=count, offset=offset)

    info = NerscInfo(
        path=path,
        lattice=lattice,
        datatype=datatype,
        floating_point=fp,
        precision=precision,
        header=header,
        checksum_data=nersc_checksum(data, dtype[0]),
        data_offset=offset,
    )
    _header_numbers(info, header, path)

    if verify_checksum and info.checksum_status == "mismatch":
        raise ChecksumError(
            f"NERSC checksum mismatch in {path}: the header says {info.checksum_file:x}, the "
            f"data give {info.checksum_data:x} (corrupted payload or wrong FLOATING_POINT)"
        )

    block = data.reshape(*lattice[::-1], ND, rows, NC).astype(np.complex128)
    if rows == 2:
        block = gauge_stats.reconstruct_third_row(block)
    links = file_order_to_links(block)
    if check_unitarity:
        check_links(
            links,
            path,
            precision,
            hint=lambda: f"wrong FLOATING_POINT = {fp} (byte order or precision) or corrupted data",
            tol=unitarity_tol,
        )
    if check_header:
        checks = (
            ("PLAQUETTE", info.plaquette_header, lambda: gauge_stats.plaquette(links).total),
            ("LINK_TRACE", info.link_trace_header, lambda: gauge_stats.link_trace(links)),
        )
        for key, stated, compute in checks:
            if stated is not None:
                got = compute()
                if not abs(got - stated) <= header_tol:
                    raise ConfigFormatError(
                        f"{path}: header {key} = {stated!r} but the links give {got!r} "
                        f"(wrong byte order, layout or corrupted data)"
                    )
    return links, info


def read_nersc(
    path: str | os.PathLike,
    grid: ProcessGrid | None = None,
    *,
    verify_checksum: bool = True,
    check_header: bool = True,
    header_tol: float = 1e-6,
    check_unitarity: bool = True,
    unitarity_tol: float | None = None,
    device: Any = None,
) -> tuple[Any, NerscInfo]:
    """Read a NERSC configuration: this rank's block ``(4, lx, ly, lz, lt, 3, 3)`` complex128.

    The root rank of ``grid`` reads and checks the whole file (checksum, and the header
    plaquette and link trace to ``header_tol``), then scatters. Errors are raised on every
    rank. ``grid=None``: the whole lattice on this rank.
    """
    path = str(path)
    if grid is None:
        links, info = _read_global(
            path, verify_checksum, check_header, header_tol, check_unitarity, unitarity_tol
        )
    else:
        pair = on_root(
            lambda: _read_global(
                path, verify_checksum, check_header, header_tol, check_unitarity, unitarity_tol
            ),
            grid.cart,
            broadcast=False,
        )
        info = grid.cart.bcast(None if pair is None else pair[1], root=0)
        if tuple(grid.shape) != tuple(info.lattice):
            raise ConfigFormatError(
                f"{path} holds a {list(info.lattice)} lattice, the grid is for {list(grid.shape)}"
            )
        links = scatter_from_root(None if pair is None else pair[0], grid, first=1)
    if device is not None:
        import torch

        return torch.from_numpy(links).to(device), info
    return links, info


def write_nersc(
    path: str | os.PathLike,
    links_local: Any,
    grid: ProcessGrid | None = None,
    *,
    ensemble_id: str = "trivhmc",
    ensemble_label: str = "",
    sequence_number: int = 0,
    creator: str = "trivhmc",
) -> int | None:
    """Write ``4D_SU3_GAUGE_3x3`` / ``IEEE64BIG`` (gather to root, atomic write on root).

    Returns the NERSC checksum on the root rank, ``None`` elsewhere.
    """
    links, _ = _as_links(links_local)
    if grid is None:
        grid = single_rank_grid(links.shape[1:5])
    _check_grid(links, grid)
    check_output_dir(path, grid.cart)  # before the gather: one clear error on every rank
    full = gather_to_root(links, grid, first=1)
    return on_root(
        lambda: _write_global(path, full, ensemble_id, ensemble_label, sequence_number, creator),
        grid.cart,
        broadcast=False,
    )


def _write_global(
    path: str | os.PathLike,
    full: np.ndarray,
    ensemble_id: str,
    ensemble_label: str,
    sequence_number: int,
    creator: str,
) -> int:
    """Serial NERSC writer of a global configuration (root rank only)."""
    data = np.ascontiguousarray(np.transpose(full, (4, 3, 2, 1, 0, 5, 6)), dtype=">c16")
    checksum = nersc_checksum(data, ">")
    plaq = gauge_stats.plaquette(full).total
    trace = gauge_stats.link_trace(full)
    lx, ly, lz, lt = full.shape[1:5]
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
    items = {
        "HDR_VERSION": "1.0",
        "DATATYPE": "4D_SU3_GAUGE_3x3",
        "STORAGE_FORMAT": "1.0",
        "DIMENSION_1": lx,
        "DIMENSION_2": ly,
        "DIMENSION_3": lz,
        "DIMENSION_4": lt,
        "LINK_TRACE": repr(trace),
        "PLAQUETTE": repr(plaq),
        "BOUNDARY_1": "PERIODIC",
        "BOUNDARY_2": "PERIODIC",
        "BOUNDARY_3": "PERIODIC",
        "BOUNDARY_4": "PERIODIC",
        "CHECKSUM": f"{checksum:x}",
        "ENSEMBLE_ID": ensemble_id,
        "ENSEMBLE_LABEL": ensemble_label,
        "SEQUENCE_NUMBER": int(sequence_number),
        "CREATOR": creator,
        "CREATION_DATE": stamp,
        "FLOATING_POINT": "IEEE64BIG",
    }
    text = "BEGIN_HEADER\n" + "".join(f"{k} = {v}\n" for k, v in items.items())
    head = (text + "END_HEADER\n").encode("ascii")

    def write(f) -> None:
        f.write(head)
        f.write(data.tobytes())

    atomic_write(Path(path), write)
    return checksum
