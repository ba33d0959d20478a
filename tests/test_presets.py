"""Every preset in configs/ loads, builds its full model and trains one step on CPU.

The full-size model (ResNet-18 widths 64-512, latent 512, the preset's
denoising blocks) is built on the meta device, where a forward pass checks
every shape without computing anything. The training step runs the preset
unchanged (image size, channels, method, training attack, augmentation)
except for width 4, latent 16 and the local ``mean`` denoising filter: width
and latent size change channel counts only, and the non-local filter costs
O(N^2) in the number of pixels whatever the width (tens of seconds per step
on 64x64 CPU images; tests/models covers it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from osad.config import make_config
from osad.data import OpenSetData, dataset_info
from osad.errors import ConfigError
from osad.methods import METHODS
from osad.models import DenoiseBlock
from osad.train import build_model_for, train

ROOT = Path(__file__).resolve().parents[1]
# Open-set presets; the anti-spoofing presets (task: fas) are tested in tests/fas/.
PRESETS = [
    p
    for p in sorted((ROOT / "configs").glob("*.yaml"))
    if (yaml.safe_load(p.read_text()) or {}).get("task", "openset") == "openset"
]
# The paper's settings; the digits and mnist5k presets have their own (docs/presets.md).
PAPER = [p for p in PRESETS if not p.name.startswith(("digits", "mnist5k"))]


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_data(config, n: int = 2) -> OpenSetData:
    """``n`` random training images in the preset's format (uint8, like the real files)."""
    info = dataset_info(config.data.name)
    known, unknown = info.split(config.data.split)
    size = config.data.image_size or info.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, info.channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % len(known)
    return OpenSetData(
        name=info.name,
        known_classes=known,
        unknown_classes=unknown,
        mean=info.mean,
        std=info.std,
        train_images=images,
        train_labels=labels,
        val_images=images[:0],
        val_labels=labels[:0],
        test_images=images,
        test_labels=labels,
        test_classes=torch.tensor(known)[labels],
    )


def test_every_paper_setting_has_its_presets():
    names = {p.stem for p in PRESETS}
    for dataset in ("cifar10", "svhn", "tinyimagenet", "mnist", "cifar+10", "cifar+50"):
        for variant in ("osdn-pgd", "osdn-fgsm", "fd-pgd", "fd-fgsm", "pgd-at", "plain"):
            assert f"{dataset}-{variant}" in names


@pytest.mark.parametrize("dataset", ["cifar10", "svhn", "tinyimagenet", "imagenet64"])
def test_osdn_caml_presets_have_the_ijcv_setting(dataset):
    c = make_config(ROOT / "configs" / f"{dataset}-osdn-caml-pgd.yaml")
    assert (c.method, c.data.name, c.model.denoise) == ("osdn-caml", dataset, "cbam")
    assert c.model.denoise_places == [0, 1, 2, 3, 4]
    assert (c.train.mutual_weight, c.train.mutual_temperature) == (2.0, 1.0)
    patch = c.eval.attacks["patch"].resolved()
    assert (patch.name, patch.params["patch_size"], patch.eps) == ("patch", 5, 255.0)


