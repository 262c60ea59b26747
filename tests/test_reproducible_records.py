"""``trivhmc run`` writes byte-identical records and HDF5 datasets on every process grid.

The same deck on grids 1, 2x1, 1x2 and 2x2 (for 4D SU(3): splits of x, of t, and of both)
must give identical ``records.jsonl`` (after dropping the wall-clock fields) and identical
bytes in every HDF5 dataset (and every attribute but the creation date). The physics is not
compared against anything here: other tests check it; this checks that the global sums
behind ``dH``, the actions and the observables do not depend on how the lattice is split.
Kill-and-resume on another rank count is checked bitwise in ``tests/test_restart.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi_launch import mpiexec

DECKS = {
    "u1": """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [8, 8]}
sampler:  {name: hmc, integrator: omelyan, steps: 5, trajectory_length: 1.0}
run:      {seed: 7, thermalization: 2, trajectories: 6, save_every: 2, checkpoint_every: 4,
           chains: 2}
output:   {directory: out, formats: [hdf5]}
""",
    "phi4": """\
theory:   {name: phi4, beta: 0.6, lambda: 0.5}
lattice:  {shape: [8, 8]}
sampler:  {name: hmc, integrator: leapfrog, steps: 8, trajectory_length: 1.0}
run:      {seed: 5, thermalization: 2, trajectories: 6, save_every: 2, checkpoint_every: 4,
           chains: 2, start: hot}
output:   {directory: out, formats: [hdf5]}
""",
    "su3": """\
theory:   {name: su3, beta: 5.7, action: wilson}
lattice:  {shape: [4, 2, 2, 4]}
sampler:  {name: hmc, integrator: omelyan, steps: 4, trajectory_length: 0.5}
run:      {seed: 3, thermalization: 1, trajectories: 3, save_every: 1, checkpoint_every: 2,
           start: hot}
output:   {directory: out, formats: [hdf5, ildg]}
""",
    # flow samplers: a flow trained for 2 steps (tests/…: train_model) on the deck's lattice
    "phi4_trivialized": """\
theory:   {name: phi4, beta: 0.6, lambda: 0.5}
lattice:  {shape: [8, 8]}
sampler:  {name: trivialized_hmc, integrator: leapfrog, steps: 4, trajectory_length: 0.5,
           flow: {model: tiny}}
run:      {seed: 5, thermalization: 1, trajectories: 4, save_every: 2, checkpoint_every: 2,
           chains: 2, start: hot}
output:   {directory: out, formats: [hdf5]}
train:    {architecture: phi4_minimal, loss: reverse_kl, steps: 2, batch: 4, model_name: tiny}
""",
    "u1_flow_metropolis": """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [8, 8]}
sampler:  {name: flow_metropolis, flow: {model: tiny}}
run:      {seed: 3, thermalization: 1, trajectories: 4, save_every: 2, checkpoint_every: 2,
           chains: 2, start: hot}
output:   {directory: out, formats: [hdf5]}
train:    {architecture: u1_ncp, loss: reverse_kl, steps: 2, batch: 4, model_name: tiny}
""",
    "u1_l2hmc": """\
theory:   {name: u1, beta: 2.0}
lattice:  {shape: [8, 8]}
sampler:  {name: l2hmc, model: tiny, leapfrog_layers: 2}
run:      {seed: 3, thermalization: 1, trajectories: 4, save_every: 2, checkpoint_every: 2,
           chains: 2, start: hot}
output:   {directory: out, formats: [hdf5]}
train:    {objective: l2hmc, model_name: tiny, steps: 2, batch: 4,
           options: {n_layers: 2, hidden: [4], step_size: 0.2, init_scale: 0.1}}
""",
}
GRIDS_2D = {"1": [1, 1], "2x1": [2, 1], "1x2": [1, 2], "2x2": [2, 2]}
GRIDS_4D = {"1": [1, 1, 1, 1], "2x1": [2, 1, 1, 1], "1x2": [1, 1, 1, 2], "2x2": [2, 1, 1, 2]}


def run_on_grid(tmp: Path, theory: str, name: str, out: str = "", *extra: str) -> Path:
    grid = (GRIDS_4D if theory == "su3" else GRIDS_2D)[name]
    nranks = int(np.prod(grid))
    deck = tmp / "deck.yaml"
    deck.write_text(DECKS[theory])
    out = out or f"out_{name}"
    exe = str(Path(sys.executable).parent / "trivhmc")
    cmd = [mpiexec(), "-n", str(nranks), exe, "run", str(deck), "--no-progress", *extra]
    cmd += ["--set", f"parallel.grid={json.dumps(grid)}", "--set", f"output.directory={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / out


def records(out: Path) -> list[str]:
    """The record lines with the wall-clock fields removed, re-serialised as written."""
    lines = []
    for line in (out / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        lines.append(json.dumps({k: v for k, v in rec.items() if "time" not in k}))
    return lines


def hdf5_bytes(path: Path) -> dict[str, bytes]:
    """Every dataset's raw bytes and every attribute (but the creation date) of a file."""
    items: dict[str, bytes] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                items[name] = obj.dtype.str.encode() + np.ascontiguousarray(obj[()]).tobytes()
            for k, v in obj.attrs.items():
                if k != "created":
                    items[f"{name}@{k}"] = repr(v).encode()

        visit("/", f)
        f.visititems(visit)
    return items


