"""User errors around the model registry end in one message and exit status 2, before any
work and on every rank (docs/errors.md, docs/registry.md): a registry that is a file, that
holds a file with the model's name, that does not exist (``models list/show/verify/export``),
a reserved model name (``index.json``), an export over an existing file or into a missing
directory, an import of something that is not an exported model, and SU(3) training data
given to a U(1) deck."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from app.errors import InputError
from app.registry import (
    RegistryError,
    content_hash,
    load_verified,
    make_card,
    publish,
    resolve,
    save_model,
)
from app.registry_index import INDEX_NAME, export_model, load_index
from kernels.flows import phi4_affine_flow
from kernels.theories.phi4 import Phi4
from parallel import single_rank_grid
from tests.mpi_launch import mpiexec

ROOT = Path(__file__).resolve().parent.parent
GRID = single_rank_grid((4, 4))

DECK = """\
theory:   {name: phi4, beta: 0.4, lambda: 0.5}
lattice:  {shape: [4, 4]}
sampler:  {name: hmc, steps: 4}
run:      {seed: 5, trajectories: 2}
output:   {directory: out, progress: false}
train:    {architecture: phi4_affine, options: {n_pairs: 1, hidden: [2]}, steps: 2, batch: 4,
           lr: 0.01, model_name: m}
"""


def _flow(seed: int = 0):
    torch.manual_seed(seed)
    return phi4_affine_flow(GRID, n_pairs=1, hidden=(4,))


def _save(root: Path, name: str = "m", seed: int = 0) -> str:
    return save_model(_flow(seed), Phi4(GRID, beta=0.3, lam=0.5), name, root=root)


def _one_error(err: str, *words: str) -> str:
    """Exactly one message, one line, no traceback; containing ``words``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


@pytest.fixture
def deck(tmp_path) -> Path:
    p = tmp_path / "deck.yaml"
    p.write_text(DECK)
    return p


@pytest.fixture
def no_training(monkeypatch):
    """Training must not start: a call of the trainer factory fails the test (exit 1)."""
    import app.training

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the registry cannot take the model")

    monkeypatch.setattr(app.training, "_make_trainer", refuse)


# ------------------------------------------------------------------ train (defects 7, 8)
def test_train_refuses_a_registry_that_is_a_file_before_training(
    deck, tmp_path, capsys, no_training
):
    regfile = tmp_path / "regfile"
    regfile.write_text("")
    assert main(["train", str(deck), "--set", f"train.registry={regfile}"]) == 2
    _one_error(capsys.readouterr().err, f"registry {regfile} is not a directory", "train.registry")
    sub = regfile / "sub"
    assert main(["train", str(deck), "--set", f"train.registry={sub}"]) == 2
    _one_error(capsys.readouterr().err, f"{regfile} is not a directory")
    assert regfile.read_text() == ""


def test_train_refuses_a_file_with_the_models_name_before_training(
    deck, tmp_path, capsys, no_training
):
    reg = tmp_path / "r4"
    reg.mkdir()
    (reg / "m").write_text("x\n")
    assert main(["train", str(deck), "--set", f"train.registry={reg}"]) == 2
    _one_error(capsys.readouterr().err, "holds a file 'm'", "another model name")
    assert (reg / "m").read_text() == "x\n"
    # $TRIVHMC_MODELS is checked the same way
    env_file = tmp_path / "envreg"
    env_file.write_text("")
    os.environ["TRIVHMC_MODELS"] = str(env_file)
    try:
        assert main(["train", str(deck)]) == 2
    finally:
        del os.environ["TRIVHMC_MODELS"]
    _one_error(capsys.readouterr().err, "is not a directory", "$TRIVHMC_MODELS")


@pytest.mark.parametrize("name", ["index.json", "INDEX.JSON"])
def test_reserved_model_name_refused_before_training(deck, tmp_path, capsys, no_training, name):
    reg = tmp_path / "reg"
    _save(reg, "other")
    load_index(reg)
    index = (reg / INDEX_NAME).read_bytes()
    assert main(["train", str(deck), "--set", f"train.model_name={name}"]) == 2
    _one_error(capsys.readouterr().err, f"invalid model name {name!r}", "reserved")
    with pytest.raises(RegistryError, match="reserved"):
        _save(reg, name)
    assert (reg / INDEX_NAME).read_bytes() == index


