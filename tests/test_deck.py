"""Input decks: schema, error messages with key path and line, overrides, examples, docs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app.deck import Deck, DeckError, apply_override, load_deck, loads_deck
from app.deck_docs import DOC_PATH, render
from app.errors import InputError

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
theory:
  name: phi4
  beta: 0.616
  lambda: 0.5
lattice:
  shape: [12, 12]
run:
  seed: 7
  trajectories: 100
output:
  directory: runs/x
"""


def problems(text: str, overrides=()) -> list:
    with pytest.raises(DeckError) as exc:
        loads_deck(textwrap.dedent(text), source="deck.yaml", overrides=overrides)
    return exc.value.problems


def one(text: str, overrides=()):
    ps = problems(text, overrides)
    assert len(ps) == 1, ps
    return ps[0]


def test_good_deck_and_defaults():
    d = loads_deck(GOOD)
    assert d.theory.name == "phi4" and d.theory.couplings == {"beta": 0.616, "lambda": 0.5}
    assert d.lattice.shape == [12, 12] and d.ndim == 2 and d.volume == 144
    assert d.sampler.name == "hmc" and d.sampler.integrator == "omelyan"
    assert d.sampler.step_size == pytest.approx(0.1)
    assert d.parallel.replicas == 1 and d.parallel.grid is None and d.parallel.dtype == "float64"
    assert d.run.thermalization == 100 and d.run.total_trajectories == 200
    assert d.output.formats == ["hdf5"]
    assert d.physics() == {
        "theory": {"name": "phi4", "beta": 0.616, "lambda": 0.5},
        "lattice": [12, 12],
    }
    # the full deck with defaults round-trips
    again = loads_deck(d.to_yaml())
    assert again.to_dict() == d.to_dict()


def test_unknown_key_nearest_name_and_line():
    p = one(GOOD.replace("  lambda: 0.5", "  lamda: 0.5\n  lambda: 0.5"))
    assert p.path == ("theory", "lamda")
    assert p.where == "line 4"
    assert "did you mean 'lambda'?" in p.message
    msg = str(DeckError([p], "deck.yaml"))
    assert msg.startswith("deck.yaml, line 4: theory.lamda: unknown key 'lamda'")


def test_unknown_section_and_nested_key():
    ps = problems(GOOD + "sampeler:\n  steps: 4\n" + "run2: 1\n")
    by_path = {p.path: p for p in ps}
    assert "did you mean 'sampler'?" in by_path[("sampeler",)].message
    assert by_path[("sampeler",)].where == "line 12"
    assert "did you mean 'run'?" in by_path[("run2",)].message
    p = one(GOOD.replace("  trajectories: 100", "  trajectories: 100\n  seeed: 3"))
    assert p.path == ("run", "seeed") and p.where == "line 10" and "'seed'" in p.message


def test_keys_of_the_selected_theory():
    # u1 has no lambda: unknown key, the valid keys listed are u1's
    p = one(GOOD.replace("name: phi4", "name: u1").replace("  beta: 0.616\n", "  beta: 2.0\n"))
    assert p.path == ("theory", "lambda") and p.where == "line 4"
    assert "for theory u1" in p.message and "beta, name" in p.message


@pytest.mark.parametrize(
    "old,new,path,line,needle",
    [
        ("shape: [12, 12]", "shape: [12, 12.5]", ("lattice", "shape", 1), 6, "integer"),
        ("beta: 0.616", 'beta: "0.616"', ("theory", "beta"), 3, "number"),
        ("seed: 7", "seed: true", ("run", "seed"), 8, "integer"),
        ("trajectories: 100", "trajectories: [1]", ("run", "trajectories"), 9, "list"),
    ],
)
def test_wrong_type(old, new, path, line, needle):
    p = one(GOOD.replace(old, new))
    assert p.path == path and p.where == f"line {line}"
    assert needle in p.message


