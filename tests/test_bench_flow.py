"""Smoke tests of benchmarks/bench_flow_force.py --arch and benchmarks/bench_flow_memory.py on
tiny lattices: the tables have one row per case with finite positive numbers (timings and
memory are measured by the scripts, never asserted here)."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "args",
    [
        ["--arch", "su3_stout", "--lattice", "2,2,2,2", "--options", "n_layers=2,hidden=[2,2]"],
        ["--arch", "phi4_minimal", "--lattice", "4,4", "--couplings", "beta=0.6,lambda=0.5"],
    ],
)
def test_flow_force_arch_table(args, capsys):
    _load("bench_flow_force").main([*args, "--batches", "1,2", "--repeat", "1", "--clock", "cpu"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| ([12]) \| (\S+) \| (\S+) \| (\S+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(math.isfinite(float(x)) and float(x) >= 0 for r in rows for x in r[1:3])
    assert "untrained" in out and "clock: cpu" in out


def test_flow_force_options_are_read_as_yaml_12():
    """``--couplings beta=6e0`` and ``--options tol=1e-10`` were strings (PyYAML's YAML 1.1
    reads an exponent without a point or sign so): values are read as deck values are."""
    pairs = _load("bench_flow_force")._pairs
    couplings = pairs("beta=6e0,lambda=5E-1", "--couplings")
    assert couplings == {"beta": 6.0, "lambda": 0.5}
    assert all(type(v) is float for v in couplings.values())
    options = pairs("tol=1e-10,n_layers=2,hidden=[2,3],activation=tanh,x=5e+3", "--options")
    assert options == {
        "tol": 1e-10,
        "n_layers": 2,
        "hidden": [2, 3],
        "activation": "tanh",
        "x": 5000.0,
    }
    assert type(options["tol"]) is float and type(options["n_layers"]) is int
    with pytest.raises(SystemExit, match="expected key=value"):
        pairs("beta", "--couplings")


def test_flow_force_breakdown_table(capsys):
    """``--breakdown N``: N items with their share, what no op holds, and the whole call."""
    _load("bench_flow_force").main(
        ["--arch", "su3_stout", "--lattice", "2,2,2,2", "--options", "n_layers=2,hidden=[2]"]
        + ["--batches", "1", "--repeat", "2", "--clock", "cpu", "--breakdown", "3"]
    )
    out = capsys.readouterr().out.split("self time per call")[1]
    rows = re.findall(r"^\| (.+?) \|\s*(\S*)\s*\| (\S+) \| (\S+) \|$", out, re.M)
    items = [r for r in rows if not r[0].startswith("(")]
    assert len(items) == 3 and all(float(r[1]) > 0 for r in items)
    assert any("Fused" in r[0] for r in items)  # the stout layer's Functions lead
    assert rows[-1][0].startswith("(whole call") and float(rows[-1][3]) == 100.0
    shares = [float(r[3]) for r in rows[:-1]]
    assert all(0 <= x <= 100 for x in shares) and sum(shares) <= 100.0 + 1e-6


def test_flow_force_negative_breakdown_refused():
    with pytest.raises(SystemExit, match="must be >= 0"):
        _load("bench_flow_force").main(["--arch", "su3_stout", "--breakdown", "-1"])


def test_flow_force_bad_arch():
    with pytest.raises(SystemExit, match="one of"):
        _load("bench_flow_force").main(["--arch", "nope", "--lattice", "2,2"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_flow_memory_table(capsys):
    _load("bench_flow_memory").main(["--lattices", "2", "--layers", "2"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| 2\^4 \| 2 \| (no|yes) \| (\S+) \| (\S+) \|", out, re.M)
    assert [r[0] for r in rows] == ["no", "yes"]
    saved = {r[0]: float(r[2]) for r in rows}
    assert saved["yes"] < saved["no"]  # checkpointing keeps less for the backward pass
    assert "8x8x8x16" in out


@pytest.mark.slow  # inductor's first compilation on a fresh machine: ~25 s
def test_flow_force_compiled_column(capsys):
    """``--compile``: the flow's forward under torch.compile gives the eager force (the table's
    last column is their largest difference)."""
    args = ["--arch", "u1_stout", "--lattice", "4,4", "--couplings", "beta=2.0", "--compile"]
    _load("bench_flow_force").main([*args, "--batches", "2", "--repeat", "1", "--clock", "cpu"])
    out = capsys.readouterr().out
    (row,) = re.findall(r"^\| 2 \| .*\|$", out, re.M)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 8
    assert float(cells[7]) <= 1e-12


@pytest.mark.parametrize("arch", ["phi4_minimal", "u1_stout"])
def test_single_rank_flow_traces_in_one_graph(arch):
    """On one rank the halo exchange is local copies only: dynamo traces the whole flow
    forward without a graph break (a break per exchange is what made compiling slower)."""
    import torch
    import torch._dynamo

    from kernels.flows.base import build_flow
    from kernels.theories import architectures
    from parallel import single_rank_grid

    grid = single_rank_grid((4, 4))
    flow = build_flow({"builder": architectures()[arch][1], "kwargs": {}}, grid)
    shape = (2, 4, 4) if arch.startswith("phi4") else (2, 2, 4, 4)
    v = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    report = torch._dynamo.explain(flow.forward_local)(v)
    assert report.graph_break_count == 0, report.break_reasons
    torch._dynamo.reset()
