"""Recognise a configuration file's format from its first bytes (not its name)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .errors import ConfigFormatError
from .lime import LIME_MAGIC

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
FORMATS = ("ildg", "nersc", "hdf5")
_SUFFIXES = {
    ".lime": "ildg",
    ".ildg": "ildg",
    ".nersc": "nersc",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}


def detect_format(path: str | os.PathLike) -> str:
    """``"ildg"``, ``"nersc"`` or ``"hdf5"`` from the file's magic bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 4 and struct.unpack(">I", head[:4])[0] == LIME_MAGIC:
        return "ildg"
    if head.startswith(b"BEGIN_HEADER"):
        return "nersc"
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    raise ConfigFormatError(
        f"{path}: unknown configuration format (not LIME/ILDG, NERSC or HDF5; "
        f"starts with {head[:8]!r})"
    )


def format_from_name(path: str | os.PathLike) -> str | None:
    """The format a file name suggests (``cfg.lime`` -> ``"ildg"``), or ``None``."""
    return _SUFFIXES.get(Path(path).suffix.lower())
