"""ILDG / SciDAC gauge configurations in LIME files, written and read in parallel with MPI-IO.

Layout in memory (docs/conventions.md): one configuration is a complex array
``U[mu, x, y, z, t, a, b]`` of shape ``(4, Lx, Ly, Lz, Lt, 3, 3)``, ``mu = x, y, z, t``; on a
:class:`parallel.ProcessGrid` each rank holds its block ``(4, lx, ly, lz, lt, 3, 3)``.

Layout in the file (ILDG binary format): the ``ildg-binary-data`` payload is the global array
``[t][z][y][x][mu][a][b]`` (x fastest among sites, t slowest, then ``mu = x, y, z, t``, then
the 3x3 matrix row-major), complex big-endian: ``>c16`` (precision 64, "double") or ``>c8``
(precision 32, "single"). Every rank reads/writes its block with one collective call through
an MPI subarray file view, so the bytes do not depend on the process grid.

Records written, in QIO's order (MB/ME flags as QIO sets them):

1. ``scidac-private-file-xml``  (MB)  ``<scidacFile>``: version, spacetime, dims, volfmt
2. ``scidac-file-xml``          (ME)  ``<usqcdInfo>``: plaq, linktr, info (as Grid writes it)
3. ``scidac-private-record-xml`` (MB) ``<scidacRecord>``: date, QDP_D3_ColorMatrix, ...
4. ``scidac-record-xml``              ``<usqcdInfo>``: version, plaq, linktr, info
5. ``ildg-format``                    ``<ildgFormat xmlns="http://www.lqcd.org/ildg">``
6. ``ildg-data-lfn``                  logical file name (plain text)
7. ``ildg-binary-data``               the links
8. ``scidac-checksum``          (ME)  ``<scidacChecksum>``: suma, sumb (see scidac_checksum.py)

The reader takes records in any order and ignores MB/ME, parses XML by local names (default
namespaces, leading blank lines, trailing NULs), accepts checksums with or without ``0x`` and
leading zeros, and refuses (with :class:`ConfigFormatError`) truncated files, checksum
mismatches, dimensions that do not fit the payload, and payloads that do not decode to
unitary matrices (e.g. little-endian data under an ILDG header). A file without a checksum
record is read with a :class:`MissingChecksumWarning`.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from parallel import ProcessGrid, single_rank_grid

from . import gauge_stats, lime
from .atomic import atomic_path
from .collective import on_root
from .errors import ChecksumError, ConfigFormatError, MissingChecksumWarning
from .paths import check_output_dir
from .scidac_checksum import format_checksum, lexicographic_index, parse_checksum, scidac_checksum
from .validate import check_links
from .xmlutil import clean_text, element, find_text, local_name, parse_xml, to_xml

ND = 4
NC = 3
ILDG_NAMESPACE = "http://www.lqcd.org/ildg"
BINARY_RECORDS = ("ildg-binary-data", "scidac-binary-data")


@dataclass(frozen=True)
class Precision:
    """Floating-point precision of an ILDG payload (name, bits, big-endian numpy dtype,
    QDP letter)."""

    name: str  # "double" | "single"
    bits: int  # 64 | 32
    dtype: str  # big-endian complex numpy dtype
    qdp: str  # "D" | "F"

    @property
    def itemsize(self) -> int:
        """Bytes per complex number."""
        return np.dtype(self.dtype).itemsize

    @property
    def site_bytes(self) -> int:
        """Bytes of the four 3x3 links of one site."""
        return ND * NC * NC * self.itemsize


DOUBLE = Precision("double", 64, ">c16", "D")
SINGLE = Precision("single", 32, ">c8", "F")


def precision_of(value: Any) -> Precision:
    """``"double"/"single"``, ``64/32``, ``"D"/"F"`` -> :class:`Precision`."""
    s = str(value).strip().lower()
    if s in ("double", "64", "d", "f64", "float64"):
        return DOUBLE
    if s in ("single", "32", "f", "f32", "float32"):
        return SINGLE
    raise ValueError(f"unknown precision {value!r}: use 'double' (64) or 'single' (32)")


@dataclass
class IldgInfo:
    """What a reader learned about an ILDG/SciDAC file besides the links."""

    path: str
    lattice: tuple[int, ...]
    precision: str
    lfn: str | None
    checksum_file: tuple[int, int] | None
    checksum_data: tuple[int, int]
    plaquette_header: float | None = None
    link_trace_header: float | None = None
    info: str | None = None
    records: list[lime.LimeRecord] = field(default_factory=list)
    xml: dict[str, str] = field(default_factory=dict)

    @property
    def checksum_status(self) -> str:
        """``"ok"``, ``"missing"`` or ``"mismatch"``."""
        if self.checksum_file is None:
            return "missing"
        return "ok" if self.checksum_file == self.checksum_data else "mismatch"


# ----------------------------------------------------------------------------- layout
def links_to_file_order(links: np.ndarray, dtype: str) -> np.ndarray:
    """``(4, lx, ly, lz, lt, 3, 3)`` -> contiguous ``(lt, lz, ly, lx, 4, 3, 3)`` in ``dtype``."""
    return np.ascontiguousarray(np.transpose(links, (4, 3, 2, 1, 0, 5, 6)), dtype=dtype)


def file_order_to_links(block: np.ndarray) -> np.ndarray:
    """File block ``(lt, lz, ly, lx, 4, 3, 3)`` -> complex128 ``(4, lx, ly, lz, lt, 3, 3)``."""
    return np.ascontiguousarray(np.transpose(block, (4, 3, 2, 1, 0, 5, 6)), dtype=np.complex128)


def _as_links(links: Any) -> tuple[np.ndarray, Any]:
    """numpy view of a configuration (torch tensors accepted; a batch of one squeezed)."""
    device = None
    if hasattr(links, "detach"):  # torch.Tensor
        device = links.device
        links = links.detach().cpu().numpy()
    links = np.asarray(links)
    if links.ndim == 8 and links.shape[0] == 1:
        links = links[0]
    if links.ndim != 7 or links.shape[0] != ND or links.shape[-2:] != (NC, NC):
        raise ValueError(
            f"expected SU(3) links of shape (4, lx, ly, lz, lt, 3, 3) (or a batch of one), "
            f"got {links.shape}"
        )
    return links, device


def _check_grid(links: np.ndarray, grid: ProcessGrid) -> None:
    if grid.ndim != ND:
        raise ValueError(f"ILDG needs a 4-D lattice, the grid has shape {grid.shape}")
    if tuple(links.shape[1:5]) != tuple(grid.local_shape):
        raise ValueError(
            f"links of local shape {links.shape[1:5]} do not match the local domain "
            f"{grid.local_shape} of lattice {grid.shape} on grid {grid.grid}"
        )


def _mpi_types(grid: ProcessGrid, prec: Precision) -> tuple[MPI.Datatype, MPI.Datatype]:
    """(site type, subarray file type) over the global ``[t][z][y][x]`` site array."""
    site = MPI.BYTE.Create_contiguous(prec.site_bytes).Commit()
    filetype = site.Create_subarray(
        list(grid.shape[::-1]),
        list(grid.local_shape[::-1]),
        list(grid.offset[::-1]),
        order=MPI.ORDER_C,
    ).Commit()
    return site, filetype


def _local_checksum(raw: np.ndarray, grid: ProcessGrid, prec: Precision) -> tuple[int, int]:
    sites = raw.reshape(-1, prec.site_bytes)
    idx = lexicographic_index(grid.shape, grid.offset, grid.local_shape).ravel()
    return scidac_checksum(sites, idx, grid.cart)


# ----------------------------------------------------------------------------- writer
def _usqcd_info(plaq: float, linktr: float, info: str) -> bytes:
    el = element(
        "usqcdInfo",
        {"version": "1.0", "plaq": repr(float(plaq)), "linktr": repr(float(linktr)), "info": info},
    )
    return to_xml(el) + b"\0"


def _metadata_records(
    shape: tuple[int, ...],
    prec: Precision,
    lfn: str,
    plaq: float,
    linktr: float,
    info: str,
    date: str,
) -> list[tuple[str, bytes, bool, bool]]:
    """The records before the binary data: (type, payload, MB, ME)."""
    lx, ly, lz, lt = shape
    private_file = element(
        "scidacFile",
        {"version": "1.1", "spacetime": ND, "dims": " ".join(map(str, shape)) + " ", "volfmt": 0},
    )
    private_record = element(
        "scidacRecord",
        {
            "version": "1.1",
            "date": date,
            "recordtype": 0,
            "datatype": f"QDP_{prec.qdp}3_ColorMatrix",
            "precision": prec.qdp,
            "colors": NC,
            "spins": 1,
            "typesize": NC * NC * prec.itemsize,
            "datacount": ND,
        },
    )
    ildg_format = element(
        "ildgFormat",
        {
            "version": "1.0",
            "field": "su3gauge",
            "precision": prec.bits,
            "lx": lx,
            "ly": ly,
            "lz": lz,
            "lt": lt,
        },
        **{
            "xmlns": ILDG_NAMESPACE,
            "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
            "xsi:schemaLocation": "http://www.lqcd.org/ildg/filefmt.xsd",
        },
    )
    usqcd = _usqcd_info(plaq, linktr, info)
    return [
        ("scidac-private-file-xml", to_xml(private_file) + b"\0", True, False),
        ("scidac-file-xml", usqcd, False, True),
        ("scidac-private-record-xml", to_xml(private_record) + b"\0", True, False),
        ("scidac-record-xml", usqcd, False, False),
        ("ildg-format", to_xml(ildg_format) + b"\0", False, False),
        ("ildg-data-lfn", lfn.encode("utf-8"), False, False),
    ]


def _checksum_record(suma: int, sumb: int) -> bytes:
    el = element(
        "scidacChecksum",
        {"version": "1.0", "suma": format_checksum(suma), "sumb": format_checksum(sumb)},
    )
    return lime.record_bytes("scidac-checksum", to_xml(el) + b"\0", mb=False, me=True)


def write_ildg(
    path: str | os.PathLike,
    links_local: Any,
    grid: ProcessGrid | None = None,
    precision: str = "double",
    lfn: str | None = None,
    plaquette: float | None = None,
    link_trace: float | None = None,
    extra_info: str = "",
    date: str | None = None,
) -> tuple[int, int]:
    """Write one SU(3) configuration as an ILDG file (collective over ``grid.cart``).

    ``links_local``: this rank's block ``(4, lx, ly, lz, lt, 3, 3)`` (numpy or torch; with
    ``grid=None`` the whole lattice). ``plaquette``/``link_trace`` go into the usqcdInfo
    records; when ``None`` they are computed (distributed). ``lfn`` defaults to the file
    name; ``date`` (for the scidac-private-record-xml) to the current UTC time. The file is
    replaced atomically. Returns the SciDAC checksum ``(suma, sumb)``.
    """
    links, _ = _as_links(links_local)
    if grid is None:
        grid = single_rank_grid(links.shape[1:5])
    _check_grid(links, grid)
    prec = precision_of(precision)
    comm = grid.cart
    path = Path(path)
    check_output_dir(path, comm)  # before MPI_File_open: one clear error on every rank

    block = links_to_file_order(links, prec.dtype)
    raw = block.view(np.uint8).reshape(-1)
    suma, sumb = _local_checksum(raw, grid, prec)
    if plaquette is None:
        plaquette = gauge_stats.plaquette(links, grid).total
    if link_trace is None:
        link_trace = gauge_stats.link_trace(links, grid)

    nbytes = grid.volume * prec.site_bytes
    head = tail = b""
    data_offset = 0
    if grid.is_root:
        if date is None:
            date = time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime())
        records = _metadata_records(
            grid.shape, prec, path.name if lfn is None else lfn, plaquette, link_trace,
            extra_info, date,
        )  # fmt: skip
        head = b"".join(lime.record_bytes(*r) for r in records)
        head += lime.header_bytes(BINARY_RECORDS[0], nbytes, mb=False, me=False)
        data_offset = len(head)
        tail = b"\0" * lime.padding(nbytes) + _checksum_record(suma, sumb)
    data_offset = comm.bcast(data_offset, root=0)

    site, filetype = _mpi_types(grid, prec)
    try:
        with atomic_path(path, comm) as tmp:
            fh = MPI.File.Open(comm, str(tmp), MPI.MODE_WRONLY | MPI.MODE_CREATE)
            try:
                if grid.is_root:
                    fh.Write_at(0, head)
                    fh.Write_at(data_offset + nbytes, tail)
                fh.Set_view(data_offset, MPI.BYTE, filetype, "native")
                fh.Write_all([raw, grid.local_volume, site])
                fh.Sync()
            finally:
                fh.Close()
    finally:
        filetype.Free()
        site.Free()
    return suma, sumb


# ----------------------------------------------------------------------------- reader
@dataclass
class _Header:
    """Everything rank 0 learns from the metadata records (broadcast to all ranks)."""

    lattice: tuple[int, ...]
    prec: Precision
    binary: lime.LimeRecord
    checksum: tuple[int, int] | None
    lfn: str | None
    plaq: float | None
    linktr: float | None
    info: str | None
    records: list[lime.LimeRecord]
    xml: dict[str, str]


def _xml_int(root, name: str, what: str) -> int:
    text = find_text(root, name)
    if text is None:
        raise ConfigFormatError(f"{what}: no <{name}> element")
    try:
        return int(text)
    except ValueError:
        raise ConfigFormatError(f"{what}: <{name}> is {text!r}, not an integer") from None


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _metadata_texts(f, name: str) -> tuple[list, dict[str, str]]:
    """Every record header and the text of each small (metadata) record, by type."""
    records = list(lime.iter_records(f, name))
    texts: dict[str, str] = {}
    for rec in records:
        if rec.type in BINARY_RECORDS or rec.type in texts:
            continue
        if rec.length > 1 << 20:  # metadata records are small; do not slurp payloads
            continue
        texts[rec.type] = clean_text(lime.read_payload(f, rec))
    return records, texts


def _lattice_and_precision(texts: dict[str, str], name: str) -> tuple[tuple[int, ...], Precision]:
    """Lattice size and precision from the ildg-format record, else SciDAC private XML."""
    lattice: tuple[int, ...] | None = None
    prec: Precision | None = None
    if "ildg-format" in texts:
        what = f"{name}: ildg-format record"
        root = parse_xml(texts["ildg-format"], what)
        if local_name(root.tag) != "ildgFormat":
            raise ConfigFormatError(f"{what}: root element <{local_name(root.tag)}>")
        fld = find_text(root, "field")
        if fld is not None and fld.lower() != "su3gauge":
            raise ConfigFormatError(f"{what}: field is {fld!r}, only su3gauge is supported")
        lattice = tuple(_xml_int(root, k, what) for k in ("lx", "ly", "lz", "lt"))
        prec = precision_of(find_text(root, "precision"))
    else:
        if "scidac-private-file-xml" in texts:
            what = f"{name}: scidac-private-file-xml record"
            dims = find_text(parse_xml(texts["scidac-private-file-xml"], what), "dims")
            lattice = tuple(int(d) for d in (dims or "").split())
        if "scidac-private-record-xml" in texts:
            what = f"{name}: scidac-private-record-xml record"
            p = find_text(parse_xml(texts["scidac-private-record-xml"], what), "precision")
            prec = precision_of(p) if p else None
        if lattice is None or prec is None:
            raise ConfigFormatError(
                f"{name}: neither an ildg-format record nor SciDAC private XML giving the "
                f"lattice size and precision"
            )
    if len(lattice) != ND or any(n < 1 for n in lattice):
        raise ConfigFormatError(f"{name}: lattice dims {list(lattice)} are not 4 positive sizes")
    return lattice, prec


def _check_payload_size(binary, lattice: tuple[int, ...], prec: Precision, name: str) -> None:
    """The binary record must hold exactly the header's lattice at its precision."""
    volume = int(np.prod(lattice))
    expected = volume * prec.site_bytes
    if binary.length == expected:
        return
    hint = ""
    other = SINGLE if prec is DOUBLE else DOUBLE
    if binary.length == volume * other.site_bytes:
        hint = f" (that size would fit precision {other.bits}, not {prec.bits})"
    elif binary.length % prec.site_bytes == 0:
        hint = f" (the payload holds {binary.length // prec.site_bytes} sites, not {volume})"
    raise ConfigFormatError(
        f"{name}: lattice dims {list(lattice)} at precision {prec.bits} in the header "
        f"need {expected} bytes of links, but {binary.type} holds {binary.length}{hint}"
    )