@pytest.mark.parametrize(
    "old,new,path,line",
    [
        ("lambda: 0.5", "lambda: -0.5", ("theory", "lambda"), 4),
        ("shape: [12, 12]", "shape: [12, 1]", ("lattice", "shape", 1), 6),
        ("trajectories: 100", "trajectories: 0", ("run", "trajectories"), 9),
        ("seed: 7", "seed: -1", ("run", "seed"), 8),
    ],
)
def test_out_of_range(old, new, path, line):
    p = one(GOOD.replace(old, new))
    assert p.path == path and p.where == f"line {line}"
    assert "greater than" in p.message


def test_ranges_in_optional_sections():
    text = GOOD + "sampler: {steps: 0, target_acceptance: 1.5, trajectory_length: 0}\n"
    ps = problems(text)
    assert {p.path for p in ps} == {
        ("sampler", "steps"),
        ("sampler", "target_acceptance"),
        ("sampler", "trajectory_length"),
    }
    assert all(p.where == "line 12" for p in ps)


def test_missing_couplings_and_sections():
    p = one(GOOD.replace("  lambda: 0.5\n", ""))
    assert p.path == ("theory", "lambda") and p.message == "required key is missing"
    assert p.where == "line 1"  # the theory section
    p = one(
        GOOD.replace("name: phi4", "name: su3")
        .replace("  lambda: 0.5\n", "")
        .replace("[12, 12]", "[4, 4, 4, 4]")
    )
    assert p.path == ("theory", "action")
    ps = problems("theory: {name: u1, beta: 1.0}\nlattice: {shape: [4, 4]}\n")
    assert {p.path for p in ps} == {("run",), ("output",)}


def test_theory_name_and_action_values():
    p = one(GOOD.replace("name: phi4", "name: phi44"))
    assert p.path == ("theory", "name") and p.where == "line 2"
    assert "did you mean 'phi4'?" in p.message
    su3 = "theory: {name: su3, beta: 6.0, action: symanzk}\nlattice: {shape: [4, 4, 4, 4]}\n"
    su3 += "run: {seed: 1, trajectories: 1}\noutput: {directory: d}\n"
    p = one(su3)
    assert p.path == ("theory", "action") and "did you mean 'symanzik'?" in p.message
    for action in ("wilson", "symanzik", "iwasaki"):
        assert loads_deck(su3.replace("symanzk", action)).theory.action == action


@pytest.mark.parametrize(
    "theory,shape,ok",
    [
        ("{name: u1, beta: 2.0}", [8, 8], True),
        ("{name: u1, beta: 2.0}", [8, 8, 8, 8], False),
        ("{name: phi4, beta: 0.6, lambda: 0.5}", [8], False),
        ("{name: su3, beta: 6.0, action: wilson}", [4, 4, 4, 4], True),
        ("{name: su3, beta: 6.0, action: wilson}", [4, 4], False),
    ],
)
def test_lattice_dims_per_theory(theory, shape, ok):
    text = f"theory: {theory}\nlattice:\n  shape: {shape}\nrun: {{seed: 1, trajectories: 1}}\n"
    text += "output: {directory: d}\n"
    if ok:
        assert loads_deck(text).lattice.shape == shape
    else:
        p = one(text)
        assert p.path == ("lattice", "shape") and p.where == "line 3"
        assert "needs a" in p.message


def test_cross_section_checks():
    p = one(GOOD + "parallel: {grid: [5, 0]}\n")
    assert p.path == ("parallel", "grid", 0) and p.where == "line 12"
    p = one(GOOD + "parallel: {grid: [2, 2, 1]}\n")
    assert p.path == ("parallel", "grid") and "3 entries" in p.message
    assert loads_deck(GOOD + "parallel: {grid: [3, 0], replicas: 2}\n").parallel.grid == [3, 0]
    p = one(GOOD + "sampler: {name: trivialized_hmc}\n")
    assert p.path == ("sampler", "flow") and "needs a flow" in p.message
    p = one(GOOD + "sampler: {flow: {model: m1}}\n")
    assert p.path == ("sampler", "flow") and "does not use a flow" in p.message
    d = loads_deck(GOOD + "sampler: {name: flow_metropolis, flow: {model: phi4_L12@v2}}\n")
    assert d.sampler.flow.model == "phi4_L12@v2"
    p = one(GOOD.replace("directory: runs/x", "directory: runs/x\n  formats: [hdf5, ildg]"))
    assert p.path == ("output", "formats", 1) and "SU(3)" in p.message and p.where == "line 12"


