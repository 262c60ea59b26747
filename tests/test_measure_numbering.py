"""HDF5 ``config_trajectory`` is the 1-based trajectory count, like the configuration files.

A run's ensemble numbers each configuration as its ILDG file (``..._000004.lime`` holds the
configuration after 4 trajectories, record ``"trajectory": 3``), resume cuts by that number,
and files written before format version 3 (0-based record numbers) are still read as
counts and continued in their own numbering.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from app.cli import main
from app.io.hdf5 import FORMAT_VERSION, EnsembleWriter, read_config, read_metadata

DECK = """\
theory: {name: su3, beta: 5.7, action: wilson}
lattice: {shape: [2, 2, 2, 4]}
sampler: {steps: 3}
run: {seed: 4, thermalization: 2, trajectories: 6, save_every: 2, checkpoint_every: 4}
output: {directory: out, progress: false, formats: [hdf5, nersc]}
"""


def test_run_numbers_configs_like_its_files(tmp_path, capsys):
    deck = tmp_path / "deck.yaml"
    deck.write_text(DECK)
    assert main(["run", str(deck)]) == 0
    out = tmp_path / "out"
    with h5py.File(out / "ensemble_c0.h5", "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION >= 3
        assert f["config_trajectory"][:].tolist() == [4, 6, 8]  # after records 3, 5, 7
    names = sorted(p.name for p in (out / "configs").glob("*.nersc"))
    assert names == ["out_c0_000004.nersc", "out_c0_000006.nersc", "out_c0_000008.nersc"]
    assert read_metadata(out / "ensemble_c0.h5")["config_trajectory"] == [4, 6, 8]
    # the configuration numbered n is the field after trajectory n: the same as file n
    from app.io.nersc import read_nersc

    for i, name in enumerate(names):
        links, _ = read_nersc(out / "configs" / name)
        np.testing.assert_array_equal(read_config(out / "ensemble_c0.h5", i), links)
    # ... and the state after record n - 1: its plaquette is that record's
    import torch

    from kernels.theories.su3 import SU3Gauge
    from parallel import single_rank_grid

    th = SU3Gauge(single_rank_grid((2, 2, 2, 4)), 5.7)
    recs = {r["trajectory"]: r for r in map(json.loads, (out / "records.jsonl").open())}
    for i, n in enumerate((4, 6, 8)):
        u = torch.from_numpy(read_config(out / "ensemble_c0.h5", i)).unsqueeze(0)
        plaq = float(th.observables(u)["plaquette"][0])
        assert plaq == recs[n - 1]["observables"]["plaquette"][0]
        if n in recs:  # not the state after record n
            assert plaq != recs[n]["observables"]["plaquette"][0]
    # a longer resumed run continues the numbering
    assert main(["run", str(deck), "--set", "run.trajectories=8"]) == 0
    assert read_metadata(out / "ensemble_c0.h5")["config_trajectory"] == [4, 6, 8, 10]
    recs = [json.loads(x)["trajectory"] for x in (out / "records.jsonl").open()]
    assert recs == list(range(10))  # config n is the state after record n - 1
    capsys.readouterr()


def _old_file(path):
    """An ensemble as format_version 2 wrote it: config_trajectory = 0-based record."""
    w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 6), "hmc", 1, "old")
    for rec in (1, 3):
        w.append_observables(rec, {"plaquette": float(rec)})
        w.append_config(np.full((2, 4, 6), float(rec)), rec + 1, first=1)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 2
        f["config_trajectory"][:] = [1, 3]


def test_old_files_are_read_as_counts_and_continued_in_their_numbering(tmp_path):
    path = tmp_path / "old.h5"
    _old_file(path)
    assert read_metadata(path)["config_trajectory"] == [2, 4]
    w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 6), "hmc", 1, "new", mode="a")
    w.append_observables(5, {"plaquette": 5.0})
    w.append_config(np.full((2, 4, 6), 5.0), 6, first=1)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 2  # not mixed: the file keeps its numbering
        assert f["config_trajectory"][:].tolist() == [1, 3, 5]
    assert read_metadata(path)["config_trajectory"] == [2, 4, 6]
    w.truncate_after(3)  # resume from the checkpoint after record 3: config 4 stays
    assert read_metadata(path)["config_trajectory"] == [2, 4]
    assert read_config(path, -1)[0, 0, 0] == 3.0


def test_offline_measure_reports_record_numbers_for_old_and_new_files(tmp_path, capsys):
    for name, version in (("old.h5", 2), ("new.h5", FORMAT_VERSION)):
        path = tmp_path / name
        if version == 2:
            _old_file(path)
        else:
            w = EnsembleWriter(path, "u1", {"beta": 2.0}, (4, 6), "hmc", 1, "new")
            for rec in (1, 3):
                w.append_config(np.full((2, 4, 6), float(rec)), rec + 1, first=1)
        from app.measure import _entries

        assert [e[3] for e in _entries([(path, "hdf5")])] == [1, 3]


def test_nersc_files_carry_the_count_and_measure_gives_record_numbers(tmp_path, capsys):
    """SEQUENCE_NUMBER is the 1-based count (like config_trajectory); offline rows of NERSC,
    ILDG and HDF5 files all carry count - 1, the record number of the on-the-fly rows."""
    from app.io.nersc import read_nersc
    from app.measure import file_record_number

    deck = tmp_path / "deck.yaml"
    deck.write_text(
        DECK.replace("[hdf5, nersc]", "[hdf5, nersc, ildg]") + "measure: {polyakov: true}\n"
    )
    assert main(["run", str(deck)]) == 0
    configs = tmp_path / "out" / "configs"
    nersc = sorted(configs.glob("*.nersc"))
    seq = [int(read_nersc(p)[1].header["SEQUENCE_NUMBER"]) for p in nersc]
    assert seq == [4, 6, 8]
    # a copy under a foreign name: the number comes from the header, not the name
    foreign = tmp_path / "cfg.nersc"
    foreign.write_bytes(nersc[1].read_bytes())
    ildg = sorted(configs.glob("*.lime"))
    anon = tmp_path / "conf.lime"  # no count anywhere: its position among the files
    anon.write_bytes(ildg[0].read_bytes())
    target = tmp_path / "m.jsonl"
    files = [*map(str, nersc), str(foreign), *map(str, ildg), str(anon)]
    assert main(["measure", str(deck), *files, "-o", str(target)]) == 0
    got = [json.loads(x)["trajectory"] for x in target.read_text().splitlines()]
    assert got == [3, 5, 7, 5, 3, 5, 7, 7]
    assert main(["measure", str(deck)]) == 0  # the run's own HDF5 ensemble
    off = [
        json.loads(x)["trajectory"]
        for x in (tmp_path / "out" / "measurements_offline.jsonl").open()
    ]
    assert off == [3, 5, 7]
    assert file_record_number(0, tmp_path / "x_12.lime", 9) == 11
    assert file_record_number(0, tmp_path / "x_0.lime", 9) == 9
    capsys.readouterr()