def _checksum_of(texts: dict[str, str], name: str) -> tuple[int, int] | None:
    """``(suma, sumb)`` of the scidac-checksum record, or None without one."""
    if "scidac-checksum" not in texts:
        return None
    what = f"{name}: scidac-checksum record"
    root = parse_xml(texts["scidac-checksum"], what)
    a, b = find_text(root, "suma"), find_text(root, "sumb")
    if a is None or b is None:
        raise ConfigFormatError(f"{what}: needs <suma> and <sumb>")
    try:
        return (parse_checksum(a), parse_checksum(b))
    except ValueError as err:
        raise ConfigFormatError(f"{what}: {err}") from None


def _plaquette_info(
    texts: dict[str, str], name: str
) -> tuple[float | None, float | None, str | None]:
    """``(plaq, linktr, info)`` of a usqcdInfo record (Chroma/QIO) or tmLQCD's xlf-info."""
    plaq = linktr = None
    info = None
    for rtype in ("scidac-record-xml", "scidac-file-xml"):
        text = texts.get(rtype, "")
        if "usqcdInfo" in text:
            root = parse_xml(text, f"{name}: {rtype} record")
            if local_name(root.tag) == "usqcdInfo":
                plaq = _float_or_none(find_text(root, "plaq"))
                linktr = _float_or_none(find_text(root, "linktr"))
                info = find_text(root, "info")
                break
    if plaq is None and "xlf-info" in texts:  # tmLQCD: "plaquette = 1.000000000000"
        info = texts["xlf-info"]
        for line in info.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "plaquette":
                plaq = _float_or_none(value.strip())
    return plaq, linktr, info