@pytest.mark.parametrize(
    "train",
    [
        "train: {architecture: phi4_minimal, model_name: NAME}",
        "train: {objective: l2hmc, model_name: NAME}",
    ],
)
@pytest.mark.parametrize("name", ["index.json", "INDEX.json"])
def test_reserved_model_name_is_refused_at_load(tmp_path, capsys, train, name):
    """train.model_name: index.json matched the key's pattern and failed only when `trivhmc
    train` saved the model (the registry's own index file, app/registry.py RESERVED_NAMES,
    compared in lower case): the deck refuses it, naming the key and its line (exit 2)."""
    from app.cli import main

    p = one(GOOD + train.replace("NAME", name) + "\n")
    assert p.path == ("train", "model_name") and p.where == "line 12"
    assert p.message == (
        f"invalid model name {name!r}: reserved for the registry's own index.json; choose "
        "another name"
    )
    p = one(GOOD + train.replace("NAME", "ok") + "\n", [f"train.model_name={name}"])
    assert p.path == ("train", "model_name") and p.where == f"--set train.model_name={name}"
    deck = tmp_path / "deck.yaml"
    deck.write_text(GOOD + train.replace("NAME", name) + "\n")
    assert main(["validate", str(deck)]) == DeckError.exit_code == 2
    err = capsys.readouterr().err
    assert f"{deck}, line 12: train.model_name: invalid model name {name!r}: reserved" in err
    assert loads_deck(GOOD + train.replace("NAME", "index.json.v2") + "\n")


@pytest.mark.parametrize("name", [".", "..", ".hidden"])
def test_model_name_with_a_leading_dot_is_refused_at_load(name):
    """The registry refuses a name with a leading '.' (app/registry.py _check_name); the
    deck's pattern refuses it when the deck is loaded, not when `trivhmc train` saves."""
    p = one(GOOD + f"train: {{architecture: phi4_minimal, model_name: '{name}'}}\n")
    assert p.path == ("train", "model_name") and p.where == "line 12"
    assert loads_deck(GOOD + "train: {architecture: phi4_minimal, model_name: a.b}\n")


def test_mps_needs_float32():
    """torch's MPS backend has no float64: a deck asking for both is refused at load, naming
    parallel.device, instead of failing at the first tensor of the run."""
    p = one(GOOD, ["parallel.device=mps"])
    assert p.path == ("parallel", "device") and "float64" in p.message
    assert "parallel.dtype: float32" in p.message
    assert loads_deck(GOOD, overrides=["parallel.device=mps", "parallel.dtype=float32"])


def test_tuning_needs_thermalization():
    text = GOOD.replace("  seed: 7", "  seed: 7\n  thermalization: 0")
    text += "sampler: {target_acceptance: 0.8}\n"
    p = one(text)
    assert p.path == ("sampler", "target_acceptance") and "thermalization" in p.message


def test_start_file_relative_to_deck(tmp_path):
    deck = tmp_path / "d.yaml"
    deck.write_text(GOOD.replace("  trajectories: 100", "  trajectories: 100\n  start: cfg.lime"))
    with pytest.raises(DeckError) as exc:
        load_deck(deck)
    assert exc.value.problems[0].path == ("run", "start")
    assert exc.value.problems[0].where == "line 10"
    (tmp_path / "cfg.lime").write_bytes(b"x")
    d = load_deck(deck)
    assert d.resolve(d.run.start) == tmp_path / "cfg.lime"
    assert d.output_dir == tmp_path / "runs" / "x"
    assert d.source == deck.resolve() and d.text == deck.read_text()


