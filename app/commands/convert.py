"""Convert a configuration between ILDG, NERSC and HDF5."""

from __future__ import annotations

import argparse

from ..errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trivhmc convert``."""
    parser.add_argument("input", help="input configuration file")
    parser.add_argument("output", help="output file")
    parser.add_argument(
        "--to", choices=["ildg", "nersc", "hdf5"], help="output format (default: from suffix)"
    )
    parser.add_argument(
        "--precision", choices=["double", "single"], default="double", help="ILDG output precision"
    )
    parser.add_argument(
        "--index",
        type=int,
        default=-1,
        help="configuration index in an HDF5 ensemble (default: last)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trivhmc convert``; returns the exit status."""
    from ..io.convert import FORMATS, convert, format_from_name
    from ..io.errors import ConfigFormatError

    if args.to is None and format_from_name(args.output) not in FORMATS:
        raise InputError(
            f"cannot tell the format of {args.output} from its suffix; add --to "
            f"{{{','.join(FORMATS)}}} or name it .lime/.ildg, .nersc or .h5/.hdf5"
        )
    from mpi4py import MPI

    from ..errors import is_storage_error
    from ..io.collective import on_root

    def work() -> str:
        try:
            return convert(
                args.input, args.output, args.to, index=args.index, precision=args.precision
            )
        except (ConfigFormatError, OSError, IndexError, ValueError) as exc:
            if is_storage_error(exc):
                raise  # disk full / quota: its own exit status
            raise InputError(f"convert {args.input} -> {args.output}: {exc}") from None

    # serial work: world rank 0 converts, every rank raises its error (the same exit status
    # everywhere, no MPI_Abort) -- one writer, not one per rank
    fmt = on_root(work, MPI.COMM_WORLD)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"wrote {args.output} ({fmt})")
    return 0
