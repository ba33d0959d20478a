import math

import pytest
import torch
import torch.nn.functional as F

from osad.attacks import (
    APGD,
    OBJECTIVES,
    PGD,
    cross_entropy,
    dlr,
    get_objective,
    joint_objective,
    margin,
    score_objective,
)
from osad.attacks.objectives import objective_success, objective_values
from osad.errors import ConfigError
from osad.openset import MSP, OpenMax, Scorer
from tests.attacks.helpers import seeded

LOGITS = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.5, 0.0]])
LABELS = torch.tensor([0, 2])


def test_classification_losses_match_hand_computation():
    assert torch.allclose(
        cross_entropy(LOGITS, None, LABELS), F.cross_entropy(LOGITS, LABELS, reduction="none")
    )
    # margin = max_{j != y} l_j - l_y
    assert torch.allclose(margin(LOGITS, None, LABELS), torch.tensor([1.0 - 3.0, 2.0 - 1.5]))
    # DLR = margin / (l_pi1 - l_pi3)
    expected = torch.tensor([(1.0 - 3.0) / (3.0 - 0.0), (2.0 - 1.5) / (2.0 - 0.5)])
    assert torch.allclose(dlr(LOGITS, None, LABELS), expected)
    for objective in OBJECTIVES.values():
        success = objective_success(objective, LOGITS, None, LABELS)
        assert success.tolist() == [False, True]  # misclassified where argmax != label


def test_dlr_is_invariant_to_logit_shift_and_scale_and_needs_three_classes():
    logits = torch.randn(16, 6)
    labels = torch.randint(0, 6, (16,))
    assert torch.allclose(dlr(logits, None, labels), dlr(7.0 * logits - 3.0, None, labels))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr(torch.randn(4, 2), None, torch.zeros(4, dtype=torch.long))


def test_objective_names_have_suggestions():
    assert get_objective("dlr") is dlr
    with pytest.raises(ConfigError, match="did you mean 'margin'"):
        get_objective("margn")


class _Constant(Scorer):
    """score = logits[:, 0], to check signs by hand."""

    name = "first-logit"

    def score(self, logits, features=None, images=None):
        return logits[:, 0]


def test_score_directions_and_threshold_success():
    labels = torch.tensor([0, -1])
    score = LOGITS[:, 0]
    up = score_objective(_Constant(), "to_unknown")
    down = score_objective(_Constant(), "to_known")
    mixed = score_objective(_Constant(), "by_label", threshold=1.0)
    assert torch.equal(up(LOGITS, None, labels), score)
    assert torch.equal(down(LOGITS, None, labels), -score)
    assert torch.equal(mixed(LOGITS, None, labels), torch.tensor([3.0, -0.5]))
    # Known image 0 is rejected (3 > 1): success; unknown image 1 is accepted (0.5 <= 1): success.
    assert mixed.success(LOGITS, None, labels).tolist() == [True, True]
    assert up.success(LOGITS, None, labels) is None
    with pytest.raises(ConfigError, match="did you mean 'to_known'"):
        score_objective(_Constant(), "to_knwn")


def test_joint_objective_drops_the_class_term_and_its_gradient_for_unknown_images():
    logits = LOGITS.clone().requires_grad_(True)
    labels = torch.tensor([0, -1])
    joint = joint_objective(cross_entropy, score_objective(_Constant(), "by_label"), weight=2.0)
    value = joint(logits, None, labels)
    ce0 = F.cross_entropy(LOGITS[:1], LABELS[:1])
    assert torch.allclose(value, torch.stack([ce0 + 2.0 * 3.0, torch.tensor(-2.0 * 0.5)]))
    (grad,) = torch.autograd.grad(value.sum(), logits)
    assert torch.equal(grad[1], torch.tensor([-2.0, 0.0, 0.0, 0.0]))  # score term only
    # Success: image 0 is classified correctly and the score has no threshold.
    assert joint.success(LOGITS, None, labels).tolist() == [False, False]


