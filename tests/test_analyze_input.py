"""``trivhmc analyze`` refuses what it cannot analyse with one message and exit status 2
(docs/errors.md): values that are not numbers, files without production records or that are
not records / ensembles (empty, progress.json, checkpoints, plain HDF5, ILDG, NERSC),
``--bin`` beyond the measurements, a non-finite ``--S``, a directory mixing runs, a file where
``--plot`` needs a directory; and it accepts derived quantities for ``--observable``."""

from __future__ import annotations

import json
import math
import struct

import h5py
import numpy as np
import pytest

from app.analysis import analyze, gamma_method
from app.cli import main
from app.errors import InputError


def records(path, n=40, chains=1, seed=0, extra=None):
    """A small records.jsonl: 2 thermalization records, then ``n`` production records with
    ``plaquette`` and a topological charge ``Q_int``."""
    rng = np.random.default_rng(seed)
    lines = []
    for t in range(n + 2):
        rec = {
            "trajectory": t,
            "thermalization": t < 2,
            "dH": rng.normal(0, 0.1, chains).tolist(),
            "accepted": [True] * chains,
            "observables": {
                "plaquette": rng.normal(0.6, 0.01, chains).tolist(),
                "Q_int": rng.integers(-2, 3, chains).astype(float).tolist(),
            },
        }
        if extra and t in extra:
            extra[t](rec)
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(capsys, *argv):
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err):
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("trivhmc analyze: error:"), err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


# ------------------------------------------------------------------- values, not numbers
@pytest.mark.parametrize(
    "key, value, line_key",
    [
        ("plaquette", "abc", "observables.plaquette"),
        ("accepted", "yes", "accepted"),
        ("dH", {"x": 1}, "dH"),
        ("plaquette", ["0.5"], "observables.plaquette"),  # a number as text is not a number
        ("plaquette", [[1.0, 2.0], [3.0]], "observables.plaquette"),  # ragged
    ],
)
def test_value_that_is_not_a_number_names_file_line_and_key(tmp_path, capsys, key, value, line_key):
    def spoil(rec):
        if key in ("accepted", "dH"):
            rec[key] = value
        else:
            rec["observables"][key] = value

    path = records(tmp_path / "records.jsonl", extra={7: spoil})  # line 8
    code, out, err = run_cli(capsys, path)
    assert code == 2 and out == ""
    msg = one_error(err)
    assert "records.jsonl:8:" in msg and line_key in msg, msg


def test_observables_not_an_object_and_bad_lattice(tmp_path, capsys):
    path = records(tmp_path / "r.jsonl", extra={5: lambda r: r.update(observables=[1, 2])})
    code, _, err = run_cli(capsys, path)
    assert code == 2 and "r.jsonl:6: observables" in one_error(err)
    path = records(tmp_path / "r.jsonl", extra={5: lambda r: r.update(lattice=[4, "x"])})
    code, _, err = run_cli(capsys, path)
    assert code == 2 and "r.jsonl:6: lattice" in one_error(err)


# ------------------------------------------------------------------- nothing to analyse
def test_files_with_nothing_to_analyse(tmp_path, capsys):
    empty = tmp_path / "records.jsonl"
    empty.write_text("")
    therm = tmp_path / "therm.jsonl"
    therm.write_text(json.dumps({"trajectory": 0, "thermalization": True, "dH": [0.1]}) + "\n")
    progress = tmp_path / "progress.json"
    progress.write_text(json.dumps({"trajectory": 50, "total": 50, "finished": True}) + "\n")
    ckpt = tmp_path / "ckpt_00000040.h5"
    with h5py.File(ckpt, "w") as f:
        f.attrs["format"] = "trivhmc-checkpoint"
        f["field"] = np.zeros(4)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3.0)
    empty_ens = tmp_path / "ensemble_c0.h5"
    with h5py.File(empty_ens, "w") as f:
        f.attrs["format"] = "trivhmc-ensemble"
        g = f.create_group("observables")
        g.create_dataset("trajectory", (0,), np.int64)
        g.create_dataset("plaquette", (0,), float)
    cases = {
        empty: "holds no records (it is empty)",
        "/dev/null": "holds no records (it is empty)",
        therm: "no production records yet",
        progress: "progress.json (the run's progress file): none of its 1 production record",
        ckpt: "is not a trivhmc ensemble (format trivhmc-checkpoint)",
        plain: "holds no observables/NAME, dH or accepted datasets: not a trivhmc ensemble",
        empty_ens: "holds no committed trajectory yet",
    }
    for path, expected in cases.items():
        code, out, err = run_cli(capsys, path)
        assert code == 2 and out == "", (path, out)
        assert expected in one_error(err), (path, err)


