"""Image folders as training data (data.name=folder) and as unknowns: layouts, known
classes, explicit size and channel conversion, provenance, and OSDN through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osad.cli import main
from osad.config import make_config
from osad.data import load_openset
from osad.errors import ConfigError, DataError

CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox")
PER_CLASS = 12


def _image(c: int, i: int, size: int = 16, mode: str = "RGB") -> Image.Image:
    """A class-coloured square with a little seeded noise: classes are separable."""
    rng = np.random.default_rng(100 * c + i)
    colour = np.array([40 * c % 256, 255 - 40 * c, 120 + 20 * (c % 3)], dtype=np.int64)
    pixels = colour + rng.integers(-20, 21, size=(size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert(mode)


def write_folder(root: Path, per_class: int = PER_CLASS, size: int = 16) -> Path:
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _image(c, i, size).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "animals")


def _load(*overrides):
    return load_openset(make_config(overrides=list(overrides)).data)


TINY = [
    "model.width=2",
    "model.latent_dim=8",
    "train.epochs=1",
    "train.batch_size=16",
    "train.attack.steps=1",
    "eval.attacks.pgd.steps=1",
    "eval.scores=[msp]",
    "eval.figures=false",
    "data.val_fraction=0.2",
]


@pytest.mark.slow
def test_osdn_trains_and_tests_on_a_folder_of_pngs_through_the_cli(
    folder, tmp_path, one_thread, capsys
):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--no-progress", "data.name=folder"]
    assert main([*args, f"data.root={folder}", "method=osdn", *TINY]) == 0
    record = json.loads((run / "data.json").read_text())
    assert record["source"] == "folder" and record["path"] == str(folder.resolve())
    assert record["classes"] == list(CLASSES)  # sorted subfolder names
    assert (record["image_size"], record["channels"], record["resized"]) == (16, 3, False)
    assert record["images"] == {"pool": 6 * PER_CLASS}
    assert record["partition"] == "seeded stratified: test_fraction 0.3, partition_seed 0"
    # Normalisation: the statistics of the training images, recorded.
    data = _load("data.name=folder", f"data.root={folder}", "data.val_fraction=0.2")
    pixels = data.train_images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert record["mean"] == pytest.approx(pixels.mean(1).tolist(), abs=1e-4)
    assert record["std"] == pytest.approx(pixels.std(1, unbiased=False).tolist(), abs=1e-4)
    assert data.known_classes == (0, 1, 2, 3) and data.unknown_classes == (4, 5)  # 60% known

    # A run directory does not choose where data are read from: --data-root names the folder.
    assert main(["test", str(run), "--no-progress", "--data-root", str(folder)]) == 0
    results = (run / "eval" / "results.md").read_text()
    assert results.startswith("# osdn on folder:animals split 0\n") and "digits" not in results
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["counts"]["test_unknown"] == int((data.test_labels < 0).sum())

    # Testing on a folder whose images changed since training is refused.
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    (changed / "ant" / "00.png").unlink()
    capsys.readouterr()
    assert main(["test", str(run), "--no-progress", "--force", "--data-root", str(changed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the data" in err and "files_sha256 changed" in err


def test_known_classes_by_name_or_index(folder):
    data = _load("data.name=folder", f"data.root={folder}", "data.known=[fox,bee]")
    assert data.known_classes == (5, 1) and data.unknown_classes == (0, 2, 3, 4)
    assert data.name == "folder:animals"
    by_index = _load("data.name=folder", f"data.root={folder}", "data.known=[5,1]")
    assert torch.equal(by_index.train_images, data.train_images)
    with pytest.raises(DataError, match="names class 'yak', which the folder lacks"):
        _load("data.name=folder", f"data.root={folder}", "data.known=[yak,bee]")


def test_split_folders_and_split_lists(tmp_path):
    split = tmp_path / "split"
    write_folder(split / "train", per_class=4)
    write_folder(split / "test", per_class=2)
    data = _load("data.name=folder", f"data.root={split}", "data.val_fraction=0")
    assert len(data.train_images) == 4 * 4 and len(data.test_images) == 6 * 2
    assert data.source["partition"] == "train/, test/"

    listed = write_folder(tmp_path / "listed", per_class=4)
    (listed / "train.txt").write_text("".join(f"{c}/00.png\n{c}/01.png\n" for c in CLASSES))
    (listed / "test.txt").write_text("".join(f"{c}/02.png\n" for c in CLASSES))
    data = _load("data.name=folder", f"data.root={listed}", "data.val_fraction=0")
    assert len(data.train_images) == 4 * 2 and len(data.test_images) == 6
    assert data.source["images"] == {"train": 12, "test": 6}


def test_mixed_sizes_are_refused_unless_resizing_is_asked(tmp_path, capsys):
    mixed = write_folder(tmp_path / "mixed")
    _image(0, 99, size=20).save(mixed / "ant" / "big.png")
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "data.name=folder", f"data.root={mixed}", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds images of 2 sizes (16x16: 72, 20x20: 1)" in err
    assert "set data.image_size=N" in err and not (tmp_path / "run").exists()
    data = _load("data.name=folder", f"data.root={mixed}", "data.image_size=16")
    assert data.train_images.shape[1:] == (3, 16, 16) and data.source["resized"]

    _image(1, 99, mode="L").save(mixed / "bee" / "gray.png")
    with pytest.raises(DataError, match=r"holds 1 gray and 73 RGB images; set data.channels=3"):
        _load("data.name=folder", f"data.root={mixed}", "data.image_size=16")
    gray = _load("data.name=folder", f"data.root={mixed}", "data.image_size=8", "data.channels=1")
    assert gray.train_images.shape[1:] == (1, 8, 8) and len(gray.mean) == len(gray.std) == 1


def test_unknowns_of_another_format_are_refused_unless_conversion_is_asked(folder):
    # 16x16 RGB unknowns for the 8x8 gray digits: never converted silently.
    with pytest.raises(DataError, match=r"set data\.image_size=8 and data\.channels=1 to convert"):
        _load(f"data.unknown={folder}")
    data = _load(f"data.unknown={folder}", "data.image_size=8", "data.channels=1")
    unknown = data.test_images[data.test_labels < 0]
    assert unknown.shape == (6 * PER_CLASS, 1, 8, 8)
    assert data.source["unknown"] == "folder:animals"
    assert data.mean == (0.3053,)  # digits keep their published statistics


def test_a_folder_dataset_needs_its_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"set data\.name=folder data\.root=/data/animals"):
        _load("data.name=/data/animals")
    with pytest.raises(DataError, match=r"data\.root=PATH"):
        _load("data.name=folder")
    flat = tmp_path / "flat"
    flat.mkdir()
    _image(0, 0).save(flat / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        _load("data.name=folder", f"data.root={flat}")


@pytest.mark.slow
def test_folder_unknowns_are_named_and_found_from_another_directory(
    folder, tmp_path, monkeypatch, one_thread
):
    run = tmp_path / "run"
    monkeypatch.chdir(folder.parent)
    asked = ["data.unknown=./animals", "data.image_size=8", "data.channels=1"]
    assert main(["train", "--out", str(run), "--no-progress", *asked, *TINY]) == 0
    assert f"unknown: {folder.resolve()}\n" in (run / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["test", str(run), "--no-progress"]) == 0
    title = (run / "eval" / "results.md").read_text().splitlines()[0]
    assert title == "# osdn on digits split 0, unknowns from folder:animals"
    assert json.loads((run / "data.json").read_text())["unknown"] == "folder:animals"