class _Brightness(Scorer):
    """A scorer of the input images (as a reconstruction error is): their mean pixel."""

    name = "brightness"
    needs_images = True

    def score(self, logits, features=None, images=None):
        return images.flatten(1).mean(1)


def test_objectives_that_need_images_receive_the_attacked_images(plain_model, known_batch):
    x, y = known_batch
    objective = score_objective(_Brightness(), "to_unknown")
    assert objective.needs_images
    assert joint_objective(cross_entropy, objective).needs_images
    adv = PGD(plain_model, eps=16 / 255, steps=3, objective=objective)(x, y)
    # Gradient ascent on the mean pixel brightens every image it can.
    assert (adv.flatten(1).mean(1) > x.flatten(1).mean(1)).all()
    values = objective_values(objective, plain_model(x), None, y, images=adv)
    assert torch.allclose(values, adv.flatten(1).mean(1))


def _msp(model, x):
    with torch.no_grad():
        return MSP().score(model(x))


def test_msp_score_attack_moves_the_score_both_ways(plain_model, known_batch, unknown_batch):
    x, y = known_batch
    to_unknown = score_objective(MSP(), "to_unknown")
    to_known = score_objective(MSP(), "to_known")
    adv_known = PGD(plain_model, eps=32 / 255, steps=10, objective=to_unknown)(x, y)
    adv_unknown = PGD(plain_model, eps=32 / 255, steps=10, objective=to_known)(unknown_batch)
    rose = _msp(plain_model, adv_known) > _msp(plain_model, x)
    fell = _msp(plain_model, adv_unknown) < _msp(plain_model, unknown_batch)
    assert rose.float().mean() > 0.9 and fell.float().mean() > 0.9


def test_openmax_score_attack_moves_the_score_both_ways(
    plain_model, digits_split0, known_batch, unknown_batch
):
    from osad.data import to_float

    with torch.no_grad():
        train_logits = plain_model(to_float(digits_split0.train_images))
    openmax = OpenMax(tail_size=20).fit(train_logits, None, digits_split0.train_labels)
    x, _ = known_batch

    def score(images):
        with torch.no_grad():
            return openmax.score(plain_model(images))

    kw = dict(eps=32 / 255, steps=10, generator=seeded())
    up = APGD(plain_model, objective=score_objective(openmax, "to_unknown"), **kw)(x)
    down = APGD(plain_model, objective=score_objective(openmax, "to_known"), **kw)(unknown_batch)
    # The paper's OpenMax score is at most -log K (all Weibull weights 0), where it is
    # flat: known images are pushed up to that ceiling; unknown images already on it
    # get no gradient and stay.
    ceiling = -math.log(6)
    assert (score(up) > score(x)).float().mean() > 0.9
    assert score(up).mean() > ceiling - 0.05
    below = score(unknown_batch) < ceiling - 1e-4
    assert (score(down) < score(unknown_batch))[below].float().mean() > 0.9


def test_one_by_label_attack_pushes_a_mixed_batch_both_ways(
    plain_model, known_batch, unknown_batch
):
    x, y = known_batch
    images = torch.cat([x[:32], unknown_batch[:32]])
    labels = torch.cat([y[:32], torch.full((32,), -1)])
    objective = joint_objective(cross_entropy, score_objective(MSP(), "by_label"), weight=1.0)
    adv = PGD(plain_model, eps=32 / 255, steps=10, objective=objective)(images, labels)
    before, after = _msp(plain_model, images), _msp(plain_model, adv)
    assert after[:32].mean() > before[:32].mean()  # known images look more unknown
    assert after[32:].mean() < before[32:].mean()  # unknown images look more known
    with torch.no_grad():
        ce_before = cross_entropy(plain_model(x[:32]), None, y[:32])
        ce_after = cross_entropy(plain_model(adv[:32]), None, y[:32])
    assert ce_after.mean() > ce_before.mean() + math.log(2)  # and the class term moved too
