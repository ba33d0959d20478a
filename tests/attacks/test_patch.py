"""The rectangular occlusion (patch) attack: where it puts the patch and what it changes."""

import pytest
import torch

from osad.attacks import Oracle, Patch, build_attack, cross_entropy
from osad.attacks.patch import GRAY, filled, ranked_windows, window_mask
from osad.config import AttackConfig, make_config
from osad.errors import ConfigError
from tests.attacks.helpers import accuracy, seeded

pytestmark = pytest.mark.usefixtures("single_thread")


def _changed_window(x, adv):
    """Per image: (rows, cols) extent of the changed pixels, or None if none changed."""
    extents = []
    for changed in (adv != x).any(1):
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        if len(rows) == 0:
            extents.append(None)
        else:
            extents.append((int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1))
    return extents


@pytest.mark.parametrize("size", [3, 5])
def test_patch_changes_only_one_window_per_image(plain_model, known_batch, size):
    x, y = known_batch
    adv = Patch(plain_model, size=size, steps=5)(x, y)
    assert adv.min() >= 0 and adv.max() <= 1
    extents = _changed_window(x, adv)
    assert sum(e is not None for e in extents) > 0.9 * len(extents)
    assert all(e is None or (e[0] <= size and e[1] <= size) for e in extents)
    # Outside its window every pixel is the original one, inside it any value.
    assert (adv - x).abs().amax() > 32 / 255


def test_patch_lowers_accuracy_of_undefended_model(plain_model, known_batch):
    x, y = known_batch
    clean = accuracy(plain_model, x, y)
    adv = Patch(plain_model, size=3, steps=10)(x, y)
    assert clean > 0.9
    assert accuracy(plain_model, adv, y) < clean - 0.3


def test_windows_are_ranked_by_squared_gradient():
    grad = torch.zeros(2, 3, 10, 10)
    grad[0, 1, 6, 2] = 5.0  # a single strong pixel: windows covering it come first
    grad[1, :, 0:2, 7:9] = 1.0
    rows, cols = ranked_windows(grad, size=3, stride=1, count=4)
    for r, c in zip(rows[0], cols[0], strict=True):
        assert r <= 6 < r + 3 and c <= 2 < c + 3
    # The 2x2 block fits whole in windows whose corner is at rows 0, cols 6..7.
    assert rows[1, 0] == 0 and cols[1, 0] in (6, 7)
    assert rows.shape == (2, 4)
    # Every window, including the last row and column of positions, is a candidate.
    all_rows, all_cols = ranked_windows(torch.rand(1, 1, 5, 5), 3, 1, 100)
    assert all_rows.shape[1] == 9 and all_rows.max() == 2 and all_cols.max() == 2


def test_position_is_the_candidate_with_the_highest_loss(plain_model, known_batch):
    x, y = known_batch
    oracle = Oracle(plain_model, cross_entropy, y)
    one = Patch(plain_model, size=3, candidates=1).locate(x, oracle)
    many = Patch(plain_model, size=3, candidates=20).locate(x, oracle)
    assert ((one.sum((1, 2, 3)) == 9) & (many.sum((1, 2, 3)) == 9)).all()
    gray_one, gray_many = (oracle(filled(x, m, GRAY)).value for m in (one, many))
    assert (gray_many >= gray_one).all() and (gray_many > gray_one).any()


def test_patch_leaves_the_model_alone_and_unknowns_use_predictions(plain_model, known_batch):
    x, _ = known_batch
    x = x[:16]
    bn = next(m for m in plain_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = bn.running_mean.clone()
    for p in plain_model.parameters():
        p.grad = None  # training leaves the last step's gradients
    plain_model.train()
    try:
        a = Patch(plain_model, size=3, steps=3)(x)
    finally:
        assert plain_model.training  # the previous mode comes back
        plain_model.eval()
    assert all(p.grad is None for p in plain_model.parameters())
    assert torch.equal(bn.running_mean, running)
    with torch.no_grad():
        predicted = plain_model(x).argmax(1)
    assert torch.equal(a, Patch(plain_model, size=3, steps=3)(x, predicted))


def test_random_start_is_seeded(plain_model, known_batch):
    x, y = known_batch
    a, b, c = (
        Patch(plain_model, size=3, steps=2, random_start=True, generator=seeded(s))(x, y)
        for s in (0, 0, 1)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_patch_window_mask():
    mask = window_mask(torch.Size([2, 3, 6, 7]), torch.tensor([0, 3]), torch.tensor([4, 0]), 3)
    assert mask.shape == (2, 1, 6, 7) and (mask.sum((1, 2, 3)) == 9).all()
    assert mask[0, 0, 0:3, 4:7].all() and mask[1, 0, 3:6, 0:3].all()


def test_patch_from_the_config():
    config = make_config(overrides=["eval.attacks.patch.name=patch"])
    attack_config = config.eval.attacks["patch"]
    assert attack_config.eps == 255 and attack_config.norm == "linf"
    assert attack_config.describe() == "Patch 5x5, 20 candidate positions, step 12.75/255, 10 steps"
    atk = build_attack(torch.nn.Linear(1, 1), attack_config)
    assert isinstance(atk, Patch) and (atk.size, atk.candidates, atk.steps) == (5, 20, 10)
    assert atk.alpha == pytest.approx(0.05)
    trained = make_config(overrides=["train.attack.name=patch", "train.attack.patch_size=3"])
    assert (trained.train.attack.eps, trained.train.attack.params["patch_size"]) == (255, 3)
    built = build_attack(
        torch.nn.Linear(1, 1), AttackConfig(name="patch", eps=255, params={"steps": 4})
    )
    assert built.steps == 4 and built.size == 5


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["eval.attacks.p={name: patch, eps: 8}"],
            "'eval.attacks.p.eps' is always 255.0 for patch; set it to 255.0",
        ),
        (
            ["eval.attacks.patch.name=patch", "eval.attacks.patch.patch_size=9"],
            "does not fit the 8x8 images",
        ),
        (["eval.attacks.patch.name=patch", "eval.attacks.patch.candidates=0"], "must be >= 1"),
        (["eval.attacks.pgd.patch_size=3"], "'eval.attacks.pgd.patch_size' does not apply to pgd"),
        (["eval.attacks.patch.name=patch", "eval.attacks.patch.norm=l2"], "always linf for patch"),
    ],
)
def test_bad_patch_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_config(overrides=overrides)


def test_patch_attacks_both_osdn_training_branches(digits_split0):
    from osad.data import rotate_by, to_float
    from osad.methods import model_spec
    from osad.models import create_model
    from osad.train import TrainObjective

    config = make_config(
        overrides=[
            "model.width=4",
            "model.latent_dim=16",
            "train.attack.name=patch",
            "train.attack.steps=2",
        ]
    )
    name, kwargs = model_spec(config, 6, 1, 8, (0.3,), (0.37,))
    model = create_model(name, **kwargs)
    x, y = to_float(digits_split0.train_images[:8]), digits_split0.train_labels[:8]
    inputs, labels = TrainObjective(config.train.attack).attacked_inputs(model, x, y)
    assert inputs.shape == (16, 1, 8, 8) and torch.equal(labels[:8], y)
    # Both halves (the images and their rotations) carry one 5x5 patch each.
    assert all(e is not None and e[0] <= 5 and e[1] <= 5 for e in _changed_window(x, inputs[:8]))
    rotated = rotate_by(x, labels[8:])
    assert all(
        e is not None and e[0] <= 5 and e[1] <= 5 for e in _changed_window(rotated, inputs[8:])
    )
