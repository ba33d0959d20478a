"""Clean-adversarial mutual learning: one step, its order and its KL terms."""

import copy

import pytest
import torch
import torch.nn.functional as F

from osad.config import make_config
from osad.data import to_float
from osad.methods import METHODS, model_spec
from osad.methods.terms import softened_kl
from osad.models import create_model
from osad.train import TrainObjective
from osad.train.functional import call_with
from osad.train.state import Network
from osad.train.turns import NetworksInTurn

pytestmark = pytest.mark.usefixtures("single_thread")


def _apply(optimizer, loss, _which):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _setup(digits_split0, weight=2.0, temperature=1.0):
    config = make_config(
        overrides=[
            "method=osdn-caml",
            "model.width=4",
            "model.latent_dim=16",
            "model.denoise=cbam",
            f"train.mutual_weight={weight}",
            f"train.mutual_temperature={temperature}",
        ]
    )
    args = (6, 1, 8, (0.3,), (0.37,))
    networks, objectives = {}, {}
    for spec in METHODS["osdn-caml"].networks:
        name, kwargs = model_spec(config, *args, network=spec.name)
        model = create_model(name, **kwargs).train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        networks[spec.name] = Network(model, optimizer, (name, kwargs))
        attack = config.train.attack if spec.attack else None
        objectives[spec.name] = TrainObjective(attack, spec.terms_for(config.train))
    x = to_float(digits_split0.train_images[:32])
    y = digits_split0.train_labels[:32]
    return (
        networks["main"].model,
        networks["peer"].model,
        NetworksInTurn(networks, objectives),
        x,
        y,
    )


def _train_mode_logits(model, x):
    """Logits with batch statistics, as in the step, without moving running statistics."""
    with torch.no_grad():
        return call_with(model, dict(model.named_parameters()), x)


def test_peer_is_the_plain_network_of_the_same_family():
    config = make_config(overrides=["method=osdn-caml", "model.denoise=gaussian+cbam"])
    _, kwargs = model_spec(config, 6, 1, 8, (0.3,), (0.37,), network="peer")
    _, osdn_kwargs = model_spec(config, 6, 1, 8, (0.3,), (0.37,))
    assert kwargs["denoise_places"] == [] and not kwargs["decoder"] and not kwargs["rotation_head"]
    same = ("arch", "width", "latent_dim", "num_classes", "in_channels", "image_size")
    assert all(kwargs[k] == osdn_kwargs[k] for k in same)
    assert osdn_kwargs["denoise"] == "gaussian+cbam" and osdn_kwargs["denoise_places"]


def test_one_step_changes_both_networks_and_lowers_both_kl_terms(digits_split0):
    torch.manual_seed(0)
    # A KL weight above the paper's 2 makes the KL terms dominate the first step, so
    # their decrease is the step's doing and not a side effect of the other losses.
    model, peer, step, x, y = _setup(digits_split0, weight=20.0)
    osdn_before, peer_before = copy.deepcopy(model), copy.deepcopy(peer)
    terms, passes = step(x, y, _apply)
    x_adv = passes["main"].inputs[:32]
    assert x_adv.shape == x.shape and not torch.equal(x_adv, x)

    changed = [
        not torch.equal(a, b)
        for net, old in ((model, osdn_before), (peer, peer_before))
        for a, b in zip(net.parameters(), old.parameters(), strict=True)
    ]
    assert any(changed[: len(list(model.parameters()))]) and any(changed[-1:])
    peer_changed = [
        not torch.equal(a, b)
        for a, b in zip(peer.parameters(), peer_before.parameters(), strict=True)
    ]
    assert all(peer_changed)

    peer_x = _train_mode_logits(peer_before, x)
    osdn_kl = [softened_kl(_train_mode_logits(m, x_adv), peer_x) for m in (osdn_before, model)]
    assert osdn_kl[1] < osdn_kl[0]
    refreshed = _train_mode_logits(model, x_adv)
    peer_kl = [softened_kl(_train_mode_logits(m, x), refreshed) for m in (peer_before, peer)]
    assert peer_kl[1] < peer_kl[0]
    # The peer learned from OSDN after OSDN's step (the paper's order).
    assert terms["peer_kl"].item() == pytest.approx(peer_kl[0].item(), rel=1e-4)
    assert terms["loss"].item() == pytest.approx(
        (terms["ce"] + terms["rotation"] + terms["reconstruction"]).item()
        + 20.0 * terms["kl"].item(),
        rel=1e-5,
    )
    assert terms["peer_loss"].item() == pytest.approx(
        terms["peer_ce"].item() + 20.0 * terms["peer_kl"].item(), rel=1e-5
    )


def test_running_statistics_move_once_per_network(digits_split0):
    model, peer, step, x, y = _setup(digits_split0)
    osdn_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    peer_bn = next(m for m in peer.modules() if isinstance(m, torch.nn.BatchNorm2d))
    step(x, y, _apply)
    assert osdn_bn.num_batches_tracked.item() == 1  # the refreshed pass left them alone
    assert peer_bn.num_batches_tracked.item() == 1


def test_softened_kl():
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    expected = F.softmax(teacher, 1) * (F.log_softmax(teacher, 1) - F.log_softmax(student, 1))
    assert softened_kl(student, teacher) == pytest.approx(expected.sum(1).mean().item(), rel=1e-5)
    assert softened_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    t = 3.0
    soft = F.softmax(teacher / t, 1) * (
        F.log_softmax(teacher / t, 1) - F.log_softmax(student / t, 1)
    )
    assert softened_kl(student, teacher, t) == pytest.approx(
        t * t * soft.sum(1).mean().item(), rel=1e-5
    )
    teacher.requires_grad_(True)
    softened_kl(student.requires_grad_(True), teacher).backward()
    assert teacher.grad is None and student.grad is not None  # the teacher is a constant