def test_bin_beyond_the_measurements(tmp_path, capsys):
    path = records(tmp_path / "records.jsonl", n=40)
    for b in (41, 1000):
        code, out, err = run_cli(capsys, path, "--bin", b)
        assert code == 2 and out == ""
        assert f"--bin {b} exceeds the 40 measurements per chain" in one_error(err)
    code, out, _ = run_cli(capsys, path, "--bin", 20)
    assert code == 0 and "plaquette" in out and "<exp(-dH)>" in out
    # an observable measured on every 4th trajectory only: never silently left out
    sparse = records(
        tmp_path / "sparse.jsonl",
        n=40,
        extra={t: (lambda r: r["observables"].pop("Q_int")) for t in range(42) if t % 4},
    )
    code, out, err = run_cli(capsys, sparse, "--bin", 12)
    assert code == 2 and "--bin 12 exceeds the measurements per chain of Q_int (10)" in err
    code, out, _ = run_cli(capsys, sparse, "--bin", 12, "--observable", "plaquette")
    assert code == 0 and "plaquette" in out


@pytest.mark.parametrize("s", ["nan", "inf", "-inf", "-1"])
def test_S_must_be_finite(tmp_path, capsys, s):
    path = records(tmp_path / "records.jsonl")
    code, out, err = run_cli(capsys, path, f"--S={s}")
    assert code == 2 and out == ""
    assert "--S must be a finite number >= 0" in one_error(err)
    with pytest.raises(ValueError, match="S must be a finite number >= 0"):
        gamma_method(np.arange(10.0), S=float(s))


def test_other_option_values_before_reading(tmp_path, capsys):
    missing = tmp_path / "missing"  # not read: the option is refused first
    for args, expected in (
        (("--bin", "0"), "--bin 0"),
        (("--skip", "-1"), "--skip -1"),
        (("--volume", "0"), "--volume 0"),
    ):
        code, _, err = run_cli(capsys, missing, *args)
        assert code == 2 and expected in one_error(err)


# ------------------------------------------------------------------- mixed directories
def ensemble(path, theory="phi4", lattice=(8, 8), params=None, seed=0, n=30):
    params = {"beta": 0.6, "lambda": 0.5} if params is None else params
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs.update(
            format="trivhmc-ensemble",
            theory=theory,
            lattice=np.asarray(lattice),
            params=json.dumps(params),
        )
        g = f.create_group("observables")
        g["trajectory"] = np.arange(n)
        g["M"] = rng.normal(0, 1, n)
        g["dH"] = rng.normal(0, 0.1, n)
        g["accepted"] = np.ones(n)
    return path


@pytest.mark.parametrize(
    "other, expected",
    [
        ({"theory": "u1", "params": {"beta": 6.0}}, "theory phi4 != u1"),
        ({"lattice": (16, 16)}, "lattice [8, 8] != [16, 16]"),
        ({"params": {"beta": 0.7, "lambda": 0.5}}, 'params {"beta": 0.6} != {"beta": 0.7}'),
    ],
)
def test_directory_of_different_runs_is_refused(tmp_path, capsys, other, expected):
    ensemble(tmp_path / "ensemble_c0.h5")
    ensemble(tmp_path / "ensemble_c1.h5", seed=1, **other)
    code, out, err = run_cli(capsys, tmp_path)
    assert code == 2 and out == ""
    msg = one_error(err)
    assert "are not chains of one run" in msg and expected in msg, msg
    # chains of one run (another seed) are merged as before
    ensemble(tmp_path / "ensemble_c1.h5", seed=1)
    a = analyze(tmp_path)
    assert a.n_chains == 2 and a.observables["M"].n == 60


