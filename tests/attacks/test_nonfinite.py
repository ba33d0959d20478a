"""An attack that meets a non-finite objective value or input gradient says so: one
warning with the count per call, flags on the attack, a count per score in the
protocol's results (issue 20 item 0)."""

import warnings

import pytest
import torch
from torch import nn

from osad.attacks import ATTACKS, Square, score_objective
from osad.attacks.engine import NonFiniteWarning
from osad.attacks.outputs import outputs_under_attack
from osad.config import AttackConfig
from osad.eval.protocol import ConditionResult, PairingResult
from osad.eval.report import condition_dict
from osad.openset import Scorer

PLANTED = torch.tensor([True, False, True, False, False, True])


class _Poison(torch.autograd.Function):
    """Identity whose backward is NaN where ``mask`` is set."""

    @staticmethod
    def forward(ctx, values, mask):
        ctx.save_for_backward(mask)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, torch.nan, grad), None


class _Planted(Scorer):
    """MSP, with a NaN input gradient (or NaN value) for bright images: planted images
    have pixels in [0.7, 1], the others in [0, 0.3], and neither an 8/255 budget nor a
    2x2 patch of the 64 pixels moves the mean pixel across 0.5."""

    name = "planted"

    def __init__(self, poison_value: bool) -> None:
        self.poison_value = poison_value

    def score(self, logits, features=None, images=None):
        msp = -logits.softmax(dim=1).amax(dim=1)
        planted = logits[:, 2] > 0.5  # logit 2 is the mean pixel
        if self.poison_value:
            return torch.where(planted, torch.nan, msp)
        return _Poison.apply(msp, planted)


def _model():
    torch.manual_seed(0)
    linear = nn.Linear(64, 3)
    with torch.no_grad():
        linear.weight[2] = 1 / 64
        linear.bias[2] = 0.0
    return nn.Sequential(nn.Flatten(), linear).eval()


def _images():
    x = torch.rand(len(PLANTED), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    return x + 0.7 * PLANTED.float().view(-1, 1, 1, 1)


def _attack(name, model, poison_value):
    objective = score_objective(_Planted(poison_value), "by_label")
    options = {"eps": 8 / 255, "objective": objective, "generator": torch.Generator()}
    if name == "square":
        options["queries"] = 5
    elif name == "patch":
        options = {**options, "size": 2, "steps": 2}
        del options["eps"]
    elif name in ("pgd", "apgd"):
        options["steps"] = 3
    return ATTACKS[name](model, **options)


@pytest.mark.parametrize("poison_value", [False, True], ids=["nan gradient", "nan value"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_counts_and_warns_about_nonfinite_samples(name, poison_value):
    model = _model()
    attack = _attack(name, model, poison_value)
    labels = torch.zeros(len(PLANTED), dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x_adv = attack(_images(), labels)
    noted = [w for w in caught if issubclass(w.category, NonFiniteWarning)]
    # Square is black-box: it never asks for a gradient, so only a NaN value shows.
    expected = PLANTED if (poison_value or type(attack) is not Square) else PLANTED & False
    assert torch.equal(attack.nonfinite, expected)
    if expected.any():
        assert len(noted) == 1, [str(w.message) for w in caught]
        message = str(noted[0].message)
        assert f"not finite for {int(expected.sum())} of {len(PLANTED)} samples" in message
        assert "\n" not in message
    else:
        assert not noted
    assert torch.isfinite(x_adv).all()


def test_a_clean_attack_warns_nothing_and_flags_nothing():
    model = _model()
    attack = ATTACKS["pgd"](model, eps=8 / 255, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        attack(_images()[~PLANTED], torch.zeros(int((~PLANTED).sum()), dtype=torch.long))
    assert not attack.nonfinite.any()


def test_protocol_counts_nonfinite_samples_once_over_all_batches():
    model = _model()
    images = (_images() * 255).to(torch.uint8).repeat(2, 1, 1, 1)  # 12 images, 6 planted
    config = AttackConfig(name="pgd", eps=8, target="score", params={"steps": 2})
    objective = score_objective(_Planted(poison_value=False), "by_label")
    labels = torch.zeros(len(images), dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = outputs_under_attack(
            model, images, labels, config, batch_size=4, seed=0, objective=objective
        )
    noted = [str(w.message) for w in caught if issubclass(w.category, NonFiniteWarning)]
    assert int(outputs.nonfinite.sum()) == 2 * int(PLANTED.sum())
    assert len(noted) == 1 and "not finite for 6 of 12 samples" in noted[0]


def test_metrics_json_records_the_count_per_score():
    metrics = {"msp": {"auroc": 0.5, "closed_set_accuracy": 1.0}}
    condition = ConditionResult(
        "adaptive", {"name": "apgd"}, {"both": PairingResult({}, {}, metrics)}, {}, {"msp": 3}
    )
    assert condition_dict(condition)["nonfinite_gradients"] == {"msp": 3}
