import copy

import torch
import torch.nn.functional as F

from osad.attacks import FGSMRS, attack, build_attack, cross_entropy
from osad.config import AttackConfig, make_config
from osad.methods import METHODS, model_spec
from osad.models import create_model
from osad.train import TrainObjective
from osad.train.objectives import rotation_branch_objective


def _osdn_terms(**train):
    """OSDN's (term, weight) pairs under ``train.*`` settings."""
    config = make_config(overrides=["method=osdn", *[f"train.{k}={v}" for k, v in train.items()]])
    return METHODS["osdn"].network().terms_for(config.train)


def _model(method="osdn", **over):
    config = make_config(
        overrides=[
            f"method={method}",
            "model.width=4",
            "model.latent_dim=16",
            *[f"{k}={v}" for k, v in over.items()],
        ]
    )
    name, kwargs = model_spec(config, 6, 1, 8, (0.3,), (0.37,))
    return create_model(name, **kwargs)


def test_methods_choose_their_parts():
    assert set(METHODS) == {"plain", "pgd-at", "fd", "osdn", "osdn-caml"}
    plain, fd, osdn = _model("plain"), _model("fd"), _model("osdn")
    assert len(plain.encoder.denoise) == 0 and plain.decoder is None
    assert len(fd.encoder.denoise) == 5 and fd.decoder is None and fd.rotation_head is None
    assert osdn.decoder is not None and osdn.rotation_head is not None
    no_dec = _model("osdn", **{"train.reconstruction": "false"})
    no_ss = _model("osdn", **{"train.self_supervision": "false"})
    assert no_dec.decoder is None and no_dec.rotation_head is not None
    assert no_ss.rotation_head is None and no_ss.decoder is not None


def test_joint_branch_attack_equals_two_separate_attacks():
    model = _model().eval()
    x, x_rot = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    y, r = torch.randint(0, 6, (5,)), torch.randint(0, 4, (5,))
    kw = dict(eps=16 / 255, alpha=4 / 255, steps=3, random_start=False, select="last")
    joint = attack(
        model,
        torch.cat([x, x_rot]),
        torch.cat([y, r]),
        objective=rotation_branch_objective(model, 5),
        **kw,
    )

    class RotationView(torch.nn.Module):
        def forward(self, inp):
            return model.rotation_head(model.encode(inp))

    sep_cls = attack(model, x, y, objective=cross_entropy, **kw)
    sep_rot = attack(RotationView(), x_rot, r, objective=cross_entropy, **kw)
    assert torch.allclose(joint, torch.cat([sep_cls, sep_rot]), atol=1e-6)


def test_osdn_losses_match_their_definition():
    torch.manual_seed(0)
    model = _model().train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 6, (8,))
    objective = TrainObjective(
        AttackConfig(eps=8, params={"alpha": 2, "steps": 2}),
        _osdn_terms(reconstruction_weight=0.5, rotation_weight=2.0),
    )
    out = objective(model, x, y)
    assert set(out.terms) == {"ce", "rotation", "reconstruction"}
    expected = out.terms["ce"] + 2.0 * out.terms["rotation"] + 0.5 * out.terms["reconstruction"]
    assert torch.allclose(out.loss, expected)
    assert out.logits.shape == (8, 6)


def test_plain_objective_is_clean_cross_entropy():
    model = _model("plain").eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 6, (8,))
    out = TrainObjective(None)(model, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = _model().train()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 6, (32,))
    objective = TrainObjective(AttackConfig(eps=8, params={"alpha": 2, "steps": 1}), _osdn_terms())
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)
        out = objective(model, x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_fused_and_separate_branches_share_the_attack_and_differ_only_by_batchnorm():
    model = _model().train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 6, (8,))
    budget = AttackConfig(eps=16, params={"alpha": 4, "steps": 2})
    fused = TrainObjective(budget, _osdn_terms())
    separate = TrainObjective(budget, _osdn_terms(), fused_branches=False)
    torch.manual_seed(3)
    inputs, labels = fused.attacked_inputs(model, x, y)
    torch.manual_seed(3)
    inputs_separate, labels_separate = separate.attacked_inputs(model, x, y)
    assert torch.equal(inputs, inputs_separate) and torch.equal(labels, labels_separate)
    assert inputs.shape[0] == 16 and not torch.equal(inputs[:8], x)

    # BatchNorm on running statistics: the two forms are the same function.
    model.eval()
    a = fused.losses(fused.forward_on(model, x, y, inputs, labels))
    b = separate.losses(separate.forward_on(model, x, y, inputs, labels))
    assert torch.allclose(a.loss, b.loss, atol=1e-6)

    # Training mode: the separate form normalises each branch with its own batch
    # statistics, as two forward passes of the authors' code do...
    model.train()
    reference = copy.deepcopy(model)
    b = separate.losses(separate.forward_on(model, x, y, inputs, labels))
    by_hand = F.cross_entropy(reference.classifier(reference.encode(inputs[:8])), y)
    assert torch.allclose(b.terms["ce"], by_hand, atol=1e-6)
    # ...and the fused form with those of the whole 2B batch: a different loss.
    a = fused.losses(fused.forward_on(copy.deepcopy(reference), x, y, inputs, labels))
    assert not torch.allclose(a.terms["ce"], b.terms["ce"], atol=1e-4)


def test_running_statistics_update_once_fused_and_once_per_branch_separate():
    model = _model().train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 6, (8,))
    inputs, labels = TrainObjective(None).attacked_inputs(model, x, y)
    conv, bn = model.encoder.stem[0], model.encoder.stem[1]
    with torch.no_grad():
        means = [conv(model.normalize(part)).mean((0, 2, 3)) for part in (inputs[:8], inputs[8:])]
        mean_all = conv(model.normalize(inputs)).mean((0, 2, 3))
    m, start = bn.momentum, bn.running_mean.clone()
    for fuse, expected in (
        (True, (1 - m) * start + m * mean_all),
        (False, (1 - m) * ((1 - m) * start + m * means[0]) + m * means[1]),
    ):
        net = copy.deepcopy(model)
        objective = TrainObjective(None, _osdn_terms(), fused_branches=fuse)
        objective.losses(objective.forward_on(net, x, y, inputs, labels))
        assert torch.allclose(net.encoder.stem[1].running_mean, expected, atol=1e-6)


def test_fgsm_rs_training_attack_takes_one_step_of_1_25_eps():
    config = make_config(overrides=["train.attack.name=fgsm-rs"])
    atk = build_attack(_model(), config.train.attack)
    assert isinstance(atk, FGSMRS) and atk.steps == 1 and atk.random_start
    assert abs(atk.alpha - 1.25 * 32 / 255) < 1e-12 and abs(atk.eps - 32 / 255) < 1e-12
