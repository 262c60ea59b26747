"""Job scripts: counts and options per system, consistency with the deck, bash syntax, the
rendered examples, and the chaining logic run for real with stand-in scheduler/MPI tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.deck import load_deck, loads_deck
from app.errors import InputError, LayoutError, MissingModelError
from app.jobscript import (
    SYSTEMS,
    fill,
    max_runtime,
    parse_walltime,
    render,
    render_examples,
    template_text,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the environment with the `trivhmc` console script

SU3 = """\
theory: {name: su3, beta: 6.0, action: wilson}
lattice: {shape: SHAPE}
parallel: {grid: GRID, replicas: REPS, device: DEVICE}
run: {seed: 1, thermalization: 10, trajectories: 20, checkpoint_every: 5}
output: {directory: out}
"""


SU3_FILE = (
    SU3.replace("GRID", "null")
    .replace("REPS", "1")
    .replace("DEVICE", "cpu")
    .replace("SHAPE", "[8, 8, 8, 8]")
)


def su3_deck(grid="null", reps=1, device="cuda", shape=(8, 8, 8, 16)):
    text = SU3.replace("GRID", str(grid)).replace("REPS", str(reps)).replace("DEVICE", device)
    text = text.replace("SHAPE", str(list(shape)))
    return loads_deck(text)


def bash_syntax_ok(text: str, tmp_path: Path) -> None:
    p = tmp_path / "script.sh"
    p.write_text(text)
    r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_aurora(tmp_path):
    deck = su3_deck(grid=[2, 2, 3, 2], reps=1, device="xpu", shape=(8, 8, 12, 16))
    r = render(deck, "aurora", "/p/d.yaml", "/p/d.aurora.pbs", walltime="02:00:00", account="LQCD")
    t = r.text
    assert (r.layout.nodes, r.layout.ranks_per_node, r.layout.total_ranks) == (2, 12, 24)
    assert r.layout.grid == (2, 2, 3, 2) and r.warnings == []
    assert "#PBS -l select=2\n" in t and "#PBS -l place=scatter" in t
    assert "#PBS -l walltime=02:00:00" in t and "#PBS -A LQCD" in t
    assert "#PBS -l filesystems=home:flare" in t and "#PBS -q prod" in t  # production by default
    assert "NRANKS=24 " in t and "RANKS_PER_NODE=12\n" in t
    assert 'mpiexec -n "$NRANKS" -ppn "$RANKS_PER_NODE"' in t
    assert "ZE_AFFINITY_MASK=${PALS_LOCAL_RANKID" in t
    assert "export ZE_FLAT_DEVICE_HIERARCHY=FLAT" in t
    bind = re.search(r"CPU_BIND=list:(\S+)", t).group(1).split(":")
    assert len(bind) == 12 and bind[0] == "1-8" and bind[6] == "53-60"
    assert "export MPIR_CVAR_ENABLE_GPU=1" in t and "export TRIVHMC_GPU_AWARE_MPI=1" in t
    assert "RUNTIME=(--set run.max_runtime=6480)" in t  # 2 h - 12 min
    assert 'qsub -v TRIVHMC_CHAIN_INDEX=$((CHAIN_INDEX + 1)) "$SCRIPT"' in t
    assert "DECK=/p/d.yaml" in t and "SCRIPT=/p/d.aurora.pbs" in t
    assert "{{" not in t and "}}" not in t
    bash_syntax_ok(t, tmp_path)


def test_polaris(tmp_path):
    deck = su3_deck(grid=[2, 2, 1, 1], reps=3)
    r = render(deck, "polaris", "/p/d.yaml", "/p/s.pbs", walltime="00:30:00", queue="prod")
    t = r.text
    assert (r.layout.nodes, r.layout.ranks_per_node, r.layout.total_ranks) == (3, 4, 12)
    assert "#PBS -l select=3:system=polaris" in t and "#PBS -q prod" in t
    assert "#PBS -l filesystems=home:eagle" in t and "#PBS -l walltime=00:30:00" in t
    assert "CUDA_VISIBLE_DEVICES=$((3 - ${PMI_LOCAL_RANK:-$PALS_LOCAL_RANKID} % 4))" in t
    assert 'mpiexec -n "$NRANKS" --ppn "$RANKS_PER_NODE" --depth=8 --cpu-bind depth' in t
    assert "export MPICH_GPU_SUPPORT_ENABLED=1" in t
    assert "run.max_runtime=1500" in t  # 30 min - 5 min
    assert any("no --account" in w for w in r.warnings)
    assert "#PBS -A <project>" in t
    bash_syntax_ok(t, tmp_path)


def test_frontier(tmp_path):
    deck = su3_deck(grid=[2, 2, 2, 2], reps=1)
    r = render(deck, "frontier", "/p/d.yaml", "/p/s.slurm", walltime="06:00:00", account="PHY1")
    t = r.text
    assert (r.layout.nodes, r.layout.ranks_per_node, r.layout.total_ranks) == (2, 8, 16)
    assert "#SBATCH -N 2\n" in t and "#SBATCH -t 06:00:00" in t and "#SBATCH -A PHY1" in t
    assert "#SBATCH -p batch" in t
    srun = " ".join(lines_with(t, "srun") + lines_with(t, "--gpus-per-task"))
    assert '-n "$NRANKS" --ntasks-per-node="$RANKS_PER_NODE" -c 7' in srun
    assert "--gpus-per-task=1 --gpu-bind=closest" in t
    assert "export MPICH_GPU_SUPPORT_ENABLED=1" in t
    assert "sbatch --export=ALL,TRIVHMC_CHAIN_INDEX=$((CHAIN_INDEX + 1))" in t
    assert "run.max_runtime=19440" in t  # 6 h - 36 min
    bash_syntax_ok(t, tmp_path)


def test_local_and_overrides(tmp_path):
    deck = loads_deck(
        SU3.replace("GRID", "[1, 1, 2, 2]")
        .replace("REPS", "1")
        .replace("DEVICE", "cpu")
        .replace("SHAPE", "[8, 8, 8, 16]"),
        overrides=["run.seed=5"],
    )
    r = render(deck, "local", "/p/d.yaml", "/p/s.sh", walltime=None, overrides=["run.seed=5"])
    t = r.text
    assert r.layout.total_ranks == 4 and "NRANKS=4 " in t
    assert 'mpiexec -n "$NRANKS" trivhmc run "$DECK"' in t
    assert "SETS=(--set run.seed=5)" in t and "RUNTIME=()" in t
    assert "export TRIVHMC_GPU_AWARE_MPI=0" in t and "#PBS" not in t and "#SBATCH" not in t
    bash_syntax_ok(t, tmp_path)
    # shell quoting of overrides with spaces
    r = render(
        deck,
        "local",
        "/p/d.yaml",
        "/p/s.sh",
        walltime=None,
        overrides=["lattice.shape=[8, 8, 8, 16]"],
    )
    assert "SETS=(--set 'lattice.shape=[8, 8, 8, 16]')" in r.text


def test_gpu_aware_off_and_device_warning():
    deck = su3_deck(grid=[2, 2, 1, 1], reps=1, device="cpu")
    deck.parallel.gpu_aware_mpi = False
    with pytest.raises(InputError, match="parallel.device=cpu.*--force"):
        render(deck, "polaris", "/p/d.yaml", "/p/s.pbs")
    r = render(deck, "polaris", "/p/d.yaml", "/p/s.pbs", force=True)
    assert "MPICH_GPU_SUPPORT_ENABLED" not in r.text
    assert "export TRIVHMC_GPU_AWARE_MPI=0" in r.text
    assert any("parallel.device=cpu" in w for w in r.warnings)


@pytest.mark.parametrize(
    "system,grid,reps,nodes,rpn,match,code",
    [  # a rank count the deck does not fit: LayoutError (4), as validate --ranks and run
        ("aurora", [2, 2, 2, 2], 1, 1, 12, "needs 16", 4),  # 12 ranks != 16
        ("aurora", [2, 2, 2, 2], 1, None, 12, "multiple of 12", 4),
        ("aurora", "null", 1, 1, 12, "no process grid.*--ranks-per-node 8", 4),  # 12 ∤ 8^3 x 16
        ("frontier", "null", 3, 1, 8, "replica groups.*--nodes 3.*--ranks-per-node 6", 4),
        # option values that cannot work: InputError (2)
        ("polaris", [2, 2, 2, 2], 1, 4, 5, "4 GPU devices per node", 2),
        ("local", [2, 1, 1, 1], 1, 2, None, "one node", 2),
    ],
)
def test_rank_count_must_match_deck(system, grid, reps, nodes, rpn, match, code):
    deck = su3_deck(grid=grid, reps=reps)
    with pytest.raises(InputError, match=match) as err:
        render(deck, system, "/p/d.yaml", "/p/s", nodes=nodes, ranks_per_node=rpn)
    assert err.value.exit_code == code
    assert isinstance(err.value, LayoutError) == (code == LayoutError.exit_code)


def test_layout_mismatch_is_exit_4_from_the_command_line(tmp_path, capsys):
    """`jobscript` gave exit 2 for replicas that do not split the ranks, where validate and
    run give 4 (LayoutError) for the same condition."""
    from app.cli import main

    deck = tmp_path / "su3.yaml"
    deck.write_text(SU3_FILE)
    cmd = ["jobscript", "--system", "frontier", str(deck), "--set", "parallel.device=cuda"]
    assert main(cmd + ["--set", "parallel.replicas=3", "--nodes", "1", "--dry-run"]) == 4
    err = capsys.readouterr().err
    assert "8 ranks cannot be split into parallel.replicas = 3" in err
    assert "--nodes 3 (at 8 ranks per node)" in err and len(err.strip().splitlines()) == 1
    assert main(["validate", str(deck), "--set", "parallel.replicas=3", "--ranks", "8"]) == 4


def test_a_huge_node_count_is_answered_at_once(tmp_path, capsys, monkeypatch):
    """The nearest node counts were found by calling choose_grid for every rank count:
    `--nodes 4096` took 28 s, `--nodes 100000` more than 10 minutes."""
    import parallel.grid as grid_module

    calls, original = [0], grid_module.choose_grid

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(grid_module, "choose_grid", counted)
    deck = su3_deck(grid="null", reps=1, shape=(8, 8, 8, 8))
    for nodes, hint in (
        (4096, "--nodes 512 (at 8 ranks per node), or --ranks-per-node 1"),
        (100000, "--nodes 512 (at 8 ranks per node)"),
    ):
        calls[0] = 0
        with pytest.raises(LayoutError) as err:
            render(deck, "frontier", "/p/d.yaml", "/p/s", nodes=nodes)
        assert calls[0] < 100, (nodes, calls[0])  # the old scan: one call per rank count
        assert f"{nodes * 8} ranks" in str(err.value) and hint in str(err.value)


def test_free_grid_layouts():
    deck = su3_deck(grid="null", reps=2)
    r = render(deck, "frontier", "/p/d.yaml", "/p/s", nodes=4)
    assert r.layout.total_ranks == 32 and r.layout.grid == (2, 2, 2, 2)
    deck = su3_deck(grid="[0, 0, 1, 4]", reps=1)
    r = render(deck, "aurora", "/p/d.yaml", "/p/s", nodes=2, ranks_per_node=8)
    assert r.layout.grid[2:] == (1, 4) and r.layout.total_ranks == 16


def test_walltime_and_template_helpers():
    assert parse_walltime("01:30:00") == 5400
    for bad in ("90", "1:60:00", "00:00:00", "a:b:c"):
        with pytest.raises(InputError):
            parse_walltime(bad)
    assert max_runtime(3600) == 3240 and max_runtime(600) == 300 and max_runtime(36000) == 32400
    assert fill("a {{x}} b {{ y }}", {"x": "1", "y": "2"}) == "a 1 b 2"
    with pytest.raises(ValueError, match="missing"):
        fill("{{x}} {{z}}", {"x": "1"})
    with pytest.raises(ValueError, match="unused"):
        fill("{{x}}", {"x": "1", "y": "2"})
    for s in SYSTEMS.values():  # templates ship as package data
        assert "{{chain}}" in template_text(s.template)


def test_examples_up_to_date():
    rendered = render_examples(REPO)
    assert set(rendered) == {
        "su3.aurora.pbs",
        "su3.polaris.pbs",
        "su3.frontier.slurm",
        "quickstart.local.sh",
    }
    for name, text in rendered.items():
        assert (REPO / "jobscripts" / name).read_text() == text, (
            "run: python -m app.jobscript --examples"
        )


# ---------------------------------------------------------------------------- chaining
FAKE_MPIEXEC = """\
#!/bin/bash
# stand-in for mpiexec/srun: logs its arguments, advances progress.json like `trivhmc run`
echo "$*" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then exit "$FAKE_FAIL"; fi
python3 - <<'EOF'
import json, os, pathlib
out = pathlib.Path(os.environ["FAKE_OUT"])
out.mkdir(exist_ok=True)
p = out / "progress.json"
done = json.loads(p.read_text())["trajectory"] if p.exists() else 0
total = int(os.environ["FAKE_TOTAL"])
done = min(done + int(os.environ["FAKE_STEP"]), total)
p.write_text(json.dumps({"trajectory": done, "total": total, "finished": done >= total}))
EOF
"""

FAKE_QSUB = """\
#!/bin/bash
echo "$*" >> "$FAKE_SUBMIT_LOG"
"""


@pytest.fixture
def chain_env(tmp_path):
    deck = tmp_path / "deck.yaml"
    deck.write_text(
        textwrap.dedent(
            """\
            theory: {name: u1, beta: 2.0}
            lattice: {shape: [8, 8]}
            run: {seed: 1, thermalization: 10, trajectories: 20}
            output: {directory: out}
            """
        )
    )
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (
        ("mpiexec", FAKE_MPIEXEC),
        ("srun", FAKE_MPIEXEC),
        ("qsub", FAKE_QSUB),
        ("sbatch", FAKE_QSUB),
    ):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{fake}:{BIN}:{env['PATH']}",
        FAKE_LOG=str(tmp_path / "launch.log"),
        FAKE_SUBMIT_LOG=str(tmp_path / "submit.log"),
        FAKE_OUT=str(tmp_path / "out"),
        FAKE_TOTAL="30",
        FAKE_STEP="10",
    )
    env.pop("TRIVHMC_CHAIN_INDEX", None)
    return tmp_path, deck, env


def run_script(system, tmp_path, deck, env, walltime="00:10:00", max_jobs=50, **extra):
    script = tmp_path / f"job.{system}"
    r = render(
        load_deck(deck),
        system,
        deck,
        script,
        walltime=walltime,
        setup=[],
        max_jobs=max_jobs,
        ranks_per_node={"local": 1, "aurora": 4}.get(system),
        nodes=1,
        force=True,  # a CPU deck under a fake scheduler
    )
    script.write_text(r.text)
    env = {**env, **extra}
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    launches = (
        (tmp_path / "launch.log").read_text().splitlines()
        if (tmp_path / "launch.log").exists()
        else []
    )
    submits = (
        (tmp_path / "submit.log").read_text().splitlines()
        if (tmp_path / "submit.log").exists()
        else []
    )
    return p, launches, submits, script


needs_cli = pytest.mark.skipif(
    shutil.which("trivhmc", path=str(BIN)) is None, reason="trivhmc console script not installed"
)


@needs_cli
def test_local_chain_runs_until_complete(chain_env):
    """Each pass: `trivhmc run --status` (real), a run (stand-in adds 15 trajectories),
    status again; the script runs itself again until 10 + 20 trajectories are done."""
    tmp_path, deck, env = chain_env
    p, launches, _, _ = run_script("local", tmp_path, deck, env, FAKE_STEP="15")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(launches) == 2  # 0 -> 15 -> 30 = thermalization + trajectories
    assert all("trivhmc run" in a and "run.max_runtime=300" in a for a in launches)
    assert "is complete (30 trajectories)" in p.stdout
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["trajectory"] == 30
    # submitting a complete run again does nothing
    p, launches, _, _ = run_script("local", tmp_path, deck, env)
    assert p.returncode == 0 and len(launches) == 2 and "nothing to do" in p.stdout


@needs_cli
def test_local_chain_stops_without_progress_failure_or_limit(chain_env):
    tmp_path, deck, env = chain_env
    p, launches, _, _ = run_script("local", tmp_path, deck, env, FAKE_STEP="0")
    assert p.returncode == 1 and len(launches) == 1 and "no progress" in p.stderr
    (tmp_path / "launch.log").unlink()
    p, launches, _, _ = run_script("local", tmp_path, deck, env, FAKE_FAIL="7")
    assert p.returncode == 7 and len(launches) == 1 and "run failed" in p.stderr
    (tmp_path / "launch.log").unlink()
    p, launches, _, _ = run_script("local", tmp_path, deck, env, max_jobs=2, FAKE_STEP="1")
    assert p.returncode == 1 and len(launches) == 2 and "reached 2 chained jobs" in p.stderr


@needs_cli
def test_pbs_job_resubmits_itself_until_complete(chain_env):
    tmp_path, deck, env = chain_env
    p, launches, submits, script = run_script("aurora", tmp_path, deck, env, FAKE_STEP="15")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(launches) == 1 and launches[0].startswith("-n 4 -ppn 4")
    assert submits == [f"-v TRIVHMC_CHAIN_INDEX=2 {script}"]
    # the resubmitted job completes the run and does not resubmit
    p, launches, submits, _ = run_script(
        "aurora", tmp_path, deck, env, FAKE_STEP="15", TRIVHMC_CHAIN_INDEX="2"
    )
    assert p.returncode == 0 and len(launches) == 2 and len(submits) == 1
    assert "is complete" in p.stdout


@needs_cli
def test_slurm_job_resubmits_itself(chain_env):
    tmp_path, deck, env = chain_env
    p, launches, submits, script = run_script("frontier", tmp_path, deck, env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(launches) == 1 and "--gpus-per-task=1 --gpu-bind=closest" in launches[0]
    assert submits == [f"--export=ALL,TRIVHMC_CHAIN_INDEX=2 {script}"]


def test_production_queues_by_default():
    deck = su3_deck(grid="null", reps=1)
    q = {}
    for system, nodes in (("aurora", 2), ("polaris", 2), ("polaris", 16), ("frontier", 2)):
        dev = "xpu" if system == "aurora" else "cuda"
        deck.parallel.device = dev
        r = render(deck, system, "/p/d.yaml", "/p/s", nodes=nodes, ranks_per_node=4)
        q[(system, nodes)] = re.search(r"#(?:PBS -q|SBATCH -p) (\S+)", r.text).group(1)
        if (system, nodes) == ("polaris", 2):
            assert any("preemptable" in w for w in r.warnings)
    assert q == {
        ("aurora", 2): "prod",
        ("polaris", 2): "preemptable",
        ("polaris", 16): "prod",
        ("frontier", 2): "batch",
    }
    r = render(deck, "frontier", "/p/d.yaml", "/p/s", nodes=1, queue="debug")
    assert "#SBATCH -p debug" in r.text


def test_node_count_that_cannot_fit_names_the_nearest(tmp_path):
    deck = su3_deck(grid="null", reps=1, device="xpu", shape=(8, 8, 8, 8))
    with pytest.raises(InputError) as err:  # 3 x 8 = 24 ranks on 8^4
        render(deck, "aurora", "/p/d.yaml", "/p/s", nodes=3, ranks_per_node=8)
    assert "24 ranks" in str(err.value) and "--nodes 2 or 4 (at 8 ranks per node)" in str(err.value)
    with pytest.raises(InputError, match=r"--ranks-per-node 8 \(16 ranks on 2 node"):
        render(deck, "aurora", "/p/d.yaml", "/p/s", nodes=2)  # 12 tiles per node: 24


def test_local_uses_the_machines_cores(monkeypatch):
    import app.jobscript as js

    monkeypatch.setattr(js.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    deck = su3_deck(grid="null", reps=1, device="cpu", shape=(8, 8, 8, 8))
    r = render(deck, "local", "/p/d.yaml", "/p/s", walltime=None)
    assert r.layout.total_ranks == 4  # the most ranks <= 6 cores that divide 8^4
    assert "export OMP_NUM_THREADS=$(( $(nproc) > NRANKS ? $(nproc) / NRANKS : 1 ))" in r.text


def _documented_commands(path: Path) -> list[str]:
    """``trivhmc ...`` command lines of the fenced code blocks of a Markdown file
    (continuation lines joined, trailing ``# comments`` dropped)."""
    lines, inside, pending = [], False, ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.split(r"\s#\s", line)[0].strip()
        if line.startswith("trivhmc "):
            lines.append(line)
    return lines


@pytest.mark.parametrize("doc", ["README.md", "docs/jobscripts.md"])
def test_documented_jobscript_and_validate_commands_run(doc, monkeypatch, capsys):
    """Every ``trivhmc jobscript`` example (with --dry-run added: nothing is written) and
    every ``trivhmc validate`` example of the docs runs as written from the repository root.
    (The README's frontier example lacked ``--set parallel.device=cuda`` and failed.)"""
    import shlex

    from app.cli import main

    commands = [
        c for c in _documented_commands(REPO / doc) if c.split()[1] in ("jobscript", "validate")
    ]
    assert any(c.split()[1] == "jobscript" for c in commands), commands
    monkeypatch.chdir(REPO)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "jobscript" and "--dry-run" not in argv:
            argv.append("--dry-run")
        assert main(argv) == 0, f"{doc}: {command}: {capsys.readouterr().err}"
        out = capsys.readouterr().out
        if argv[0] == "jobscript":
            assert out.startswith("#!/bin/bash"), command


# ---------------------------------------------------------------------------- output path
def test_an_existing_file_is_not_overwritten(tmp_path, capsys):
    """A hand-edited script, or another deck given as --output, was silently replaced; now
    only a file that holds this very script is accepted, anything else needs --overwrite
    (and the deck being rendered is never replaced)."""
    from app.cli import main

    deck = tmp_path / "su3.yaml"
    deck.write_text(SU3_FILE)
    other = tmp_path / "u1.yaml"
    other.write_text("theory: {name: u1, beta: 2.0}\n")
    script = tmp_path / "su3.frontier.slurm"
    script.write_text("edited\n")
    cmd = ["jobscript", "--system", "frontier", str(deck), "--set", "parallel.device=cuda"]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert f"{script} exists" in err and "--overwrite" in err and "warning" not in err
    assert script.read_text() == "edited\n"
    assert main(cmd + ["-o", str(other)]) == 2
    assert other.read_text() == "theory: {name: u1, beta: 2.0}\n"
    assert main(cmd + ["-o", str(deck), "--overwrite"]) == 2
    assert "would overwrite the deck" in capsys.readouterr().err
    assert deck.read_text() == SU3_FILE
    assert main(cmd + ["--dry-run"]) == 0  # prints, writes nothing
    assert script.read_text() == "edited\n"
    capsys.readouterr()
    assert main(cmd + ["--overwrite"]) == 0
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and os.access(script, os.X_OK)
    assert capsys.readouterr().out.startswith(f"wrote {script}")
    assert main(cmd) == 0  # the same script again: nothing to lose
    assert capsys.readouterr().out.startswith(f"unchanged {script}")
    assert main(cmd + ["--set", "run.seed=9"]) == 2  # a different script
    assert script.read_text() == text


def test_output_path_must_be_a_file_in_an_existing_directory(tmp_path, capsys):
    """`-o DIR` was an internal error (IsADirectoryError); a missing directory is exit 2
    too, before anything is done or created."""
    from app.cli import main

    deck = tmp_path / "su3.yaml"
    deck.write_text(SU3_FILE)
    (tmp_path / "runs").mkdir()
    cmd = ["jobscript", "--system", "local", str(deck), "-o"]
    assert main(cmd + [str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "internal error" not in err
    assert main(cmd + [str(tmp_path / "nodir" / "x.sh")]) == 2
    assert "nodir does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nodir").exists()
    assert main(cmd + [str(tmp_path / "runs" / "x.sh")]) == 0
    assert (tmp_path / "runs" / "x.sh").is_file()


# ---------------------------------------------------------------------------- flow model
def test_a_missing_flow_model_is_exit_7(tmp_path, monkeypatch, capsys):
    """The script's `trivhmc run` would exit 7 after the queue wait: jobscript says so now.
    A model that the deck's own train section stores is a warning (train it first)."""
    from app.cli import main

    monkeypatch.delenv("TRIVHMC_MODELS", raising=False)
    deck = tmp_path / "phi4_trivialized.yaml"
    deck.write_text((REPO / "inputs" / "phi4_trivialized.yaml").read_text())
    cmd = ["jobscript", "--system", "local", str(deck), "--dry-run"]
    assert main(cmd + ["--set", "sampler.flow.model=nosuch"]) == MissingModelError.exit_code
    err = capsys.readouterr().err
    assert "no model 'nosuch' in the registry" in err and "phi4_l12" in err
    assert main(cmd + ["--set", "sampler.flow.model=phi4_l12@abc"]) == 7  # pinned: not trainable
    capsys.readouterr()
    assert main(cmd) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("#!/bin/bash")
    assert "warning: sampler.flow.model: no model 'phi4_l12'" in captured.err
    assert f"trivhmc train {deck}" in captured.err
    assert main(cmd[:-1] + ["--set", "sampler.flow.model=nosuch"]) == 7  # nothing written
    assert not (tmp_path / "phi4_trivialized.local.sh").exists()


def test_a_missing_l2hmc_model_is_exit_7(tmp_path, monkeypatch, capsys):
    """An l2hmc deck's sampler.model was not checked: the script was written and its run
    failed after the queue wait. Missing: exit 7 naming the model and the registry; stored by
    the deck's own l2hmc train section: a warning; present: neither."""
    from app.cli import main

    monkeypatch.delenv("TRIVHMC_MODELS", raising=False)
    deck = tmp_path / "u1_l2hmc.yaml"
    deck.write_text(
        (REPO / "inputs" / "u1_l2hmc.yaml")
        .read_text()
        .replace("shape: [16, 16]", "shape: [4, 4]")
        .replace("steps: 150", "steps: 1")
        .replace("batch: 16", "batch: 2")
    )
    registry = tmp_path / "models"
    cmd = ["jobscript", "--system", "local", str(deck), "--dry-run"]
    assert main(cmd + ["--set", "sampler.model=nosuch"]) == MissingModelError.exit_code
    err = capsys.readouterr().err
    assert f"sampler.model: no model 'nosuch' in the registry {registry}" in err
    assert main(cmd[:-1] + ["--set", "sampler.model=nosuch"]) == 7  # nothing written
    assert not (tmp_path / "u1_l2hmc.local.sh").exists()
    capsys.readouterr()
    assert main(cmd) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("#!/bin/bash")
    assert "warning: sampler.model: no model 'u1_l2hmc_b4'" in captured.err
    assert f"trivhmc train {deck}" in captured.err
    assert main(["train", str(deck), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(cmd) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("#!/bin/bash") and "sampler.model" not in captured.err
