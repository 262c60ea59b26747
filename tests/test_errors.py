"""Every failure a user can trigger: one message (rank 0 only under MPI), its documented exit
status (app/errors.py, docs/errors.md), no traceback unless --debug, no MPI abort banner."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import app.commands.train as train_cmd
from app.cli import main
from app.errors import (
    EXIT_BROKEN_PIPE,
    DeviceError,
    InputError,
    LayoutError,
    MissingDependency,
    MissingModelError,
    StorageError,
)
from tests.mpi_launch import mpiexec

ROOT = Path(__file__).resolve().parent.parent

DECK = """\
theory: {name: u1, beta: 2.0}
lattice: {shape: [4, 4]}
sampler: {steps: 4}
run: {seed: 3, thermalization: 2, trajectories: 6, checkpoint_every: 4, save_every: 2}
output: {directory: out, progress: false}
"""


@pytest.fixture
def deck(tmp_path) -> Path:
    p = tmp_path / "deck.yaml"
    p.write_text(DECK)
    return p


def trivhmc(
    *args: str, ranks: int = 0, cwd: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess:
    """``trivhmc ARGS`` in a fresh process, under ``mpiexec -n ranks`` if ranks > 0, with
    ``extra_env`` added to the environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra_env)
    cmd = [sys.executable, "-m", "app.cli", *args]
    if ranks:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def assert_clean(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit ``code``; exactly one error message, containing ``words``; no traceback/abort."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and "MPI_Abort" not in err and "BAD TERMINATION" not in err
    assert err.count("error:") == 1, err  # printed once, by rank 0
    for w in words:
        assert w in err, (w, err)
    return err


# ------------------------------------------------------------------ layout (under MPI)
@pytest.mark.parametrize(
    "ranks, sets, words",
    [
        (2, ["lattice.shape=[9,9]"], ["9x9 lattice", "2 rank(s)", "run on 1 or 3 ranks"]),
        (3, ["parallel.grid=[2,1]"], ["process grid [2, 1]", "3 ranks", "run on 2 ranks"]),
        (2, ["parallel.replicas=3"], ["parallel.replicas = 3", "run on 3 ranks", "replicas: 1"]),
    ],
)
def test_layout_errors_under_mpi(deck, ranks, sets, words):
    args = [a for s in sets for a in ("--set", s)]
    proc = trivhmc("run", str(deck), *args, ranks=ranks)
    assert_clean(proc, LayoutError.exit_code, "trivhmc run: error:", *words)
    assert not (deck.parent / "out").exists()  # nothing created


def test_validate_ranks_suggests(deck, capsys):
    assert main(["validate", str(deck), "--ranks", "3"]) == LayoutError.exit_code
    err = capsys.readouterr().err
    assert "4x4 lattice does not fit on 3 rank(s)" in err and "run on 2 or 4 ranks" in err


# ------------------------------------------------------------------ device
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize("device", ["cuda", "xpu"])
def test_device_without_support(deck, capsys, device):
    if device == "xpu" and getattr(torch, "xpu", None) and torch.xpu.is_available():
        pytest.skip("this torch has an XPU")
    code = main(["run", str(deck), "--set", f"parallel.device={device}"])
    err = capsys.readouterr().err
    assert code == DeviceError.exit_code == 5
    assert f"parallel.device: {device}" in err and torch.__version__ in err
    assert "parallel.device: cpu" in err and "Traceback" not in err
    assert not (deck.parent / "out").exists()


# ------------------------------------------------------------------ flow model (under MPI)
def test_missing_flow_model_under_mpi(deck):
    deck.write_text(
        DECK.replace(
            "sampler: {steps: 4}",
            "sampler: {name: trivialized_hmc, steps: 4, flow: {model: u1flow}}",
        )
    )
    proc = trivhmc("run", str(deck), ranks=2)
    assert_clean(
        proc, MissingModelError.exit_code, "no model 'u1flow' in the registry", "trivhmc train"
    )
    assert sorted(p.name for p in deck.parent.iterdir()) == ["deck.yaml"]  # no empty run dir


# ------------------------------------------------------------------ deck wording
def test_deck_wording(deck, capsys):
    assert main(["validate", str(deck), "--set", "sampler.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'stepz' for sampler hmc; did you mean 'steps'?" in err
    # a --set that makes a section invalid is blamed on the --set, not on a deck line
    deck.write_text(DECK.replace("sampler: {steps: 4}\n", ""))
    assert main(["validate", str(deck), "--set", "sampler.name=trivialized_hmc"]) == 2
    err = capsys.readouterr().err
    assert "--set sampler.name=trivialized_hmc: sampler.flow" in err and "line" not in err
    # flow Metropolis has no integrator; its model must be trained (exit 7); float32 warns
    deck.write_text(DECK)
    fm = "sampler={name: flow_metropolis, flow: {model: m}}"
    assert main(["validate", str(deck), "--set", fm]) == MissingModelError.exit_code
    assert "no model 'm' in the registry" in capsys.readouterr().err
    from app.commands.validate import summary
    from app.deck import load_deck

    line = summary(load_deck(deck, [fm]))
    assert "flow_metropolis (model m)" in line and "steps" not in line
    assert main(["validate", str(deck), "--set", "parallel.dtype=float32"]) == 0
    err = capsys.readouterr().err
    assert "warning: parallel.dtype: float32 with hmc" in err


def test_convert_names_the_option(tmp_path, capsys):
    src = tmp_path / "x.h5"
    assert main(["convert", str(src), str(tmp_path / "y.dat")]) == 2
    err = capsys.readouterr().err
    assert "--to {ildg,nersc,hdf5}" in err and "to=" not in err


# ------------------------------------------------------------------ analyze
def _records(run: Path, n: int = 40) -> None:
    run.mkdir()
    lines = [
        json.dumps(
            {
                "trajectory": t,
                "thermalization": False,
                "dH": [0.1],
                "accepted": [True],
                "exp_minus_dH": [0.9],
                "observables": {"plaquette": [0.7 + 0.01 * (t % 3)]},
            }
        )
        for t in range(n)
    ]
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")


def test_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    _records(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    code = main(["analyze", str(tmp_path / "run"), "--plot", str(tmp_path / "png")])
    captured = capsys.readouterr()
    assert code == MissingDependency.exit_code == 6
    assert "pip install 'trivhmc[analysis]'" in captured.err and "matplotlib" in captured.err
    assert captured.out == "" and not (tmp_path / "png").exists()


def test_broken_pipe(tmp_path):
    _records(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "app.cli", "analyze", str(tmp_path / "run"), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader (`| head`) went away before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE == 141
    assert err == ""


# ------------------------------------------------------------------ files and disk
def test_damaged_checkpoint_is_one_warning_line(deck, capsys):
    assert main(["run", str(deck)]) == 0
    ckpt = deck.parent / "out" / "checkpoints"
    newest = sorted(ckpt.glob("ckpt_*.h5"))[-1]
    newest.write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["run", str(deck), "--set", "run.trajectories=8"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("trivhmc run: warning: skipping damaged")
    assert "warnings.warn" not in err and "UserWarning" not in err


def test_disk_full(deck, capsys, monkeypatch):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/records.jsonl")

    monkeypatch.setattr(train_cmd, "main", full)
    assert main(["train", str(deck)]) == StorageError.exit_code == 8
    err = capsys.readouterr().err
    assert "cannot write (out/records.jsonl): No space left on device" in err
    assert "resumes from its last checkpoint" in err and "Traceback" not in err

    class QuotaError(StorageError):  # what app/io may define
        pass

    monkeypatch.setattr(train_cmd, "main", lambda a: (_ for _ in ()).throw(QuotaError("quota")))
    assert main(["train", str(deck)]) == 8
    assert isinstance(QuotaError("x"), OSError)


def test_storage_error_from_makes_plain_storage_oserrors_storage_errors():
    """app.errors.storage_error_from, the one place where a plain OSError of a full disk or
    quota becomes a StorageError with a message (app/run.py: progress.json, the appends)."""
    from app.errors import storage_error_from

    for code in (errno.ENOSPC, errno.EDQUOT):
        err = storage_error_from(OSError(code, "ignored", "f"), "cannot write f", "; advice")
        assert type(err) is StorageError and err.exit_code == 8
        assert str(err) == f"cannot write f: {os.strerror(code)}; advice"
    err = storage_error_from(OSError(errno.ENOSPC, "x"), "cannot append to r")
    assert str(err) == "cannot append to r: No space left on device"

    class QuotaError(StorageError):  # has its own message: kept as it is
        pass

    for other in (
        QuotaError("quota"),
        OSError(errno.EACCES, "Permission denied"),
        OSError("no errno"),
        ValueError("x"),
    ):
        assert storage_error_from(other, "cannot write f") is None


def test_run_progress_and_appends_turn_a_full_disk_into_one_storage_error(tmp_path, monkeypatch):
    """The run's progress.json write raises, and its rank-0 appends record, the message of
    storage_error_from; any other error passes unchanged."""
    from types import SimpleNamespace

    import app.run as run

    ctx = SimpleNamespace(
        out=tmp_path, deck=SimpleNamespace(run=SimpleNamespace(total_trajectories=10))
    )

    def fail(exc):
        def write(*args):
            raise exc

        return write

    monkeypatch.setattr(run, "write_progress", fail(OSError(errno.EDQUOT, "quota")))
    with pytest.raises(StorageError) as info:
        run._write_progress(ctx, 4)
    assert str(info.value) == (
        f"cannot write {tmp_path / 'progress.json'}: {os.strerror(errno.EDQUOT)}; the "
        "checkpoint at trajectory 4 is complete. Free space and run again."
    )
    assert info.value.__suppress_context__
    denied = OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(run, "write_progress", fail(denied))
    with pytest.raises(OSError) as info:
        run._write_progress(ctx, 4)
    assert info.value is denied

    outputs = run._Outputs(None, None, None, None)
    outputs.append(tmp_path / "records.jsonl", fail(OSError(errno.ENOSPC, "full")))
    outputs.append(tmp_path / "run.log", fail(OSError(errno.ENOSPC, "full")))  # skipped
    assert outputs.failed == f"cannot append to {tmp_path / 'records.jsonl'}: " + os.strerror(
        errno.ENOSPC
    )
    own = StorageError("cannot write x: free space")
    for exc in (own, denied):
        with pytest.raises(OSError) as info:
            run._Outputs(None, None, None, None).append(tmp_path / "r", fail(exc))
        assert info.value is exc


def test_complete_storage_messages_are_printed_once():
    """A StorageError whose message already says what to do ("Free space ...", app/run.py's
    checkpoint and progress messages) is printed as it is; one without gets the advice once."""
    from app.errors import classify

    for text in (
        "cannot write p: No space left on device; the checkpoint at trajectory 4 is "
        "complete. Free space and run again.",
        "cannot append to r: Disk quota exceeded. Free space or raise the quota, then run again",
    ):
        status, message, collective = classify(StorageError(text))
        assert (status, message, collective) == (8, f"error: {text}", True)
        assert message.lower().count("free space") == 1
    status, message, collective = classify(StorageError("cannot append to r: full"))
    assert status == 8 and collective and message.lower().count("free space") == 1


def test_full_disk_creating_the_run_directories(tmp_path, monkeypatch):
    """A full disk while the run directories are made (rank 0, app.io.collective.on_root,
    re-raised on every rank) is a StorageError naming the directory: exit 8 on every rank
    with one message, not a per-rank abort."""
    from types import SimpleNamespace

    from app import run
    from app.errors import classify

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "mkdir", full)
    deck = SimpleNamespace(output=SimpleNamespace(formats=["hdf5"]))
    with pytest.raises(StorageError) as info:
        run._make_directories(tmp_path / "out", deck)
    assert str(info.value) == (
        f"cannot create the run directories in {tmp_path / 'out'}: No space left on device"
    )
    status, message, collective = classify(info.value)
    assert status == 8 and collective
    assert message.startswith(
        f"error: cannot write: cannot create the run directories in {tmp_path}"
    )
    assert message.lower().count("free space") == 1


@pytest.mark.parametrize(
    "ranks, variable, value, sets, words",
    [
        (0, "TRIVHMC_SIMD512", "fast", ["parallel.kernels=vnode"], ["'0'", "'1'"]),
        (2, "TRIVHMC_SIMD512", "fast", ["parallel.kernels=vnode"], ["'0'", "'1'"]),
        (2, "TRIVHMC_KERNELS", "turbo", [], ["unknown kernel backend", "vnode"]),
        (0, "TRIVHMC_PREFETCH", "maybe", ["parallel.kernels=numba"], ["'off'"]),
        (0, "TRIVHMC_GPU_AWARE_MPI", "2", [], ["'true'"]),
        (0, "TRIVHMC_DEBUG", "verbose", [], ["'yes'"]),
        (0, "TRIVHMC_MALLOC", "-1", [], ["'no'"]),
        (0, "TRIVHMC_STOUT_KERNEL", "fast", [], ["'auto'", "'eager'"]),
    ],
)
def test_bad_setting_in_the_environment(deck, ranks, variable, value, sets, words):
    """A bad ``TRIVHMC_*`` setting (parallel.settings.SettingError) is bad input: exit 2, the
    variable, its value and the accepted values named once, nothing created."""
    if sets:
        pytest.importorskip("numba")
    args = [a for s in sets for a in ("--set", s)]
    proc = trivhmc("run", str(deck), *args, ranks=ranks, **{variable: value})
    assert_clean(proc, InputError.exit_code, "trivhmc run: error:", f"{variable}={value!r}", *words)
    assert not (deck.parent / "out").exists()


def test_every_error_class_has_its_own_status():
    codes = [
        c.exit_code
        for c in (
            InputError,
            LayoutError,
            DeviceError,
            MissingDependency,
            MissingModelError,
            StorageError,
        )
    ]
    assert len(set(codes)) == len(codes) and 0 not in codes and 1 not in codes and 3 not in codes
    table = (ROOT / "docs" / "errors.md").read_text()
    for c in codes + [130, 141, 143]:
        assert f"| {c} " in table


def test_failed_start_leaves_no_empty_run_directory(deck, capsys):
    (deck.parent / "start.lime").write_bytes(b"not a configuration")
    code = main(["run", str(deck), "--set", "run.start=start.lime"])
    err = capsys.readouterr().err
    assert code == InputError.exit_code and "run.start: cannot read" in err
    assert "Traceback" not in err
    assert not (deck.parent / "out").exists()


def test_deck_error_under_mpi_printed_once(deck):
    proc = trivhmc("run", str(deck), "--set", "theory.betta=2", ranks=2)
    assert_clean(proc, InputError.exit_code, "unknown key 'betta' for theory u1")


def test_failed_run_leaves_no_new_parent_directories(deck, capsys):
    """A nested output directory whose parents are new: none of them is left behind."""
    deck.write_text(
        DECK.replace("sampler: {steps: 4}", "sampler: {levels: [{terms: [fermion], steps: 2}]}")
    )
    code = main(["run", str(deck), "--set", "output.directory=runs/deep/out"])
    err = capsys.readouterr().err
    assert code == InputError.exit_code and "sampler.levels" in err and "fermion" in err
    assert "Traceback" not in err
    assert not (deck.parent / "runs").exists()


def test_a_corrupt_file_is_bad_input_not_an_internal_error():
    """Readers raise ConfigFormatError (a ValueError) for corrupt files: exit 2, its message."""
    from app.errors import classify
    from app.io.errors import ChecksumError, ConfigFormatError
    from app.io.hdf5 import EnsembleDamagedError

    for exc in (
        ConfigFormatError("a.lime: bad"),
        ChecksumError("b.h5: checksum"),
        EnsembleDamagedError("c.h5: damaged"),
    ):
        code, message, _ = classify(exc)
        assert code == InputError.exit_code == 2
        assert message == f"error: {exc}" and "internal" not in message
    assert classify(ValueError("a bug"))[0] == 1
