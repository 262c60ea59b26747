"""The model registry as a shared store (issue 12): concurrent writers without locks, the
index rebuilt from the cards, damaged weights refused by ``models verify`` and at load,
export/import, and the ``trivhmc models`` command with its queries and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from app.cli import main
from app.registry import (
    RegistryError,
    list_models,
    load_model,
    load_verified,
    make_card,
    publish,
    resolve,
    save_model,
)
from app.registry_index import (
    INDEX_NAME,
    export_model,
    find_models,
    import_model,
    load_index,
    verify_models,
)
from kernels.flows import phi4_affine_flow
from kernels.theories.phi4 import Phi4
from parallel import single_rank_grid

REPO = Path(__file__).resolve().parent.parent
GRID = single_rank_grid((4, 4))


def _flow(seed: int):
    torch.manual_seed(seed)
    flow = phi4_affine_flow(GRID, n_pairs=1, hidden=(4,))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


def _save(root, name, seed=0, beta=0.3, tags=None):
    return save_model(_flow(seed), Phi4(GRID, beta=beta, lam=0.5), name, root=root, tags=tags)


def _flip_weight_byte(version_dir: Path) -> None:
    """Change one byte of the raw parameter data inside model.pt (a torch zip archive)."""
    path = version_dir / "model.pt"
    data = bytearray(path.read_bytes())
    state = torch.load(path, weights_only=True)
    key = max(state, key=lambda k: state[k].numel())
    raw = state[key].numpy().tobytes()
    at = bytes(data).find(raw[:32])
    assert at > 0
    data[at + 5] ^= 0x40
    path.write_bytes(bytes(data))


DECK = """\
theory:   {{name: phi4, beta: {beta}, lambda: 0.5}}
lattice:  {{shape: [4, 4]}}
sampler:  {{name: hmc, steps: 4}}
run:      {{seed: {seed}, trajectories: 2}}
output:   {{directory: out, progress: false}}
train:    {{architecture: phi4_affine, options: {{n_pairs: 1, hidden: [2]}}, steps: 3,
           batch: 4, lr: 0.01, model_name: {name}, registry: {registry}, tags: [{tag}]}}