def _scan(path: str) -> _Header:
    """Read and check the metadata records of an ILDG/SciDAC file (serial)."""
    name = str(path)
    with open(path, "rb") as f:
        records, texts = _metadata_texts(f, name)
    binary = next((r for t in BINARY_RECORDS for r in records if r.type == t), None)
    if binary is None:
        types = ", ".join(r.type for r in records) or "none"
        raise ConfigFormatError(f"{name}: no ildg-binary-data record (records: {types})")
    lattice, prec = _lattice_and_precision(texts, name)
    _check_payload_size(binary, lattice, prec, name)
    checksum = _checksum_of(texts, name)
    plaq, linktr, info = _plaquette_info(texts, name)
    return _Header(
        lattice=lattice,
        prec=prec,
        binary=binary,
        checksum=checksum,
        lfn=texts.get("ildg-data-lfn"),
        plaq=plaq,
        linktr=linktr,
        info=info,
        records=records,
        xml=texts,
    )


def read_ildg_header(path: str | os.PathLike, comm: MPI.Comm | None = None) -> _Header:
    """Scan an ILDG/SciDAC file's records (on rank 0 of ``comm``) without reading the links."""
    return on_root(lambda: _scan(str(path)), MPI.COMM_SELF if comm is None else comm)


def _endianness_hint(block: np.ndarray, prec: Precision) -> str:
    """Explain non-unitary links: would the byte-swapped payload be unitary?"""
    swapped = block.view(prec.dtype.replace(">", "<")).astype(np.complex128)
    sample = swapped.reshape(-1, NC, NC)[:64]
    with np.errstate(all="ignore"):
        dev = gauge_stats.unitarity_deviation(sample[None])
    if dev < 1e-5:
        return (
            "the payload is little-endian although the file claims the ILDG format "
            "(ILDG binary data must be big-endian)"
        )
    return "the payload is not big-endian SU(3) data in ILDG order (wrong endianness or layout?)"


