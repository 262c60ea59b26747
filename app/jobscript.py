"""Batch scripts for a deck: PBS (Aurora, Polaris), Slurm (Frontier) or plain mpiexec.

Templates are package data (``app/templates/*``, read with :mod:`importlib.resources`, so
they work from an installed wheel); ``jobscripts/`` in the repository holds examples
rendered from them (``python -m app.jobscript --examples``) and a README.

A template is a bash script with ``{{name}}`` placeholders; every placeholder must be
filled and every value given must be used (:func:`fill`). Each script

* requests ``nodes`` nodes and starts ``nodes x ranks_per_node`` ranks, which must equal the
  deck's ``prod(parallel.grid) x parallel.replicas`` (or, with a free grid, give a valid
  process grid for the lattice),
* binds one rank per GPU / GPU tile (Aurora ``ZE_AFFINITY_MASK`` per tile, Polaris
  ``CUDA_VISIBLE_DEVICES`` per A100, Frontier ``--gpus-per-task=1 --gpu-bind=closest``),
* exports what GPU-aware MPI needs (``MPIR_CVAR_ENABLE_GPU=1`` on Aurora,
  ``MPICH_GPU_SUPPORT_ENABLED=1`` on Cray MPICH) and ``TRIVHMC_GPU_AWARE_MPI=1``,
* runs ``trivhmc run deck.yaml --set run.max_runtime=<wall time - margin>``, which resumes
  from the last checkpoint, then resubmits itself while ``trivhmc run --status`` says the
  deck is incomplete and the job made progress (docs/jobscripts.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .deck import Deck, load_deck
from .errors import InputError, LayoutError


@dataclass(frozen=True)
class System:
    """A batch system: its template, scheduler, GPU devices and threads per node/rank, the deck
    device it expects, GPU-aware-MPI environment, filesystems and a module-load hint."""

    name: str
    template: str
    scheduler: str  # pbs | slurm | none
    gpus_per_node: int  # GPU devices (tiles, GCDs) per node; 0: no GPU binding
    threads_per_rank: int
    device: str  # the deck's parallel.device expected on this system
    gpu_env: tuple[str, ...]
    filesystems: str = ""
    module_hint: str = ""


SYSTEMS = {
    "aurora": System(
        "aurora",
        "aurora.pbs",
        "pbs",
        12,
        8,
        "xpu",
        ("MPIR_CVAR_ENABLE_GPU=1",),
        "home:flare",
        "# module load frameworks   # Intel torch with xpu support",
    ),
    "polaris": System(
        "polaris",
        "polaris.pbs",
        "pbs",
        4,
        8,
        "cuda",
        ("MPICH_GPU_SUPPORT_ENABLED=1",),
        "home:eagle",
        "# module use /soft/modulefiles; module load conda",
    ),
    "frontier": System(
        "frontier",
        "frontier.slurm",
        "slurm",
        8,
        7,
        "cuda",
        ("MPICH_GPU_SUPPORT_ENABLED=1",),
        "",
        "# module load PrgEnv-gnu rocm craype-accel-amd-gfx90a",
    ),
    "local": System("local", "local.sh", "none", 0, 1, "", ()),
}

#: Aurora: cores per tile-rank, socket 0 tiles 0-5 on cores 1-48, socket 1 on 53-100
AURORA_CPU_LISTS = [f"{a}-{a + 7}" for a in (1, 9, 17, 25, 33, 41, 53, 61, 69, 77, 85, 93)]

SUFFIX = {"pbs": ".pbs", "slurm": ".slurm", "none": ".sh"}

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def template_text(name: str) -> str:
    """A template shipped as package data (``app/templates/<name>``)."""
    return files("app").joinpath("templates", name).read_text()


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}`` placeholders; every placeholder must have a value and every value
    a placeholder (a typo in either fails loudly)."""
    names = set(_PLACEHOLDER.findall(template))
    missing = names - set(values)
    unused = set(values) - names
    if missing or unused:
        raise ValueError(
            f"template placeholders missing {sorted(missing)}, unused {sorted(unused)}"
        )
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_walltime(text: str) -> int:
    """``HH:MM:SS`` -> seconds."""
    m = re.fullmatch(r"(\d+):([0-5]\d):([0-5]\d)", text.strip())
    if not m:
        raise InputError(f"--walltime {text!r}: expected HH:MM:SS")
    h, mnt, s = (int(x) for x in m.groups())
    seconds = 3600 * h + 60 * mnt + s
    if seconds <= 0:
        raise InputError("--walltime must be positive")
    return seconds