def test_import_of_a_model_named_like_the_index_is_refused(tmp_path, capsys):
    """A hand-made export whose (hash-consistent) card names the model ``index.json``."""
    card = make_card(_flow(), Phi4(GRID, beta=0.3, lam=0.5), "x")
    card["name"] = INDEX_NAME
    state = {k: v.detach().clone() for k, v in _flow().state_dict().items()}
    card["hash"] = content_hash(state, card)
    torch.save({"card": card, "state_dict": state}, tmp_path / "evil.pt")
    reg = tmp_path / "reg"
    _save(reg, "other")
    load_index(reg)
    index = (reg / INDEX_NAME).read_bytes()
    assert main(["models", "--registry", str(reg), "import", str(tmp_path / "evil.pt")]) == 2
    _one_error(capsys.readouterr().err, "invalid model name 'index.json'")
    assert (reg / INDEX_NAME).is_file() and (reg / INDEX_NAME).read_bytes() == index


# ------------------------------------------------------------------ save paths (defect 7)
def test_save_publish_and_import_into_a_bad_registry(tmp_path, capsys):
    regfile = tmp_path / "regfile"
    regfile.write_text("")
    with pytest.raises(RegistryError, match="is not a directory"):
        _save(regfile)
    with pytest.raises(RegistryError, match="is not a directory"):
        save_model(_flow(), Phi4(GRID, beta=0.3, lam=0.5), "m", root=regfile, single_file=True)
    good = tmp_path / "good"
    ref = _save(good)
    card, state = load_verified(ref, good)
    with pytest.raises(RegistryError, match="is not a directory"):
        publish(regfile, "m", card, state)
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "m").write_text("x")
    with pytest.raises(RegistryError, match="holds a file 'm'"):
        publish(clash, "m", card, state)
    exported = export_model(ref, tmp_path, good)
    for reg, words in ((regfile, "is not a directory"), (clash, "holds a file 'm'")):
        assert main(["models", "--registry", str(reg), "import", str(exported)]) == 2
        _one_error(capsys.readouterr().err, words)
    assert regfile.read_text() == "" and (clash / "m").read_text() == "x"
    from app.registry import check_registry

    with pytest.raises(RegistryError, match="is not a directory"):
        check_registry(regfile, write=True)
    check_registry(tmp_path / "new" / "deeper", "m", write=True)  # can be created


def test_write_errors_in_the_registry_are_exit_2_but_a_full_disk_stays_exit_8(
    tmp_path, monkeypatch
):
    import errno

    import app.registry
    from app.errors import StorageError

    good = tmp_path / "good"
    card, state = load_verified(_save(good), good)
    for exc, kind in (
        (PermissionError(errno.EACCES, "Permission denied", "x"), RegistryError),
        (OSError(errno.ENOSPC, "No space left on device"), OSError),
        (StorageError("cannot write x: disk full"), StorageError),
    ):

        def fail(*args, exc=exc):
            raise exc

        monkeypatch.setattr(app.registry, "_publish", fail)
        with pytest.raises(kind) as info:
            publish(tmp_path / "other", "m", card, state)
        assert (kind is RegistryError) == isinstance(info.value, RegistryError)


