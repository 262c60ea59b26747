"""Shared set-up of the benchmarks that start from a flow in the model registry
(``bench_md_stiffness.py``, ``bench_flow_force.py``): the common command-line options, the
theory and flow from the model card, and the header every table is printed under.

Imported as a sibling module (``python benchmarks/<script>.py`` puts ``benchmarks/`` first on
``sys.path``; pytest gets it from ``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime

import torch
from mpi4py import MPI

from app.registry import load_model_and_theory
from kernels.samplers.trivialized import TransformedTheory

ROOT = MPI.COMM_WORLD.Get_rank() == 0


def say(*a) -> None:
    """Print on the world root only."""
    if ROOT:
        print(*a, flush=True)


def add_flow_arguments(ap: argparse.ArgumentParser) -> None:
    """``--model`` (required), ``--models`` and ``--threads``."""
    ap.add_argument("--model", required=True, help="registry reference name[@hash]")
    ap.add_argument("--models", default=None, help="registry root (default $TRIVHMC_MODELS)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")


def load_trivialized(args: argparse.Namespace, script: str):
    """float64 theory and flow of ``args.model`` on the card's lattice (all ranks), the flow
    in eval mode, and their :class:`TransformedTheory`; prints the header (date, machine,
    torch, grid, command, flow card). Returns ``(theory, trivialized theory, card)``."""
    torch.set_default_dtype(torch.float64)
    if args.threads:
        torch.set_num_threads(args.threads)
    theory, flow, card = load_model_and_theory(args.model, root=args.models)
    flow.eval()
    say(f"# {script}  {datetime.now().isoformat(timespec='seconds')}")
    say(f"# machine: {platform.node()} ({platform.processor() or platform.machine()})")
    say(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {theory.grid.describe()}")
    say(f"# command: {' '.join(sys.argv)}")
    say(
        f"# flow {card['name']}@{card['hash'][:16]}: {card['architecture']['builder']}, "
        f"{card['n_parameters']} parameters; theory {card['theory']} {card['couplings']}"
    )
    return theory, TransformedTheory(theory, flow), card
