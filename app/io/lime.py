"""LIME (Lattice QCD Interchange Message Encapsulation) records, as used by ILDG and SciDAC.

A LIME file is a sequence of records. Each record is a 144-byte big-endian header

====== ====== ===============================================================
bytes  type   content
====== ====== ===============================================================
0-3    u32    magic number ``0x456789ab``
4-5    u16    format version (1)
6-7    u16    flags: bit 15 = MB (message begin), bit 14 = ME (message end)
8-15   u64    payload length in bytes (without padding)
16-143 char   record type, NUL padded (e.g. ``ildg-binary-data``)
====== ====== ===============================================================

followed by the payload, zero-padded to a multiple of 8 bytes. Writers set MB/ME
differently, so the reader here ignores them. Records are listed lazily: only the headers
are read, never the binary payloads.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from .errors import ConfigFormatError

LIME_MAGIC = 0x456789AB
LIME_VERSION = 1
HEADER_SIZE = 144
TYPE_SIZE = 128
_HEADER = struct.Struct(">IHHQ")
_MB = 0x8000
_ME = 0x4000


class LimeError(ConfigFormatError):
    """A LIME file is malformed or truncated."""


@dataclass(frozen=True)
class LimeRecord:
    """One record: its type, where its payload starts and how long it is (unpadded)."""

    type: str
    offset: int
    length: int
    mb: bool = False
    me: bool = False

    @property
    def end(self) -> int:
        """Offset of the next record header (payload plus padding)."""
        return self.offset + self.length + padding(self.length)


def padding(length: int) -> int:
    """Zero bytes after a payload of ``length`` bytes (to a multiple of 8)."""
    return (-length) % 8


def header_bytes(rtype: str, length: int, mb: bool = False, me: bool = False) -> bytes:
    """The 144-byte header of a record of type ``rtype`` with a ``length``-byte payload."""
    name = rtype.encode("ascii")
    if len(name) >= TYPE_SIZE:
        raise ValueError(f"LIME record type {rtype!r} longer than {TYPE_SIZE - 1} bytes")
    flags = (_MB if mb else 0) | (_ME if me else 0)
    return _HEADER.pack(LIME_MAGIC, LIME_VERSION, flags, length) + name.ljust(TYPE_SIZE, b"\0")


def record_bytes(rtype: str, payload: bytes, mb: bool = False, me: bool = False) -> bytes:
    """A complete record: header, payload, padding."""
    return header_bytes(rtype, len(payload), mb, me) + payload + b"\0" * padding(len(payload))


def write_record(f: IO[bytes], rtype: str, payload: bytes, mb: bool = False, me: bool = False):
    """Append a record to the open binary file ``f``; return the payload offset."""
    f.write(header_bytes(rtype, len(payload), mb, me))
    offset = f.tell()
    f.write(payload)
    f.write(b"\0" * padding(len(payload)))
    return offset


def is_lime(path: str | os.PathLike) -> bool:
    """True when the file starts with the LIME magic number."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack(">I", head)[0] == LIME_MAGIC


def iter_records(f: IO[bytes], name: str = "<file>") -> Iterator[LimeRecord]:
    """Yield the records of the open LIME file ``f`` (headers only; payloads are skipped).

    Raises :class:`LimeError` if the file is not LIME, a header is damaged, or a payload
    runs past the end of the file. A missing final padding is tolerated.
    """
    size = os.fstat(f.fileno()).st_size
    pos = 0
    index = 0
    while pos < size:
        f.seek(pos)
        raw = f.read(HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            if index == 0:
                raise LimeError(f"{name} is not a LIME file: only {size} bytes")
            raise LimeError(
                f"truncated LIME file {name}: record header {index} at byte {pos} has "
                f"{len(raw)} of {HEADER_SIZE} bytes"
            )
        magic, version, flags, length = _HEADER.unpack_from(raw)
        if magic != LIME_MAGIC:
            if index == 0:
                raise LimeError(
                    f"{name} is not a LIME file: starts with 0x{magic:08x}, "
                    f"expected the LIME magic 0x{LIME_MAGIC:08x}"
                )
            raise LimeError(
                f"corrupt LIME file {name}: record header {index} at byte {pos} has magic "
                f"0x{magic:08x}, expected 0x{LIME_MAGIC:08x}"
            )
        if version != LIME_VERSION:
            raise LimeError(
                f"{name}: record {index} at byte {pos} has LIME version {version}, "
                f"only version {LIME_VERSION} is supported"
            )
        rtype = raw[16:HEADER_SIZE].split(b"\0", 1)[0].decode("ascii", errors="replace")
        offset = pos + HEADER_SIZE
        if offset + length > size:
            raise LimeError(
                f"truncated LIME file {name}: record '{rtype}' at byte {pos} announces "
                f"{length} payload bytes but only {size - offset} remain"
            )
        rec = LimeRecord(rtype, offset, int(length), bool(flags & _MB), bool(flags & _ME))
        yield rec
        pos = min(rec.end, size)
        index += 1


def read_records(path: str | os.PathLike) -> list[LimeRecord]:
    """All records of the LIME file at ``path`` (headers only)."""
    with open(path, "rb") as f:
        return list(iter_records(f, str(path)))


def read_payload(f: IO[bytes], record: LimeRecord) -> bytes:
    """The payload bytes of ``record`` from the open file ``f``."""
    f.seek(record.offset)
    data = f.read(record.length)
    if len(data) != record.length:
        raise LimeError(f"record '{record.type}': short read ({len(data)}/{record.length})")
    return data