def test_all_problems_at_once_and_message():
    text = GOOD.replace("beta: 0.616", "beta: -1").replace("seed: 7", "seed: x")
    text = text.replace("  trajectories: 100", "  trajectories: 100\n  trajectoris: 3")
    ps = problems(text)
    assert [p.path for p in ps] == [("theory", "beta"), ("run", "seed"), ("run", "trajectoris")]
    msg = str(DeckError(ps, "deck.yaml"))
    assert msg.splitlines()[0] == "3 problems in deck.yaml:"
    assert "deck.yaml, line 3: theory.beta:" in msg
    assert "deck.yaml, line 10: run.trajectoris: unknown key" in msg


def test_yaml_errors():
    p = one("theory: {name: u1\nlattice: [")
    assert "YAML syntax error" in p.message and p.where is not None
    p = one(GOOD + "run:\n  seed: 3\n")
    assert "duplicate key" in p.message and p.where == "line 12" and "line 7" in p.message
    p = one("- a\n- b\n")
    assert "mapping" in p.message


def test_deck_error_is_input_error_not_value_error():
    assert issubclass(DeckError, InputError) and not issubclass(DeckError, ValueError)
    with pytest.raises(InputError, match="cannot read deck"):
        load_deck("/nonexistent/deck.yaml")


def test_overrides():
    d = loads_deck(GOOD, overrides=["run.seed=99", "lattice.shape=[8, 16]", "sampler.steps=4"])
    assert d.run.seed == 99 and d.lattice.shape == [8, 16] and d.sampler.steps == 4
    assert d.overrides == ["run.seed=99", "lattice.shape=[8, 16]", "sampler.steps=4"]
    d = loads_deck(GOOD, overrides=["theory.lambda=0", "output.formats=[hdf5]", "run.start=cold"])
    assert d.theory.lam == 0.0 and d.run.start == "cold"
    # switching the theory: its keys are checked against the new theory
    d = loads_deck(
        GOOD,
        overrides=["theory={name: u1, beta: 3}", "lattice.shape=[4,4]"],
    )
    assert d.theory.name == "u1" and d.theory.beta == 3.0


def test_override_errors():
    p = one(GOOD, ["run.sed=3"])
    assert p.path == ("run", "sed") and p.where == "--set run.sed=3"
    assert "did you mean 'seed'?" in p.message
    p = one(GOOD, ["theory.lamda=1"])
    assert "did you mean 'lambda'?" in p.message
    p = one(GOOD, ["run.seed=abc"])
    assert p.path == ("run", "seed") and p.where == "--set run.seed=abc"
    p = one(GOOD, ["run.seed.x=1"])
    assert "not a section" in p.message
    p = one(GOOD, ["run.seed"])
    assert "KEY.PATH=VALUE" in p.message
    str(DeckError([p], "deck.yaml"))  # formats
    data: dict = {}
    apply_override(data, "parallel.replicas=2")
    assert data == {"parallel": {"replicas": 2}}


@pytest.mark.parametrize("name", ["quickstart", "phi4", "u1", "su3"])
def test_example_decks_validate(name):
    d = load_deck(REPO / "inputs" / f"{name}.yaml")
    expected = {
        "quickstart": ("u1", 2),
        "phi4": ("phi4", 2),
        "u1": ("u1", 2),
        "su3": ("su3", 4),
    }[name]
    assert (d.theory.name, d.ndim) == expected
    if name == "phi4":
        assert d.theory.couplings == {"beta": 0.616, "lambda": 0.5}
        assert d.lattice.shape == [12, 12]
    if name == "u1":
        assert d.theory.beta == 2.0 and d.lattice.shape == [16, 16]
    if name == "su3":
        assert d.theory.couplings == {"beta": 6.0, "action": "wilson"}


def test_every_input_deck_validates():
    decks = sorted((REPO / "inputs").glob("*.yaml"))
    assert len(decks) >= 4
    for p in decks:
        assert isinstance(load_deck(p), Deck)