# ------------------------------------------------------------------ export (defects 4, 6)
def test_export_never_overwrites_another_file(tmp_path, capsys, monkeypatch):
    reg = tmp_path / "reg"
    ref = _save(reg)
    monkeypatch.chdir(tmp_path)
    deck_text = "theory: {name: phi4}\n"
    (tmp_path / "deck.yaml").write_text(deck_text)
    base = ["models", "--registry", str(reg), "export", ref]
    assert main([*base, "deck.yaml"]) == 2
    _one_error(capsys.readouterr().err, "deck.yaml exists", "--force")
    assert (tmp_path / "deck.yaml").read_text() == deck_text
    # exporting the same model again to the same place is a no-op (byte-identical)
    assert main([*base, "a.pt"]) == 0
    first = (tmp_path / "a.pt").read_bytes()
    mtime = (tmp_path / "a.pt").stat().st_mtime_ns
    assert main([*base, "a.pt"]) == 0 and main([*base, str(tmp_path)]) == 0
    assert main([*base, str(tmp_path)]) == 0
    assert (tmp_path / "a.pt").read_bytes() == first
    assert (tmp_path / "a.pt").stat().st_mtime_ns == mtime
    # another model's export is not this one
    other = _save(reg, "other", seed=3)
    assert main(["models", "--registry", str(reg), "export", other, "a.pt"]) == 2
    _one_error(capsys.readouterr().err, "a.pt exists")
    assert (tmp_path / "a.pt").read_bytes() == first
    # --force replaces it
    assert main([*base, "deck.yaml", "--force"]) == 0
    assert (tmp_path / "deck.yaml").read_bytes() == first
    # never into the registry itself (its index, a model's folder)
    load_index(reg)
    index = (reg / INDEX_NAME).read_bytes()
    for dest in (reg / INDEX_NAME, reg, reg / "m"):
        assert main([*base, str(dest), "--force"]) == 2
        _one_error(capsys.readouterr().err, "into the registry")
    assert (reg / INDEX_NAME).read_bytes() == index
    assert resolve(ref, reg).is_dir()


def test_export_into_a_missing_directory_before_any_work(tmp_path, capsys, monkeypatch):
    reg = tmp_path / "reg"
    ref = _save(reg)
    # a damaged model: the destination is refused first, the weights are not even read
    (resolve(ref, reg) / "model.pt").write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)
    for dest in ("nodir/a.pt", "nodir/"):
        assert main(["models", "--registry", str(reg), "export", ref, dest]) == 2
        _one_error(capsys.readouterr().err, "nodir", "does not exist")
    assert not (tmp_path / "nodir").exists()


# ------------------------------------------------------------------ missing registry (14)
@pytest.mark.parametrize("action", ["verify", "list", "show m", "export m out.pt"])
def test_read_actions_refuse_a_missing_or_file_registry(tmp_path, capsys, monkeypatch, action):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "regfile").write_text("")
    for reg, words in (("nonexistreg", "does not exist"), ("regfile", "is not a directory")):
        assert main(["models", *action.split(), "--registry", reg]) == 2
        _one_error(capsys.readouterr().err, f"registry {reg} {words}", "--registry")
        monkeypatch.setenv("TRIVHMC_MODELS", reg)
        assert main(["models", *action.split()]) == 2
        _one_error(capsys.readouterr().err, f"registry {reg} {words}", "$TRIVHMC_MODELS")
        monkeypatch.delenv("TRIVHMC_MODELS")
    assert not (tmp_path / "nonexistreg").exists() and not (tmp_path / "out.pt").exists()


def test_verify_of_an_empty_existing_registry_still_passes(tmp_path, capsys):
    assert main(["models", "verify", "--registry", str(tmp_path)]) == 0
    assert "0 model(s) checked, 0 damaged" in capsys.readouterr().out


# ------------------------------------------------------------------ import of non-models (15)
def _h5(path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("phi4.yaml", lambda p: p.write_text("theory: {name: phi4}\n"), "not a torch archive"),
        ("cfg.lime", lambda p: p.write_bytes(b"\x45\x67\x89\xab" + bytes(60)), "torch archive"),
        ("ckpt.h5", _h5, "not a torch archive"),
        ("model.pt", lambda p: p.write_bytes(b""), "an empty file"),
        (
            "weights.pt",
            lambda p: torch.save({"w": torch.zeros(2)}, p),
            "a torch file without a model card",
        ),
        (
            "trainer.pt",
            lambda p: torch.save({"opt": argparse.Namespace(lr=1.0)}, p),
            "objects other than tensors",
        ),
    ],
)
def test_import_of_something_else_is_one_line(tmp_path, capsys, name, make, words):
    src = tmp_path / name
    make(src)
    reg = tmp_path / "reg"
    assert main(["models", "--registry", str(reg), "import", str(src)]) == 2
    line = _one_error(capsys.readouterr().err, f"{src} is not an exported trivhmc model", words)
    assert len(line.replace(str(tmp_path), "")) < 160, line
    assert not reg.exists() or not any(reg.iterdir())