def max_runtime(walltime_s: int) -> int:
    """Seconds the run may take so it can checkpoint and resubmit before the wall time:
    the wall time minus a margin of 10 % (at least 5 minutes, at most half the wall time)."""
    margin = min(max(300, walltime_s // 10), walltime_s // 2)
    return walltime_s - margin


@dataclass
class Layout:
    """Nodes, ranks per node, total ranks and the process grid of one job (:func:`plan`)."""

    nodes: int
    ranks_per_node: int
    total_ranks: int
    grid: tuple[int, ...]


def plan(deck: Deck, system: System, nodes: int | None, ranks_per_node: int | None) -> Layout:
    """Node and rank counts for ``deck`` on ``system``, consistent with the deck's process
    grid and replicas. A bad option value is an :class:`InputError` (exit 2); a rank count
    that the deck's lattice, ``parallel.grid`` or ``parallel.replicas`` does not fit is a
    :class:`LayoutError` (exit 4, as for ``validate --ranks`` and ``run``) saying what
    would work."""
    from parallel.grid import GridError

    from .preflight import _choose_grid

    reps = deck.parallel.replicas
    per_rep = deck.ranks_per_replica
    need = None if per_rep is None else per_rep * reps
    if nodes is not None and nodes < 1:
        raise InputError("--nodes must be >= 1")
    if ranks_per_node is not None and ranks_per_node < 1:
        raise InputError("--ranks-per-node must be >= 1")
    if system.scheduler == "none":
        if nodes not in (None, 1):
            raise InputError("--system local runs on one node; drop --nodes")
        nodes = 1
        if ranks_per_node is None:
            ranks_per_node = need if need is not None else local_ranks(deck)
    elif ranks_per_node is None:
        ranks_per_node = system.gpus_per_node
    if system.gpus_per_node and ranks_per_node > system.gpus_per_node:
        raise InputError(
            f"{system.name} has {system.gpus_per_node} GPU devices per node; "
            f"--ranks-per-node {ranks_per_node} would share them"
        )
    if nodes is None:
        if need is None:
            nodes = 1
        elif need % ranks_per_node:
            raise LayoutError(
                f"the deck needs {need} ranks (parallel.grid {deck.parallel.grid} x {reps} "
                f"replicas), not a multiple of {ranks_per_node} ranks per node; "
                f"give --ranks-per-node (a divisor of {need})"
            )
        else:
            nodes = need // ranks_per_node
    total = nodes * ranks_per_node
    if need is not None and total != need:
        raise LayoutError(
            f"{nodes} nodes x {ranks_per_node} ranks per node = {total} ranks, but the deck's "
            f"parallel.grid {deck.parallel.grid} x {reps} replicas needs {need}"
        )
    where = f"{nodes} node(s) x {ranks_per_node} ranks per node = {total} ranks"
    if total % reps:
        raise LayoutError(
            f"{where} cannot be split into parallel.replicas = {reps} replica groups of "
            "equal size; " + _layout_hint(deck, system, nodes, ranks_per_node)
        )
    try:
        grid = _choose_grid(deck.lattice.shape, total // reps, deck.parallel.grid)
    except GridError as exc:
        raise LayoutError(
            f"{where}: {str(exc).split('; use a rank count')[0]}; "
            + _layout_hint(deck, system, nodes, ranks_per_node)
        ) from None
    return Layout(nodes, ranks_per_node, total, tuple(grid))


def _layout_hint(deck: Deck, system: System, nodes: int, ranks_per_node: int) -> str:
    """What would work instead: the nearest node counts at this many ranks per node, and
    the ranks per node that fit on this many nodes."""
    from .preflight import _fits, fitting_rank_counts

    shape, reps, grid = deck.lattice.shape, deck.parallel.replicas, deck.parallel.grid
    near = fitting_rank_counts(shape, nodes * ranks_per_node, reps, grid, step=ranks_per_node)
    hints = []
    if near and system.scheduler != "none":
        hints.append(
            "--nodes "
            + " or ".join(str(n // ranks_per_node) for n in near)
            + f" (at {ranks_per_node} ranks per node)"
        )
    top = system.gpus_per_node or (os.cpu_count() or 1)
    rpn = [r for r in range(top, 0, -1) if _fits(shape, nodes * r, reps, grid)]
    if rpn:
        hints.append(f"--ranks-per-node {rpn[0]} ({nodes * rpn[0]} ranks on {nodes} node(s))")
    if not hints:
        return "no node count near this one fits the lattice; change the lattice or grid"
    return "use " + ", or ".join(hints)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_ranks(deck: Deck) -> int:
    """Ranks for a local run of a deck with a free grid: the most that fit the lattice and
    the replicas on this machine's cores."""
    from .preflight import _fits

    cores = available_cores()
    reps = deck.parallel.replicas
    fit = [n for n in range(cores, 0, -1) if _fits(deck.lattice.shape, n, reps, None)]
    return fit[0] if fit else reps


#: production queue per system (docs/jobscripts.md); debug queues only with --queue
PRODUCTION_QUEUES = {"aurora": "prod", "polaris": "prod", "frontier": "batch"}
#: Polaris' prod routing queue takes 10 nodes or more; smaller jobs go to preemptable
POLARIS_PROD_MIN_NODES = 10


def default_queue(system: System, nodes: int) -> str:
    """The production queue of ``system`` for a job of ``nodes`` nodes."""
    if system.name == "polaris" and nodes < POLARIS_PROD_MIN_NODES:
        return "preemptable"
    return PRODUCTION_QUEUES.get(system.name, "batch")


def default_setup(system: System) -> list[str]:
    """Environment lines: the system's module hint and the current virtual environment."""
    lines = [system.module_hint] if system.module_hint else []
    if sys.prefix != sys.base_prefix:
        lines.append(f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}")
    else:
        lines.append("# source /path/to/venv/bin/activate   # where trivhmc is installed")
    return lines


def default_output(deck_path: Path, system: System) -> Path:
    """``<deck stem>.<system><.pbs|.slurm|.sh>`` next to the deck."""
    return deck_path.with_name(f"{deck_path.stem}.{system.name}{SUFFIX[system.scheduler]}")


@dataclass
class Rendered:
    """A rendered job script: its text, the layout and the warnings to show the user."""

    text: str
    layout: Layout
    warnings: list[str]


def render(
    deck: Deck,
    system_name: str,
    deck_path: str | Path,
    script_path: str | Path,
    *,
    nodes: int | None = None,
    ranks_per_node: int | None = None,
    walltime: str | None = "01:00:00",
    account: str | None = None,
    queue: str | None = None,
    job_name: str | None = None,
    filesystems: str | None = None,
    setup: list[str] | None = None,
    overrides: list[str] = (),
    max_jobs: int = 50,
    workdir: str | Path | None = None,
    force: bool = False,
) -> Rendered:
    """The job script text for ``deck`` (already loaded with ``overrides``).

    ``deck_path``, ``script_path`` and ``workdir`` are written into the script as given
    (absolute paths for real use). ``walltime=None`` (local only): no run-time limit.
    A CPU deck for a GPU system is refused unless ``force`` (then, like a deck for another
    GPU type, it is a warning).
    """
    try:
        system = SYSTEMS[system_name]
    except KeyError:
        raise InputError(f"unknown system {system_name!r}; known: {sorted(SYSTEMS)}") from None
    if max_jobs < 1:
        raise InputError("--max-jobs must be >= 1")
    runtime_set, wall = _runtime(deck, system, walltime)  # option values first (exit 2)
    layout = plan(deck, system, nodes, ranks_per_node)
    warnings = []
    device_warning = _device_warning(deck, system, force)
    if device_warning:
        warnings.append(device_warning)
    if system.scheduler != "none" and not account:
        warnings.append("no --account given; set it in the script before submitting")
    gpu_env = _gpu_env(deck, system)
    name = job_name or f"trivhmc-{Path(deck_path).stem}"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    account_line = _account_line(system, account)
    q = lambda v: shlex.quote(str(v))  # noqa: E731
    overrides_sh = " ".join(f"--set {q(o)}" for o in overrides)
    values = {
        "deck": q(deck_path),
        "script": q(script_path),
        "overrides": overrides_sh,
        "runtime_set": runtime_set,
        "max_jobs": str(max_jobs),
    }
    chain = fill(template_text("chain.sh"), values).rstrip("\n")
    threads = str(system.threads_per_rank)
    if system.scheduler == "none":  # the machine's cores, shared by the ranks
        threads = "$(( $(nproc) > NRANKS ? $(nproc) / NRANKS : 1 ))"
    values = {
        "chain": chain,
        "workdir": q(workdir if workdir is not None else Path(deck_path).parent),
        "setup": "\n".join(setup if setup is not None else default_setup(system)),
        "total_ranks": str(layout.total_ranks),
        "threads": threads,
        "gpu_env": "\n".join(gpu_env),
    }
    if system.name == "polaris" and not queue and layout.nodes < POLARIS_PROD_MIN_NODES:
        warnings.append(
            f"queue preemptable ({layout.nodes} node(s) < {POLARIS_PROD_MIN_NODES}, the "
            "minimum of prod): a preempted job does not resubmit itself; rerun the script "
            "(the run resumes from its last checkpoint) or choose --queue"
        )
    if system.scheduler != "none":
        values.update(
            job_name=name,
            account_line=account_line,
            queue=queue or default_queue(system, layout.nodes),
            nodes=str(layout.nodes),
            ranks_per_node=str(layout.ranks_per_node),
            walltime=wall,
        )
    if system.filesystems:
        values["filesystems"] = filesystems or system.filesystems
    if system.name == "aurora":
        values["cpu_bind"] = "list:" + ":".join(AURORA_CPU_LISTS[: layout.ranks_per_node])
    text = fill(template_text(system.template), values)
    return Rendered(text, layout, warnings)


def _device_warning(deck: Deck, system: System, force: bool) -> str | None:
    """The warning for a deck whose ``parallel.device`` is not the system's GPU type, or
    None; a CPU deck on a GPU system is an :class:`InputError` unless ``force``."""
    if not system.device or deck.parallel.device == system.device:
        return None
    text = (
        f"the deck runs on parallel.device={deck.parallel.device} but {system.name}'s "
        f"GPUs are '{system.device}' devices (--set parallel.device={system.device})"
    )
    if deck.parallel.device == "cpu" and not force:  # a CPU run on a GPU machine
        raise InputError(f"{text}; or add --force to run it on the CPUs")
    return text


def _runtime(deck: Deck, system: System, walltime: str | None) -> tuple[str, str]:
    """``(--set run.max_runtime=... or "", scheduler wall time)``; the run's limit is the
    wall time minus the margin of :func:`max_runtime`, or the deck's if that is shorter."""
    if walltime is None:
        if system.scheduler != "none":
            raise InputError(f"{system.name} needs --walltime")
        return "", "unlimited"
    seconds = max_runtime(parse_walltime(walltime))
    if deck.run.max_runtime is not None:
        seconds = min(seconds, int(deck.run.max_runtime))
    return f"--set run.max_runtime={seconds}", walltime


def _gpu_env(deck: Deck, system: System) -> list[str]:
    """``export`` lines for GPU-aware MPI: the system's variables and
    ``TRIVHMC_GPU_AWARE_MPI=1`` on a GPU system unless the deck says
    ``gpu_aware_mpi: false``; elsewhere ``TRIVHMC_GPU_AWARE_MPI=1`` only if the deck asks."""
    gpu_aware = deck.parallel.gpu_aware_mpi
    if system.gpus_per_node and gpu_aware is not False:
        return [f"export {v}" for v in system.gpu_env] + ["export TRIVHMC_GPU_AWARE_MPI=1"]
    if gpu_aware:
        return ["export TRIVHMC_GPU_AWARE_MPI=1"]
    return ["export TRIVHMC_GPU_AWARE_MPI=0"]


def _account_line(system: System, account: str | None) -> str:
    """The scheduler's account directive (a placeholder to edit when ``account`` is not
    given); empty without a scheduler."""
    if system.scheduler == "pbs":
        return f"#PBS -A {account}" if account else "#PBS -A <project>  # set --account"
    if system.scheduler == "slurm":
        return f"#SBATCH -A {account}" if account else "#SBATCH -A <project>  # set --account"
    return ""


# ---------------------------------------------------------------------------- examples
EXAMPLES = [
    # system, deck, options, overrides
    ("aurora", "su3.yaml", {"nodes": 2, "ranks_per_node": 8}, ["parallel.device=xpu"]),
    ("polaris", "su3.yaml", {"nodes": 2}, ["parallel.device=cuda"]),
    ("frontier", "su3.yaml", {"nodes": 2}, ["parallel.device=cuda"]),
    ("local", "quickstart.yaml", {"ranks_per_node": 2, "walltime": None}, []),
]
EXAMPLE_ROOT = "/path/to/project"


def render_examples(repo: Path) -> dict[str, str]:
    """``jobscripts/<name>`` -> text of the example scripts rendered from ``inputs/``."""
    out = {}
    for system_name, deck_name, opts, overrides in EXAMPLES:
        deck = load_deck(repo / "inputs" / deck_name, overrides)
        system = SYSTEMS[system_name]
        deck_path = f"{EXAMPLE_ROOT}/inputs/{deck_name}"
        script = default_output(Path(deck_path), system).name
        r = render(
            deck,
            system_name,
            deck_path,
            f"{EXAMPLE_ROOT}/inputs/{script}",
            workdir=f"{EXAMPLE_ROOT}/inputs",
            account="MYPROJECT" if system.scheduler != "none" else None,
            setup=[
                system.module_hint or "# environment",
                f"source {EXAMPLE_ROOT}/.venv/bin/activate",
            ],
            overrides=overrides,
            **{"walltime": "02:00:00", **opts},
        )
        out[script] = r.text
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m app.jobscript --examples | --check``: re-render (or check) ``jobscripts/``."""
    ap = argparse.ArgumentParser(prog="python -m app.jobscript")
    ap.add_argument("--examples", action="store_true", help="re-render jobscripts/ examples")
    ap.add_argument("--check", action="store_true", help="exit 1 if the examples are stale")
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    if not (args.examples or args.check):
        ap.error("nothing to do; use --examples or --check")
    stale = []
    for name, text in render_examples(repo).items():
        path = repo / "jobscripts" / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            path.chmod(0o755)
            print(f"wrote {path}")
    if stale:
        print(f"stale examples in jobscripts/: {stale}; run python -m app.jobscript --examples")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