def test_docs_deck_md_up_to_date():
    assert DOC_PATH == REPO / "docs" / "deck.md"
    assert DOC_PATH.read_text() == render(), "run: python -m app.deck_docs"
    text = render()
    for key in ("`theory.lambda`", "`run.max_runtime`", "`sampler.flow.model`", "`output.formats`"):
        assert key in text


# ---------------------------------------------------------------------------- YAML 1.2 floats
SCHWINGER = """\
theory: {name: schwinger, beta: 2.0, kappa: 0.2, hasenbusch: [0.1], cg_tol: 1e-10}
lattice: {shape: [8, 8]}
run: {seed: 1, trajectories: 10}
output: {directory: runs/x}
"""


@pytest.mark.parametrize(
    "text,value", [("1e-10", 1e-10), ("1E5", 1e5), ("5e+3", 5e3), ("2.5e3", 2.5e3), ("3e0", 3.0)]
)
def test_yaml_12_floats_in_decks_and_overrides(text, value):
    """An exponent without a point or sign is a float (YAML 1.2), not a string (YAML 1.1)."""
    d = loads_deck(GOOD.replace("lambda: 0.5", f"lambda: {text}"))
    assert d.theory.lam == value and isinstance(d.theory.lam, float)
    d = loads_deck(GOOD, overrides=[f"theory.beta={text}"])
    assert d.theory.beta == value
    d = loads_deck(SCHWINGER.replace("1e-10", text))
    assert d.theory.cg_tol == value
    assert loads_deck(d.to_yaml()).theory.cg_tol == value  # and round-trips


def test_yaml_12_floats_keep_integers_and_strings():
    from app.deck import load_yaml

    assert load_yaml("{a: 10, b: 0x1f, c: 1_000, d: 1e, e: e5, f: abc, g: .5, h: 1.}") == {
        "a": 10, "b": 31, "c": 1000, "d": "1e", "e": "e5", "f": "abc", "g": 0.5, "h": 1.0,
    }  # fmt: skip
    assert type(load_yaml("10")) is int


def test_float_written_for_an_integer_is_an_error_naming_it():
    """``steps: 1e3`` is a float, and a count must be an integer: refused, like 10.0."""
    p = one(GOOD.replace("trajectories: 100", "trajectories: 1e2"))
    assert p.path == ("run", "trajectories") and p.where == "line 9"
    assert "valid integer" in p.message and "e.g. 100" in p.message
    p = one(GOOD, ["run.seed=7e0"])
    assert p.path == ("run", "seed") and p.where == "--set run.seed=7e0"


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999", "-1.0e999"])
def test_non_finite_numbers_are_refused(value):
    p = one(GOOD.replace("beta: 0.616", f"beta: {value}"))
    assert p.path == ("theory", "beta") and p.where == "line 3"
    assert "finite number" in p.message
    p = one(GOOD + f"sampler: {{trajectory_length: {value}}}\n")
    assert p.path == ("sampler", "trajectory_length") and "finite number" in p.message
    p = one(GOOD, [f"run.max_runtime={value}"])
    assert p.path == ("run", "max_runtime") and p.where == f"--set run.max_runtime={value}"
    p = one(SCHWINGER.replace("[0.1]", f"[0.1, {value}]"))
    assert p.path == ("theory", "hasenbusch", 1) and "finite number" in p.message
    # free-form mappings too (train.options are the architecture's keyword arguments)
    train = "train: {architecture: u1_sweep, model_name: m, options: {scale: VALUE}}\n"
    p = one(GOOD.replace("phi4", "u1").replace("  lambda: 0.5\n", "").replace("[12, 12]", "[8, 8]")
            + train.replace("VALUE", value))  # fmt: skip
    assert p.path == ("train", "options", "scale") and "finite number" in p.message
    with pytest.raises(DeckError, match="theory.beta: must be a finite number"):
        loads_deck(GOOD.replace("beta: 0.616", f"beta: {value}"), source="deck.yaml")
