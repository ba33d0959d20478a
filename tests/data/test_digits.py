import torch

from osad.config import make_config
from osad.data import DATASETS, load_openset, rotate_batch, rotate_by
from osad.data.splits import CIFAR10_KNOWN


def test_splits_are_disjoint_and_complete():
    for known in CIFAR10_KNOWN:
        unknown = set(range(10)) - set(known)
        assert len(known) == 6 and len(unknown) == 4
    for split in range(5):
        data = load_openset(make_config(overrides=[f"data.split={split}"]).data)
        assert set(data.known_classes) == set(CIFAR10_KNOWN[split])
        assert set(data.known_classes).isdisjoint(data.unknown_classes)
        assert set(data.known_classes) | set(data.unknown_classes) == set(range(10))
        # Training and validation hold known classes only, remapped to 0..5.
        assert data.train_labels.min() == 0 and data.train_labels.max() == 5
        assert set(data.val_labels.tolist()) == set(range(6))
        # Test labels: remapped for known classes, -1 for unknown ones.
        known_test = data.test_labels >= 0
        mapped = torch.tensor([data.known_classes[i] for i in data.test_labels[known_test]])
        assert torch.equal(mapped, data.test_classes[known_test])
        assert set(data.test_classes[~known_test].tolist()) == set(data.unknown_classes)


def test_partition_sizes_images_and_determinism(digits_split0):
    data = digits_split0
    assert data.train_images.shape[1:] == (1, 8, 8)
    assert data.train_images.dtype == torch.float32
    assert data.train_images.min() >= 0.0 and data.train_images.max() <= 1.0
    # 30% of 1797 digits form the test set; 10% of known training images validate.
    assert len(data.test_labels) == 540
    n_known_train = len(data.train_labels) + len(data.val_labels)
    assert abs(len(data.val_labels) - 0.1 * n_known_train) <= 1
    again = load_openset(make_config().data)
    assert torch.equal(again.train_images, data.train_images)
    assert torch.equal(again.val_labels, data.val_labels)
    other = load_openset(make_config(overrides=["data.partition_seed=1"]).data)
    assert not torch.equal(other.test_classes, data.test_classes)


def test_digits_statistics_match_registry(digits_split0):
    info = DATASETS["digits"]
    from sklearn.datasets import load_digits

    pixels = torch.as_tensor(load_digits().images) / 16
    assert abs(pixels.mean().item() - info.mean[0]) < 1e-3
    assert abs(pixels.std().item() - info.std[0]) < 1e-3


def test_upsampling_is_part_of_the_config():
    data = load_openset(make_config(overrides=["data.image_size=16"]).data)
    assert data.train_images.shape[-2:] == (16, 16)
    assert data.train_images.min() >= 0.0 and data.train_images.max() <= 1.0


def test_rotation_labels_are_right():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2 * 3, 1, 4, 4)
    rotated, k = rotate_batch(x, torch.Generator().manual_seed(0))
    assert set(k.tolist()) <= {0, 1, 2, 3}
    for i in range(len(x)):
        assert torch.equal(rotated[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    # All four labels occur and each is a distinct image for an asymmetric input.
    k_all = torch.tensor([0, 1, 2, 3])
    four = rotate_by(x[:1].expand(4, -1, -1, -1), k_all)
    assert len({tuple(img.flatten().tolist()) for img in four}) == 4