"""

WORKER = """
import json, sys, time
from pathlib import Path
from app.cli import main
from app.registry_index import import_model
deck, go, *exports = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.01)
codes = [main(["train", deck, "--no-progress"])]
added = [import_model(e, None)[1] for e in exports]
print("RESULT " + json.dumps({"codes": codes, "added": [int(a) for a in added]}))
"""


def test_two_processes_train_and_import_into_one_registry(tmp_path) -> None:
    registry = tmp_path / "shared"
    # six exported models that both processes import at the same moment (same content: one
    # rename wins per model)
    src = tmp_path / "src"
    exports = [export_model(_save(src, "common", seed=s), tmp_path, src) for s in range(6)]
    go = tmp_path / "go"
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS="1", TRIVHMC_MODELS=str(registry))
    for i, (name, beta, tag) in enumerate([("alpha", 0.3, "prod"), ("beta", 0.4, "test")]):
        d = tmp_path / f"job{i}"
        d.mkdir()
        deck = DECK.format(beta=beta, seed=i + 1, name=name, registry=registry, tag=tag)
        (d / "deck.yaml").write_text(deck)
        cmd = [sys.executable, "-c", WORKER, str(d / "deck.yaml"), str(go), *map(str, exports)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True))
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [
        json.loads(line[len("RESULT ") :])
        for o in outs
        for line in o.splitlines()
        if line.startswith("RESULT ")
    ]
    assert [r["codes"] for r in results] == [[0], [0]]
    # exactly one of the two importers published each common model
    assert [a + b for a, b in zip(results[0]["added"], results[1]["added"])] == [1] * 6
    models = list_models(registry)
    names = sorted(m["ref"].split("@")[0] for m in models)
    assert names == ["alpha", "beta"] + ["common"] * 6
    assert all(problem is None for _, problem in verify_models(registry))
    for m in models:
        flow, card = load_model(m["ref"], GRID, theory="phi4", root=registry)
        assert card["hash"].startswith(m["ref"].split("@")[1])
    assert [m["ref"].split("@")[0] for m in find_models(registry, tags=["prod"])] == ["alpha"]
    leftovers = [p for p in registry.rglob(".*") if p.name != INDEX_NAME]
    assert leftovers == []


def test_publish_race_loser_keeps_the_published_version(tmp_path) -> None:
    theory = Phi4(GRID, beta=0.3, lam=0.5)
    flow = _flow(1)
    card = make_card(flow, theory, "m")
    state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
    from app.registry import content_hash

    card["hash"] = content_hash(state, card)
    assert publish(tmp_path, "m", card, state) is True
    assert publish(tmp_path, "m", card, state) is False  # the rename fails: already there
    assert [p.name for p in (tmp_path / "m").iterdir()] == [card["hash"][:16]]
    load_verified(f"m@{card['hash'][:8]}", tmp_path)


def test_index_rebuilt_when_missing_or_stale(tmp_path) -> None:
    r1 = _save(tmp_path, "a", seed=1)
    r2 = _save(tmp_path, "b", seed=2, beta=0.4, tags=["x"])
    index = tmp_path / INDEX_NAME
    assert not index.exists()  # saving does not need the index
    assert sorted(load_index(tmp_path)) == sorted([r1, r2]) and index.exists()
    first = json.loads(index.read_text())
    index.unlink()  # missing: rebuilt identically from the cards
    load_index(tmp_path)
    assert json.loads(index.read_text()) == first
    index.write_text("{not json")  # damaged: rebuilt
    assert sorted(load_index(tmp_path)) == sorted([r1, r2])
    # stale: a version published after the index was written, one removed, one card changed
    r3 = _save(tmp_path, "c", seed=3)
    import shutil

    shutil.rmtree(resolve(r1, tmp_path))
    card_path = resolve(r2, tmp_path) / "card.json"
    card = json.loads(card_path.read_text())
    card["tags"] = ["edited"]
    card_path.write_text(json.dumps(card, indent=2))
    entries = load_index(tmp_path)
    assert sorted(entries) == sorted([r2, r3])
    assert entries[r2]["tags"] == ["edited"]
    assert find_models(tmp_path, tags=["x"]) == []
    # the index is only a listing: the edited card fails its hash at load and verify
    with pytest.raises(RegistryError, match="corrupt"):
        load_model(r2, GRID, root=tmp_path)
    assert dict(verify_models(tmp_path))[r3] is None
    assert "corrupt" in dict(verify_models(tmp_path))[r2]
    # an index from a stale process that lacks r3 is repaired by the next reader
    data = json.loads(index.read_text())
    del data["entries"][r3]
    index.write_text(json.dumps(data))
    assert r3 in load_index(tmp_path) and r3 in json.loads(index.read_text())["entries"]


def test_corrupted_weight_file_detected_by_verify_and_at_load(tmp_path, capsys) -> None:
    good = _save(tmp_path, "good", seed=1)
    bad = _save(tmp_path, "bad", seed=2)
    _flip_weight_byte(resolve(bad, tmp_path))
    reg = ["models", "--registry", str(tmp_path)]
    assert main([*reg, "verify"]) == 2
    out = capsys.readouterr().out
    assert f"ok       {good}" in out and f"DAMAGED  {bad}" in out and "1 damaged" in out
    assert main([*reg, "verify", "good"]) == 0
    assert main([*reg, "verify", "bad"]) == 2
    with pytest.raises(RegistryError, match="corrupt"):
        load_model(bad, GRID, theory="phi4", root=tmp_path)
    with pytest.raises(RegistryError, match="corrupt"):
        load_verified("bad", tmp_path)
    assert main([*reg, "show", "bad"]) == 2
    assert main([*reg, "export", "bad", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
    # a truncated weight file too
    path = resolve(good, tmp_path) / "model.pt"
    path.write_bytes(path.read_bytes()[:100])
    assert main([*reg, "verify", good]) == 2
    with pytest.raises(RegistryError, match="unreadable or corrupt"):
        load_model(good, GRID, root=tmp_path)


def test_export_import_round_trip(tmp_path, capsys) -> None:
    ref = _save(tmp_path / "one", "m", seed=4, tags=["t1"])
    reg1 = ["models", "--registry", str(tmp_path / "one")]
    reg2 = ["models", "--registry", str(tmp_path / "two")]
    assert main([*reg1, "export", ref, str(tmp_path)]) == 0
    exported = tmp_path / f"{ref}.pt"
    assert exported.exists()
    assert main([*reg2, "import", str(exported)]) == 0
    assert f"{ref}  imported" in capsys.readouterr().out
    assert main([*reg2, "import", str(exported)]) == 0
    assert f"{ref}  already present" in capsys.readouterr().out
    a, ca = load_model(ref, GRID, root=tmp_path / "one")
    b, cb = load_model(ref, GRID, root=tmp_path / "two")
    assert ca == cb and ca["tags"] == ["t1"]
    x = torch.randn((2, 4, 4))
    assert torch.equal(a(x)[0], b(x)[0])
    # a version directory imports too
    assert import_model(resolve(ref, tmp_path / "one"), tmp_path / "three") == (ref, True)
    # a damaged export is refused and nothing is written
    blob = torch.load(exported, weights_only=True)
    blob["card"]["couplings"]["beta"] = 9.0
    torch.save(blob, tmp_path / "edited.pt")
    assert (
        main(
            ["models", "--registry", str(tmp_path / "four"), "import", str(tmp_path / "edited.pt")]
        )
        == 2
    )
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "four" / "m").exists() or not any((tmp_path / "four" / "m").iterdir())


def test_models_list_queries_and_show(tmp_path, capsys) -> None:
    a = _save(tmp_path, "a", seed=1, beta=0.3, tags=["prod"])
    b = _save(tmp_path, "b", seed=2, beta=0.4, tags=["prod", "big"])
    reg = ["models", "--registry", str(tmp_path)]

    def refs(*args) -> list[str]:
        capsys.readouterr()
        assert main([*reg, "list", "--json", *args]) == 0
        return [m["ref"] for m in json.loads(capsys.readouterr().out)]

    assert refs() == [a, b]
    assert refs("--theory", "phi4", "--lattice", "4x4") == [a, b]
    assert refs("--theory", "u1") == [] and refs("--lattice", "8,8") == []
    assert refs("--coupling", "beta=0.40") == [b]
    assert refs("--coupling", "beta=0.3", "--coupling", "lambda=0.5") == [a]
    assert refs("--tag", "prod") == [a, b] and refs("--tag", "prod", "--tag", "big") == [b]
    assert refs("--name", "a") == [a]
    assert main([*reg, "list"]) == 0
    text = capsys.readouterr().out
    assert a in text and "beta=0.4" in text and "4x4" in text
    assert main([*reg, "show", "b"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["hash"].startswith(b.split("@")[1]) and card["tags"] == ["prod", "big"]
    assert main([*reg, "show", "nothing"]) == 2
    assert "no model 'nothing'" in capsys.readouterr().err
    assert main([*reg, "list", "--coupling", "beta"]) == 2
    assert main([*reg, "list", "--lattice", "4xq"]) == 2
    with pytest.raises(RegistryError, match="invalid model tag"):
        _save(tmp_path, "c", tags=["a,b"])
    # a version with an unreadable card is listed as a warning, not an entry
    (tmp_path / "a" / "0123456789abcdef").mkdir()
    (tmp_path / "a" / "0123456789abcdef" / "card.json").write_text("{")
    assert main([*reg, "list"]) == 0
    captured = capsys.readouterr()
    assert "a@0123456789abcdef: unreadable card" in captured.err
    assert resolve(a, tmp_path).name == a.split("@")[1]


def test_registry_option_before_or_after_the_action(tmp_path, capsys, monkeypatch) -> None:
    """``models --registry DIR ACTION ...`` and ``models ACTION ... --registry DIR`` are the
    same for every action; the option after the action wins when both are given."""
    monkeypatch.delenv("TRIVHMC_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)  # the default registry ./models stays empty
    one, two = tmp_path / "one", tmp_path / "two"
    ref = _save(one, "m", seed=5)
    for before, after in (([], ["--registry", str(one)]), (["--registry", str(one)], [])):
        assert main(["models", *before, "list", "--json", *after]) == 0
        assert [m["ref"] for m in json.loads(capsys.readouterr().out)] == [ref]
        assert main(["models", *before, "show", ref, *after]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == "m"
        assert main(["models", *before, "verify", *after]) == 0
        assert "1 model(s) checked, 0 damaged" in capsys.readouterr().out
        assert main(["models", *before, "export", ref, str(tmp_path), *after]) == 0
        capsys.readouterr()
    exported = tmp_path / f"{ref}.pt"
    assert main(["models", "import", str(exported), "--registry", str(two)]) == 0
    assert f"{ref}  imported" in capsys.readouterr().out
    assert main(["models", "--registry", str(two), "import", str(exported)]) == 0
    assert f"{ref}  already present" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["models", "--registry", str(one), "list", "--json", "--registry", str(empty)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "models").exists()
    # neither: ./models, which does not exist (exit 2, not an empty listing)
    assert main(["models", "list", "--json"]) == 2
    assert "registry models does not exist" in capsys.readouterr().err
    (tmp_path / "models").mkdir()
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# ------------------------------------------------------------------ MLflow (optional extra)
def _tracking_deck(tmp_path: Path, tracking: str) -> Path:
    deck = DECK.format(beta=0.3, seed=1, name="tracked", registry=tmp_path / "reg", tag="prod")
    deck = deck.replace("tags: [prod]}", f"tags: [prod], tracking: '{tracking}'}}")
    (tmp_path / "deck.yaml").write_text(deck)
    return tmp_path / "deck.yaml"


def test_mlflow_tracking_logs_steps_and_registers_the_model(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["train", str(_tracking_deck(tmp_path, uri)), "--no-progress"]) == 0
    (model,) = list_models(tmp_path / "reg")
    card, _ = load_verified(model["ref"], tmp_path / "reg")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (version,) = client.search_model_versions("name='tracked'")
    assert version.tags["trivhmc.ref"] == model["ref"]
    assert version.tags["trivhmc.hash"] == card["hash"] and version.tags["tags"] == "prod"
    loss = client.get_metric_history(version.run_id, "loss")
    assert [m.step for m in loss] == [0, 1, 2]
    assert [m.value for m in loss] == [h["loss"] for h in card["history"]]
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["theory.beta"] == "0.3"
    local = client.download_artifacts(version.run_id, "model", str(tmp_path / "dl"))
    assert json.loads((Path(local) / "card.json").read_text()) == card
    # the downloaded copy is a valid registry version: it imports, hash checked
    assert import_model(local, tmp_path / "other")[0] == model["ref"]


def test_tracking_is_optional(tmp_path, monkeypatch, capsys) -> None:
    import importlib.util

    deck = _tracking_deck(tmp_path, "file:///nonexistent-dir/x")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a)
    )
    assert main(["train", str(deck), "--no-progress"]) == 6  # asked for, not installed
    assert "trivhmc[tracking]" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("mlflow") is not None:  # asked for, but unusable: one warning, model saved
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        assert main(["train", str(deck), "--no-progress"]) == 0
        assert "MLflow tracking off" in capsys.readouterr().err
        assert len(list_models(tmp_path / "reg")) == 1