def test_import_of_a_truncated_export_is_one_line(tmp_path, capsys):
    exported = export_model(_save(tmp_path / "a"), tmp_path, tmp_path / "a")
    data = exported.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert main(["models", "--registry", str(tmp_path / "b"), "import", str(tmp_path / "cut.pt")])
    line = _one_error(capsys.readouterr().err, "cut.pt is unreadable or corrupt")
    assert len(line.replace(str(tmp_path), "")) < 160, line


# ------------------------------------------------------------------ training data (21c)
def test_su3_ensemble_as_u1_training_data_is_refused_without_a_torch_warning(tmp_path):
    from app.deck import loads_deck
    from app.io.hdf5 import EnsembleWriter
    from app.setup import build_grid, build_theory
    from app.training import _ensemble_blocks

    su3 = tmp_path / "su3.h5"
    w = EnsembleWriter(su3, "su3", {"beta": 6.0}, (4, 4, 4, 4), "hmc", 1, "test")
    w.append_config(np.broadcast_to(np.eye(3, dtype=complex), (4, 4, 4, 4, 4, 3, 3)), 1, first=1)
    w.close()
    u1c = tmp_path / "u1c.h5"  # the right shape, but complex numbers
    w = EnsembleWriter(u1c, "u1", {"beta": 2.0}, (4, 4), "hmc", 1, "test")
    w.append_config(np.ones((2, 4, 4), complex), 1, first=1)
    w.close()
    for path, words in ((su3, r"local shape \(4, 4, 4, 4, 4, 3, 3\)"), (u1c, "complex fields")):
        deck = loads_deck(
            "theory: {name: u1, beta: 2.0}\nlattice: {shape: [4, 4]}\n"
            "run: {seed: 1, trajectories: 1}\noutput: {directory: out}\n"
            "train: {architecture: u1_stout, loss: force_matching, model_name: m,\n"
            f"        configurations: [{path}]}}\n",
            base_dir=tmp_path,
        )
        grid = build_grid(deck)
        theory = build_theory(deck, grid)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a torch UserWarning (complex -> real) fails
            with pytest.raises(InputError, match=words) as info:
                _ensemble_blocks(deck, grid, theory)
        assert str(path) in str(info.value) and "u1" in str(info.value)


# ------------------------------------------------------------------ under MPI (2 ranks)
def _mpi(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("TRIVHMC_MODELS", None)
    for name in [k for k in env if k.startswith("PYTEST_XDIST_")]:
        del env[name]
    cmd = [mpiexec(), "-n", "2", sys.executable, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_train_registry_refusal_under_mpi_is_exit_2_on_every_rank(tmp_path, deck):
    (tmp_path / "regfile").write_text("")
    (tmp_path / "r4").mkdir()
    (tmp_path / "r4" / "m").write_text("x")
    for reg, words in (("regfile", "is not a directory"), ("r4", "holds a file 'm'")):
        proc = _mpi(
            ["-m", "app.cli", "train", str(deck), "--set", f"train.registry={reg}"], tmp_path
        )
        err = proc.stderr
        assert proc.returncode == 2, (proc.returncode, err)
        assert "MPI_Abort" not in err and "BAD TERMINATION" not in err and "(rank 1)" not in err
        _one_error(err, words)
        assert "trained model" not in proc.stdout
    assert not (tmp_path / "models").exists() and not (tmp_path / "out").exists()


SAVE_ON_TWO_RANKS = textwrap.dedent(
    """
    import sys, torch
    from mpi4py import MPI
    from app.registry import RegistryError, save_model
    from kernels.flows import phi4_affine_flow
    from kernels.theories.phi4 import Phi4
    from parallel import ProcessGrid
    grid = ProcessGrid((4, 4))
    flow = phi4_affine_flow(grid, n_pairs=1, hidden=(2,))
    try:  # the registry check of train passed, then the registry went bad: the save fails
        save_model(flow, Phi4(grid, beta=0.3, lam=0.5), "m", root=sys.argv[1], grid=grid)
    except RegistryError as exc:
        print(f"rank {MPI.COMM_WORLD.Get_rank()}: RegistryError: {exc}")
    """
)


def test_save_failure_under_mpi_raises_on_every_rank(tmp_path):
    (tmp_path / "regfile").write_text("")
    proc = _mpi(["-c", SAVE_ON_TWO_RANKS, "regfile"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        assert f"rank {rank}: RegistryError: cannot save m@" in proc.stdout, proc.stdout
