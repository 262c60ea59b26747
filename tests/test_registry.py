"""Model registry: save/load by reference, content hash, refusal of corrupt files and wrong
theories, and a local flow trained at L running at 2L (same parameters, exact log-det)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from app.registry import (
    RegistryError,
    list_models,
    load_model,
    load_model_and_theory,
    read_card,
    resolve,
    save_model,
)
from kernels.flows import phi4_affine_flow, u1_ncp_flow
from kernels.flows.train import TrainConfig, Trainer
from kernels.theories.phi4 import Phi4
from kernels.theories.u1 import U1Gauge
from parallel import single_rank_grid
from parallel.rng import SiteRNG

SMALL = single_rank_grid((4, 4))
BIG = single_rank_grid((8, 8))


def _trained_phi4(steps: int = 5):
    torch.manual_seed(0)
    theory = Phi4(SMALL, beta=0.3, lam=0.5)
    flow = phi4_affine_flow(SMALL, n_pairs=1, hidden=(4,))
    trainer = Trainer(flow, theory, TrainConfig(steps=steps, batch=8, lr=1e-2), rng=SiteRNG(2))
    trainer.train()
    return flow, theory, trainer


def _u1(seed: int = 1):
    torch.manual_seed(seed)
    flow = u1_ncp_flow(SMALL, n_layers=4, hidden=(4,), stout_layers=2)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow, U1Gauge(SMALL, beta=2.0)


def test_save_and_load_roundtrip(tmp_path) -> None:
    flow, theory, trainer = _trained_phi4()
    ref = save_model(flow, theory, "phi4-test", root=tmp_path, history=trainer.history)
    name, short = ref.split("@")
    assert name == "phi4-test" and len(short) == 16
    assert (tmp_path / "phi4-test" / short / "card.json").exists()
    card = read_card("phi4-test", root=tmp_path)
    assert card["theory"] == "phi4" and card["couplings"] == {"beta": 0.3, "lambda": 0.5}
    assert card["lattice"] == [4, 4] and card["n_parameters"] == flow.n_parameters()
    assert len(card["history"]) == 5 and card["hash"].startswith(short)
    assert card["architecture"]["builder"] == "kernels.flows.phi4:phi4_affine_flow"
    x = torch.randn((3, 4, 4))
    for r in ("phi4-test", ref, f"phi4-test@{short[:6]}"):
        loaded, _ = load_model(r, SMALL, theory="phi4", root=tmp_path)
        u0, ld0 = flow(x)
        u1, ld1 = loaded(x)
        assert torch.equal(u0, u1) and torch.equal(ld0, ld1)
    # saving again makes a new version (the creation time is in the card); the bare name
    # resolves to the newest
    ref2 = save_model(flow, theory, "phi4-test", root=tmp_path, history=trainer.history)
    assert ref2 != ref and len(list_models(tmp_path)) == 2
    assert resolve("phi4-test", tmp_path) == resolve(ref2, tmp_path)


def test_single_file_layout_and_default_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRIVHMC_MODELS", str(tmp_path / "reg"))
    flow, theory = _u1()
    ref = save_model(flow, theory, "u1-test", single_file=True)
    path = resolve(ref)
    assert path.is_file() and path.parent == tmp_path / "reg" / "u1-test"
    loaded, card = load_model(ref, SMALL, theory=theory)
    theta = 3.0 * torch.rand((2, 2, 4, 4))
    assert torch.equal(flow(theta)[0], loaded(theta)[0])
    assert card["theory"] == "u1" and card["couplings"] == {"beta": 2.0}


def test_refuses_corrupt_files(tmp_path) -> None:
    flow, theory, _ = _trained_phi4(1)
    ref = save_model(flow, theory, "m", root=tmp_path)
    folder = resolve(ref, tmp_path)
    # a changed parameter
    state = torch.load(folder / "model.pt", weights_only=True)
    key = next(iter(state))
    state[key] = state[key] + 1e-9
    torch.save(state, folder / "model.pt")
    with pytest.raises(RegistryError, match="corrupt"):
        load_model(ref, SMALL, root=tmp_path)
    # an edited card (with the original parameters back)
    state[key] = state[key] - 1e-9
    ref2 = save_model(flow, theory, "m2", root=tmp_path)
    folder2 = resolve(ref2, tmp_path)
    card = json.loads((folder2 / "card.json").read_text())
    card["couplings"]["beta"] = 0.31
    (folder2 / "card.json").write_text(json.dumps(card))
    with pytest.raises(RegistryError, match="corrupt"):
        load_model(ref2, SMALL, root=tmp_path)
    # garbage bytes
    ref3 = save_model(flow, theory, "m3", root=tmp_path, single_file=True)
    resolve(ref3, tmp_path).write_bytes(b"not a torch file")
    with pytest.raises(RegistryError, match="unreadable or corrupt"):
        load_model(ref3, SMALL, root=tmp_path)


def test_refuses_wrong_theory_and_bad_references(tmp_path) -> None:
    flow, theory, _ = _trained_phi4(1)
    ref = save_model(flow, theory, "phi", root=tmp_path)
    with pytest.raises(RegistryError, match="trained for theory 'phi4', not 'u1'"):
        load_model(ref, SMALL, theory=U1Gauge(SMALL, beta=1.0), root=tmp_path)
    with pytest.raises(RegistryError, match="no model"):
        load_model("nothing", SMALL, root=tmp_path)
    with pytest.raises(RegistryError, match="no version"):
        load_model("phi@ffff", SMALL, root=tmp_path)
    with pytest.raises(RegistryError, match="cannot rebuild"):  # NCP masks need L % 4 == 0
        u1flow, u1 = _u1()
        r = save_model(u1flow, u1, "u", root=tmp_path)
        load_model(r, single_rank_grid((6, 6)), root=tmp_path)


def _tile(x: torch.Tensor, first: int) -> torch.Tensor:
    reps = [1] * x.ndim
    reps[first] = reps[first + 1] = 2
    return x.repeat(*reps)


def _brute_logdet(flow, x: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(
        lambda z: flow(z.reshape(x.shape))[0].reshape(-1), x.reshape(-1)
    )
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign > 0
    return float(logabs)


@pytest.mark.parametrize("kind", ["phi4", "u1"])
def test_trained_at_L_runs_at_2L(tmp_path, kind: str) -> None:
    if kind == "phi4":
        flow, theory, _ = _trained_phi4()
        x = torch.randn((1, 4, 4))
        first = 1
    else:
        flow, theory = _u1()
        x = 3.0 * torch.rand((1, 2, 4, 4)) - 1.5
        first = 2
    ref = save_model(flow, theory, f"{kind}-L4", root=tmp_path)
    big, card = load_model(ref, BIG, theory=kind, root=tmp_path)
    assert card["lattice"] == [4, 4] and big.grid.shape == (8, 8)
    for (k1, a), (k2, b) in zip(flow.state_dict().items(), big.state_dict().items()):
        assert k1 == k2 and torch.equal(a, b)
    # a periodic 2L field made of 2x2 copies of an L field maps to copies of F(x)
    u_small, ld_small = flow(x)
    u_big, ld_big = big(_tile(x, first))
    assert torch.allclose(u_big, _tile(u_small, first), atol=1e-12)
    assert torch.allclose(ld_big, 4 * ld_small, atol=1e-10)
    # on a generic 2L field: invertible, and the log-det is exact
    y = torch.randn((1,) + tuple(u_big.shape[1:]), generator=torch.Generator().manual_seed(4))
    u, ld = big(y)
    v, ld_inv = big.inverse(u)
    assert torch.allclose(v, y, atol=1e-10) and abs(float((ld + ld_inv).detach())) < 1e-10
    assert math.isclose(_brute_logdet(big, y), float(ld.detach()), rel_tol=1e-10, abs_tol=1e-10)


@pytest.mark.parametrize("kind", ["phi4", "u1"])
def test_load_model_and_theory_rebuilds_the_cards_theory(tmp_path, kind) -> None:
    flow, theory = _u1() if kind == "u1" else _trained_phi4()[:2]
    ref = save_model(flow, theory, f"{kind}-mt", root=tmp_path)
    th2, flow2, card = load_model_and_theory(ref, root=tmp_path, grid=SMALL)
    assert type(th2) is type(theory) and th2.params == theory.params
    assert card["hash"].startswith(ref.split("@")[1])
    x = theory.hot_start(SiteRNG(3), 0, 2)
    assert torch.equal(th2.action(x), theory.action(x))
    assert torch.equal(flow2(x)[0], flow(x)[0].detach())
    th3, _, _ = load_model_and_theory(ref, root=tmp_path)  # the card's lattice, all ranks
    assert list(th3.grid.shape) == card["lattice"]