def read_ildg(
    path: str | os.PathLike,
    grid: ProcessGrid | None = None,
    *,
    verify_checksum: bool = True,
    check_unitarity: bool = True,
    check_header: bool = True,
    unitarity_tol: float | None = None,
    header_tol: float = 1e-5,
    device: Any = None,
) -> tuple[Any, IldgInfo]:
    """Read an ILDG/SciDAC SU(3) configuration (collective over ``grid.cart``).

    Returns this rank's block ``(4, lx, ly, lz, lt, 3, 3)`` complex128 (numpy, or a torch
    tensor on ``device`` when given) and an :class:`IldgInfo`. With ``grid=None`` the whole
    lattice is read on this rank. Raises :class:`ChecksumError` on a checksum mismatch
    (unless ``verify_checksum=False``), :class:`InvalidFieldError` when the links are not
    finite or not unitary to ``unitarity_tol`` (default: by the file's precision,
    :mod:`app.io.validate`; with the byte-order diagnosis), :class:`ConfigFormatError` for every
    other defect;
    warns with :class:`MissingChecksumWarning` when the file has no checksum.
    """
    path = str(path)
    comm = MPI.COMM_SELF if grid is None else grid.cart
    hdr = read_ildg_header(path, comm)
    if grid is None:
        grid = single_rank_grid(hdr.lattice)
    if tuple(grid.shape) != tuple(hdr.lattice):
        raise ConfigFormatError(
            f"{path} holds a {list(hdr.lattice)} lattice, the grid is for {list(grid.shape)}"
        )
    prec = hdr.prec

    site, filetype = _mpi_types(grid, prec)
    raw = np.empty(grid.local_volume * prec.site_bytes, dtype=np.uint8)
    try:
        fh = MPI.File.Open(comm, path, MPI.MODE_RDONLY)
        try:
            fh.Set_view(hdr.binary.offset, MPI.BYTE, filetype, "native")
            fh.Read_all([raw, grid.local_volume, site])
        finally:
            fh.Close()
    finally:
        filetype.Free()
        site.Free()

    checksum = _local_checksum(raw, grid, prec)
    info = IldgInfo(
        path=path,
        lattice=hdr.lattice,
        precision=prec.name,
        lfn=hdr.lfn,
        checksum_file=hdr.checksum,
        checksum_data=checksum,
        plaquette_header=hdr.plaq,
        link_trace_header=hdr.linktr,
        info=hdr.info,
        records=hdr.records,
        xml=hdr.xml,
    )
    if hdr.checksum is None:
        warnings.warn(
            f"{path} has no scidac-checksum record; the links could not be verified "
            f"(computed suma={format_checksum(checksum[0])} sumb={format_checksum(checksum[1])})",
            MissingChecksumWarning,
            stacklevel=2,
        )
    elif verify_checksum and hdr.checksum != checksum:
        fa, fb = hdr.checksum
        raise ChecksumError(
            f"SciDAC checksum mismatch in {path}: the file records suma={format_checksum(fa)} "
            f"sumb={format_checksum(fb)}, the data give suma={format_checksum(checksum[0])} "
            f"sumb={format_checksum(checksum[1])} (corrupted or truncated payload)"
        )

    block = raw.view(prec.dtype).reshape(*grid.local_shape[::-1], ND, NC, NC)
    with np.errstate(all="ignore"):
        links = file_order_to_links(block)
    if check_unitarity:
        check_links(
            links,
            path,
            prec.name,
            grid,
            hint=lambda: on_root(lambda: _endianness_hint(block, prec), comm),
            tol=unitarity_tol,
        )
    if check_header and (hdr.plaq is not None or hdr.linktr is not None):
        _check_header_values(path, links, grid, hdr.plaq, hdr.linktr, header_tol)

    if device is not None:
        import torch

        return torch.from_numpy(links).to(device), info
    return links, info


def _check_header_values(
    path: str,
    links: np.ndarray,
    grid: ProcessGrid,
    plaq: float | None,
    linktr: float | None,
    tol: float,
) -> None:
    """Compare the plaquette / link trace stated in the file with the links (``tol`` absolute)."""
    if plaq is not None:
        got = gauge_stats.plaquette(links, grid).total
        if not abs(got - plaq) <= tol:
            raise ConfigFormatError(
                f"{path}: the header states plaquette {plaq!r} but the links give {got!r}"
            )
    if linktr is not None:
        got = gauge_stats.link_trace(links, grid)
        if not abs(got - linktr) <= tol:
            raise ConfigFormatError(
                f"{path}: the header states link trace {linktr!r} but the links give {got!r}"
            )