# ------------------------------------------------------------------- derived names
def test_observable_accepts_derived_names(tmp_path, capsys):
    path = records(tmp_path / "records.jsonl", n=60)
    code, out, err = run_cli(capsys, path, "--volume", 16, "--observable", "chi_t", "--json")
    assert code == 0, err
    j = json.loads(out)
    assert list(j["derived"]) == ["chi_t"] and j["observables"] == {}
    q = np.array(
        [
            json.loads(x)["observables"]["Q_int"][0]
            for x in path.read_text().splitlines()
            if not json.loads(x)["thermalization"]
        ]
    )
    assert j["derived"]["chi_t"]["mean"] == pytest.approx(np.mean(q**2) / 16, rel=1e-12)
    code, out, _ = run_cli(capsys, path, "--volume", 16, "--observable", "chi_t")
    assert code == 0 and "chi_t" in out and "no observables recorded" not in out
    code, _, err = run_cli(capsys, path, "--volume", 16, "--observable", "nope")
    assert code == 2 and "derived: ['chi_t']" in one_error(err)
    # without a volume chi_t cannot be formed: unknown, with the list of what there is
    code, _, err = run_cli(capsys, path, "--observable", "chi_t")
    assert code == 2 and "unknown observable(s) ['chi_t']" in one_error(err)


# ------------------------------------------------------------------- configurations
def test_configuration_files_are_named_as_such(tmp_path, capsys):
    from app.io.lime import LIME_MAGIC

    lime = tmp_path / "cfg_c0_000004.lime"
    lime.write_bytes(struct.pack(">I", LIME_MAGIC) + bytes(range(200, 256)) * 4)
    nersc = tmp_path / "cfg.nersc"
    nersc.write_bytes(b"BEGIN_HEADER\nDATATYPE = 4D_SU3_GAUGE\nEND_HEADER\n" + b"\xff" * 64)
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x89" * 8)
    for path, expected in (
        (lime, "is an ILDG configuration, not a records file or ensemble; analyze reads"),
        (nersc, "is a NERSC configuration, not a records file or ensemble; analyze reads"),
        (binary, "is not a records file (not UTF-8 text)"),
    ):
        code, out, err = run_cli(capsys, path)
        assert code == 2 and out == ""
        msg = one_error(err)
        assert expected in msg and "codec" not in msg, msg


# ------------------------------------------------------------------- --plot target
def test_plot_target_checked_before_reading(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = records(tmp_path / "records.jsonl")
    pf = tmp_path / "pf"
    pf.write_text("mine")
    for target in (pf, pf / "sub"):
        code, out, err = run_cli(capsys, path, "--plot", target)
        assert code == 2 and out == ""  # no table: refused before anything is read
        assert "is not a directory" in one_error(err)
    assert pf.read_text() == "mine"
    code, out, _ = run_cli(capsys, path, "--plot", tmp_path / "new" / "plots")
    assert code == 0 and (tmp_path / "new" / "plots" / "plaquette.png").exists()


def test_non_finite_tau_exp_still_refused(tmp_path, capsys):
    path = records(tmp_path / "records.jsonl")
    code, _, err = run_cli(capsys, path, "--tau-exp", "nan")
    assert code == 2 and "--tau-exp" in one_error(err)
    assert math.isfinite(analyze(path).observables["plaquette"].mean)


def test_all_nan_observable_selected_is_an_error(tmp_path, capsys):
    def nan_t0(rec):
        rec["observables"]["t0"] = [float("nan")]

    path = records(tmp_path / "records.jsonl", extra={t: nan_t0 for t in range(42)})
    code, _, err = run_cli(capsys, path, "--observable", "t0")
    assert code == 2 and "['t0']" in one_error(err) and "no finite measurement" in err
    with pytest.raises(InputError, match="no finite measurement"):
        analyze(path, names=["t0"])
