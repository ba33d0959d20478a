"""Methods from parts: a new method is one entry (and a new loss one term), a run's
networks are named and none is a special case, and the trainer's low modules stay low."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from osad.config import make_config
from osad.errors import CheckpointError, ConfigError
from osad.methods import METHODS, Method, NetworkSpec
from osad.methods.terms import ClassificationCE, MutualKL, NetworkPass, Reconstruction, Term
from osad.train import train
from osad.train.state import Network, TrainState

pytestmark = pytest.mark.usefixtures("single_thread")

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass(frozen=True)
class CleanLogitPenalty(Term):
    """A toy term: the mean squared logit (what a new loss looks like)."""

    name: ClassVar[str] = "logit_penalty"
    weight_key: ClassVar[str | None] = "rotation_weight"  # any train.* weight

    def __call__(self, p: NetworkPass, teacher) -> torch.Tensor:
        return p.logits.square().mean()


def _tiny(method: str) -> list[str]:
    return [
        f"method={method}",
        "model.width=2",
        "model.latent_dim=8",
        "train.epochs=1",
        "train.batch_size=256",
        "train.attack.steps=1",
        "train.rotation_weight=0.5",
    ]


def test_a_new_method_is_one_entry_and_a_new_loss_one_term(monkeypatch, digits_split0):
    toy = Method(
        name="toy",
        description="adversarial CE, a decoder, a toy penalty, and a plain second network",
        networks=(
            NetworkSpec(
                attack=True,
                terms=(ClassificationCE(), Reconstruction(), CleanLogitPenalty()),
            ),
            NetworkSpec(name="peer", terms=(ClassificationCE(), MutualKL(teacher="main"))),
        ),
    )
    monkeypatch.setitem(METHODS, "toy", toy)
    config = make_config(overrides=_tiny("toy"))
    result = train(config, digits_split0, progress=False)
    # The parts follow the terms: a decoder for Reconstruction, no rotation head.
    assert result.model.decoder is not None and result.model.rotation_head is None
    peer = result.others["peer"].model
    assert peer.decoder is None and result.others["peer"].model_kwargs["denoise_places"] == []
    record = result.history[0]
    for key in ("train_ce", "train_reconstruction", "train_logit_penalty", "train_peer_kl"):
        assert key in record
    assert 0 <= record["val_peer_accuracy"] <= 1
    assert set(result.networks()) == {"main", "peer"}


def test_a_terms_weight_and_switch_come_from_train_settings():
    config = make_config(overrides=["method=osdn", "train.reconstruction=false"])
    terms = METHODS["osdn"].network().terms_for(config.train)
    assert [(t.name, w) for t, w in terms] == [("ce", 1.0), ("rotation", 1.0)]
    config = make_config(overrides=["method=osdn-caml", "train.mutual_temperature=3"])
    kl = {t.name: (t, w) for t, w in METHODS["osdn-caml"].network().terms_for(config.train)}
    assert kl["kl"][0].temperature == 3 and kl["kl"][1] == 2.0


def test_a_method_names_only_its_networks():
    with pytest.raises(ConfigError, match="method osdn trains no network 'peer', only: main"):
        METHODS["osdn"].network("peer")


def _state(names, seed=0):
    torch.manual_seed(seed)
    networks = {}
    for name in names:
        model = torch.nn.Linear(3, 2)
        networks[name] = Network(model, torch.optim.Adam(model.parameters(), 0.1), ("linear", {}))
    context = {"config": {}, "data": "d", "device": "cpu"}
    return TrainState(networks, {}, context=context)


def _one_step(state):
    x = torch.randn(4, 3)
    for network in state.networks.values():
        network.optimizer.zero_grad()
        network.model(x).square().mean().backward()
        network.optimizer.step()
    state.finish_step({"loss": 1.0}, 4, 2)


def test_every_named_network_is_checkpointed_and_restored():
    first = _state(("main", "peer"))
    _one_step(first)
    files = first.files()
    assert {"model.safetensors", "peer.safetensors"} <= set(files)
    second = _state(("main", "peer"), seed=1)
    second.restore(files, "test")
    for name in ("main", "peer"):
        a, b = first.networks[name], second.networks[name]
        pairs = zip(a.model.parameters(), b.model.parameters(), strict=True)
        assert all(torch.equal(p, q) for p, q in pairs)
        assert a.optimizer.state_dict()["state"].keys() == b.optimizer.state_dict()["state"].keys()
    with pytest.raises(CheckpointError, match=r"holds a network this run does not train \(peer"):
        _state(("main",)).restore(files, "test")
    document = json.loads(_state(("main",)).files()["state.json"])
    document["peer_optimizer"] = json.loads(files["state.json"])["peer_optimizer"]
    only_main = {**_state(("main",)).files(), "state.json": json.dumps(document).encode()}
    with pytest.raises(CheckpointError, match=r"does not train \(peer_optimizer\)"):
        _state(("main",)).restore(only_main, "test")
    with pytest.raises(CheckpointError, match=r"does not list peer\.safetensors"):
        _state(("main", "peer")).restore(_state(("main",)).files(), "test")


def test_a_checkpoint_with_the_old_null_peer_optimizer_still_restores():
    """Checkpoints before named networks wrote ``"peer_optimizer": null`` for a run
    without a peer (same format version): read as no such network."""
    first = _state(("main",))
    _one_step(first)
    files = first.files()
    document = json.loads(files["state.json"])
    assert "peer_optimizer" not in document
    document["peer_optimizer"] = None
    files["state.json"] = json.dumps(document).encode()
    second = _state(("main",), seed=1)
    second.restore(files, "old checkpoint")
    assert second.step == 1


def _imports(module: str) -> set[str]:
    """The osad modules importing ``module`` loads: its module-level imports (by ast),
    transitively; ``from osad.a import b`` counts ``osad.a`` and ``osad.a.b`` if a module.
    (Imports inside functions are the import-graph test's concern.)"""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = SRC / Path(*name.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if name in seen or not file.is_file():
            continue
        seen.add(name)
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("osad"):
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("osad")]
    return seen


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("osad.train.loop", ("osad.eval",)),
        ("osad.runlog", ("osad.attacks", "osad.openset", "osad.distributed", "osad.eval")),
        ("osad.train.step", ("osad.attacks", "osad.openset", "osad.distributed", "osad.eval")),
    ],
)
def test_the_trainer_layers(module, forbidden):
    reached = _imports(module)
    assert module in reached
    assert not [m for m in reached if m.startswith(forbidden)]


def test_importing_the_shared_trainer_modules_loads_no_attack_or_eval_code():
    """What the anti-spoofing trainer imports (osad.train.step, osad.runlog) must not load
    the open-set loop through the package's ``__init__``."""
    import subprocess
    import sys

    code = (
        "import sys, osad.train.step, osad.runlog; "
        "print(' '.join(m for m in sys.modules if m.startswith('osad.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    high = ("osad.attacks", "osad.openset", "osad.distributed", "osad.eval", "osad.train.loop")
    assert "osad.train.step" in loaded
    assert not [m for m in loaded if m.startswith(high)]
