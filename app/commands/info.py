"""Describe a configuration file (ILDG, NERSC, HDF5): lattice, precision, checksum,
plaquette, link trace."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc info``."""
    parser.add_argument("file", help="configuration file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--index",
        type=int,
        default=-1,
        help="configuration index in an HDF5 ensemble (default: last)",
    )


def _format_text(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"{key:>20}: {inner}")
        elif isinstance(value, list) and len(value) > 8:
            lines.append(f"{key:>20}: {len(value)} entries")
        else:
            lines.append(f"{key:>20}: {value}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc info``; returns the exit status."""
    from ..io.errors import ConfigFormatError
    from ..io.info import config_info

    try:
        info = config_info(args.file, args.index)
    except (ConfigFormatError, OSError, IndexError) as exc:
        raise InputError(f"{args.file}: {exc}") from None
    print(json.dumps(info, indent=1, default=str) if args.json else _format_text(info))
    status = (
        info.get("checksum", {}).get("status") if isinstance(info.get("checksum"), dict) else None
    )
    return 2 if status == "mismatch" else 0