@pytest.mark.parametrize("preset", PAPER, ids=lambda p: p.stem)
def test_preset_has_the_paper_hyperparameters(preset):
    c = make_config(preset)
    dataset, method = preset.stem.split("-", 1)
    assert c.data.name == dataset and method.startswith(c.method)
    assert (c.model.arch, c.model.width, c.model.latent_dim) == ("resnet18", 64, 512)
    assert (c.train.optimizer, c.train.lr, c.train.batch_size) == ("adam", 1e-3, 128)
    assert c.train.weight_decay == 0.0
    assert c.train.epochs == (150 if dataset == "tinyimagenet" else 120)
    assert c.data.crop_padding == 4
    assert c.data.hflip == (dataset not in ("svhn", "mnist"))
    eps = 76.5 if dataset == "mnist" else 8.0  # MNIST's standard 0.3; 8/255 elsewhere
    attack = c.train.attack
    assert attack.norm == "linf" and attack.eps == eps
    if preset.stem.endswith("fgsm"):
        assert (attack.name, attack.params["steps"], attack.params["alpha"]) == ("fgsm", 1, eps)
    else:
        assert (attack.name, attack.params["steps"], attack.params["alpha"]) == ("pgd", 5, eps / 4)
    tests = c.eval.attacks
    assert tests["fgsm"].eps == tests["pgd"].eps == eps and tests["pgd"].params["steps"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_the_full_model(preset):
    config = make_config(preset)
    data = _random_data(config)
    method = METHODS[config.method]
    with torch.device("meta"):
        model, _, _ = build_model_for(config, data)
        x = torch.empty(2, data.channels, data.image_size, data.image_size)
        logits, z = model.forward_features(x)
        assert logits.shape == (2, data.num_classes)
        assert z.shape == (2, config.model.latent_dim)
        if model.decoder is not None:
            assert model.decoder(z).shape == x.shape
        if model.rotation_head is not None:
            assert model.rotation_head(z).shape == (2, 4)
    blocks = [m for m in model.modules() if isinstance(m, DenoiseBlock)]
    assert len(blocks) == (len(config.model.denoise_places) if method.network().denoise else 0)
    assert (model.decoder is not None) == (method.decoder and config.train.reconstruction)
    assert model.encoder.out_features == 8 * config.model.width


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_trains_one_step(preset):
    config = make_config(
        preset,
        [
            "model.width=4",
            "model.latent_dim=16",
            "model.denoise=mean",
            "train.epochs=1",
            "train.batch_size=2",
        ],
    )
    config.device = "cpu"
    data = _random_data(config)
    torch.manual_seed(0)
    before = build_model_for(config, data)[0].state_dict()
    result = train(config, data, progress=False)
    (record,) = result.history
    assert record["step"] == 1 and torch.isfinite(torch.tensor(record["train_loss"]))
    after = result.model.state_dict()
    assert any(
        not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()
    )


def _misspell_first_key(tree: dict, prefix: str = "") -> str:
    """Rename the first key of ``tree`` (depth first) to a misspelling; return its dotted name."""
    key = next(k for k in tree if k != "extends")
    value = tree[key]
    if isinstance(value, dict) and key != "attacks":
        return _misspell_first_key(value, f"{prefix}{key}.")
    tree[f"{key}x"] = tree.pop(key)
    return f"{prefix}{key}x"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_misspelled_key_in_a_preset_fails_by_name(preset, tmp_path):
    tree = yaml.safe_load(preset.read_text())
    if "extends" in tree:
        tree["extends"] = str(preset.parent / tree["extends"])
    bad_key = _misspell_first_key(tree)
    copy = tmp_path / preset.name
    copy.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=f"unknown config key '{bad_key}'"):
        make_config(copy)


def test_extends_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a loop"):
        make_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"not found: .*missing.yaml \(extended by .*c.yaml\)"):
        make_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="must be a file name"):
        make_config(tmp_path / "d.yaml")


def test_extending_file_overrides_its_base(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(
        f"extends: {ROOT / 'configs' / 'svhn-osdn-pgd.yaml'}\n"
        "data: {split: 3}\neval: {attacks: {pgd50: {steps: 50}}}\n"
    )
    c = make_config(child)
    assert (c.data.name, c.data.split, c.data.hflip, c.train.epochs) == ("svhn", 3, False, 120)
    assert list(c.eval.attacks) == ["pgd50"]  # a file's attack set replaces the base's


def test_a_key_written_twice_is_refused(tmp_path):
    preset = tmp_path / "twice.yaml"
    preset.write_text("data:\n  name: svhn\n  split: 1\ntrain:\n  epochs: 3\ndata:\n  split: 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 6: key 'data' appears twice"):
        make_config(preset)
