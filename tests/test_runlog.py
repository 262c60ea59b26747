"""run.log (one line per trajectory), the end-of-run summary (ensemble / this invocation /
thermalization) and configuration files numbered by the 1-based trajectory count."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import main
from app.runlog import format_line, summarize

DECK = """\
theory: {name: u1, beta: 2.0}
lattice: {shape: [4, 4]}
sampler: {steps: 2, trajectory_length: 1.5}
run: {seed: 5, thermalization: 3, trajectories: 5, checkpoint_every: 4, chains: 2}
output: {directory: out, progress: false}
"""


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]


def count(recs: list[dict], therm: bool, start: int = 0) -> tuple[int, int]:
    acc = [
        a
        for r in recs
        if r["thermalization"] == therm and r["trajectory"] >= start
        for a in r["accepted"]
    ]
    return sum(acc), len(acc)


def test_run_log_and_summary_across_invocations(tmp_path, capsys):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK)
    out = tmp_path / "out"
    assert main(["run", str(deck)]) == 0  # 8 trajectories, checkpoints at 4 and 8
    first = capsys.readouterr().out
    recs = records(out)
    a, n = count(recs, False)
    assert n == 10 and 0 < a < n  # step size chosen so that some are rejected
    ta, tn = count(recs, True)
    assert (
        f"acceptance: ensemble {a / n:.3f} ({a}/{n}), this invocation {a / n:.3f} ({a}/{n})"
        in first
    )
    assert f"thermalization {ta / tn:.3f} ({ta}/{tn})" in first
    # a kill after trajectory 8 left a line the resume must drop
    with open(out / "run.log", "a") as f:
        f.write("traj       9 prod   acc 0/2  (cut by a kill\n")
    assert main(["run", str(deck), "--set", "run.trajectories=9"]) == 0  # resumes at 8
    second = capsys.readouterr().out
    recs = records(out)
    a, n = count(recs, False)
    a2, n2 = count(recs, False, start=8)
    assert n == 18 and n2 == 8
    assert f"ensemble {a / n:.3f} ({a}/{n}), this invocation {a2 / n2:.3f} ({a2}/{n2})" in second
    assert "ran 4" in second
    log = (out / "run.log").read_text().splitlines()
    assert log[0].startswith("#")
    assert [int(x.split()[1]) for x in log[1:]] == list(range(1, 13))
    assert log[1:] == [format_line(r) for r in recs]
    assert all(" therm " in x for x in log[1:4]) and all(" prod " in x for x in log[4:])
    assert "acc " in log[5] and "dH " in log[5] and "plaquette " in log[5]
    # a finished deck run again: nothing done, the ensemble's acceptance still reported
    assert main(["run", str(deck), "--set", "run.trajectories=9"]) == 0
    third = capsys.readouterr().out
    assert "already complete" in third and f"ensemble {a / n:.3f} ({a}/{n})" in third
    assert "this invocation none" in third


def test_summarize_counts_the_last_record_of_a_trajectory(tmp_path):
    lines = [
        {"trajectory": 0, "thermalization": True, "accepted": [False, True]},
        {"trajectory": 1, "thermalization": False, "accepted": [False, False]},
        {"trajectory": 1, "thermalization": False, "accepted": [True, True]},  # regenerated
        {"trajectory": 2, "thermalization": False, "accepted": [True, False]},
    ]
    p = tmp_path / "records.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut")
    s = summarize(p, start=2)
    assert (s.production.accepted, s.production.total) == (3, 4)
    assert (s.this_production.accepted, s.this_production.total) == (1, 2)
    assert (s.thermalization.accepted, s.thermalization.total) == (1, 2)
    assert s.text().startswith("acceptance: ensemble 0.750 (3/4), this invocation 0.500 (1/2)")


def test_config_files_numbered_by_trajectory_count(tmp_path, capsys):
    deck = tmp_path / "deck.yaml"
    deck.write_text(
        "theory: {name: su3, beta: 6.0, action: wilson}\nlattice: {shape: [2, 2, 2, 2]}\n"
        "sampler: {steps: 2}\n"
        "run: {seed: 1, thermalization: 1, trajectories: 4, save_every: 2, start: cold}\n"
        "output: {directory: out, progress: false, formats: [ildg]}\n"
    )
    assert main(["run", str(deck)]) == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "out" / "configs").iterdir())
    # saved after production trajectories 2 and 4 = trajectories 3 and 5 of the run
    assert names == ["out_c0_000003.lime", "out_c0_000005.lime"]