def compare_outputs(ref: Path, got: Path, what: str) -> None:
    assert records(got) == records(ref), f"{what}: records.jsonl differs"
    ens = sorted(p.name for p in ref.glob("ensemble_c*.h5"))
    assert ens and ens == sorted(p.name for p in got.glob("ensemble_c*.h5"))
    for name in ens:
        a, b = hdf5_bytes(ref / name), hdf5_bytes(got / name)
        assert a.keys() == b.keys(), f"{what}: {name} holds different datasets"
        diff = [k for k in a if a[k] != b[k]]
        assert not diff, f"{what}: {name} differs in {diff}"


def check_theory(tmp: Path, theory: str, grids: list[str], resume: bool = True) -> None:
    ref = run_on_grid(tmp, theory, "1")
    if resume:  # stop early on 1 rank (at a checkpoint), finish on 2 ranks with t split
        run_on_grid(tmp, theory, "1", "out_resume", "--set", "run.trajectories=1")
        got = run_on_grid(tmp, theory, "1x2", "out_resume")
        compare_outputs(ref, got, f"{theory} stopped on 1 rank, resumed on 1x2")
    for g in grids:
        compare_outputs(ref, run_on_grid(tmp, theory, g), f"{theory} grid {g} vs 1")
    if theory == "su3":  # ILDG files: exact-sum plaquette/link trace headers, payload, checksum
        ref_files = sorted((ref / "configs").glob("*.lime"))
        assert ref_files
        for g in grids:
            got_files = sorted((tmp / f"out_{g}" / "configs").glob("*.lime"))
            assert len(got_files) == len(ref_files)
            for a, b in zip(ref_files, got_files):
                assert ildg_content(a) == ildg_content(b), f"su3 grid {g}: {b.name} differs"


def ildg_content(path: Path) -> tuple[bytes, ...]:
    """The header elements ``plaq``/``linktr`` and everything from the binary-data record on
    (payload and SciDAC checksum); the file name and the write date differ by design."""
    data = path.read_bytes()
    tags = []
    for tag in (b"plaq", b"linktr"):
        i = data.index(b"<" + tag + b">")
        tags.append(data[i : data.index(b"</" + tag + b">", i)])
    return (*tags, data[data.index(b"ildg-binary-data") - 16 :])


def test_u1_records_identical_on_every_grid(tmp_path):
    check_theory(tmp_path, "u1", ["2x1", "1x2", "2x2"], resume=False)  # SIGKILL: test_restart


def train_model(tmp: Path, deck: str) -> None:
    """``trivhmc train`` on one rank: the deck's flow, stored in ``tmp/models``."""
    (tmp / "deck.yaml").write_text(DECKS[deck])
    exe = str(Path(sys.executable).parent / "trivhmc")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [exe, "train", "deck.yaml"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "deck",
    [
        "phi4_trivialized",
        pytest.param("u1_flow_metropolis", marks=pytest.mark.slow),
        "u1_l2hmc",
    ],
)
def test_flow_sampler_records_identical_on_every_grid(tmp_path, deck):
    """Trivialized HMC (log-det terms summed exactly, pulled-back forces through the
    grid-independent convolution backward), flow Metropolis (``at_sites`` couplings) and
    L2HMC (networks through ``LatticeConv``, log|J| summed exactly):
    records and HDF5 bytes identical on 1, 2x1, 1x2 and 2x2 ranks (the U(1) NCP flow needs
    ``kernels.flows.u1.atan2_upper``: torch's CPU ``atan2`` rounds differently in its
    vectorized and scalar loops, and which one a site takes depends on the block size)."""
    train_model(tmp_path, deck)
    check_theory(tmp_path, deck, ["2x1", "1x2", "2x2"], resume=False)


@pytest.mark.slow
@pytest.mark.parametrize("theory", ["phi4", "su3"])
def test_records_identical_on_every_grid_and_after_resume(tmp_path, theory):
    check_theory(tmp_path, theory, ["2x1", "1x2", "2x2"])


def test_the_application_asks_mkl_for_size_independent_rounding():
    """``import app`` sets ``MKL_CBWR=COMPATIBLE`` before torch loads (float64 network outputs
    then round alike on every process grid, docs/conventions.md) and leaves a user's choice."""
    code = "import os, app, torch; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    for given, want in ((None, "COMPATIBLE"), ("AUTO", "AUTO")):
        if given:
            env["MKL_CBWR"] = given
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == want
