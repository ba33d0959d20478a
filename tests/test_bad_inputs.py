"""A table of bad inputs at every boundary, each with the error it must give.

CLI: one line ``osad: error: ...``, exit status 2, nothing written.
Python API: a typed :class:`~osad.errors.OsadError` subclass with the message.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from osad.attacks import FGSM, PGD, attack, score_objective
from osad.checkpoint import load_model
from osad.cli import main
from osad.config import make_config, save_config
from osad.errors import CheckpointError, ConfigError, InputError, OsadError
from osad.openset import MSP
from osad.train import train
from tests.conftest import RESUMABLE, tiny_net

# ---------------------------------------------------------------------------
# CLI flags and config values, through `osad`

CLI_CASES = [
    # flags
    (["train", "--out", "{tmp}/a", "--resume", "{tmp}/b"], "not allowed with argument"),
    (["train", "--no-progress"], "one of the arguments --out --resume is required"),
    (["train", "--resume", "{run}", "train.epochs=3"], "takes no --config, key=value overrides"),
    (["train", "--resume", "{run}", "--force"], "key=value overrides or --force"),
    (["train", "--resume", "{tmp}/none"], "run directory not found"),
    (["train", "--resume", "{finished}"], "has finished training"),
    (["train", "--resume", "{fresh}"], "has no checkpoint yet, nothing to resume"),
    (["train", "--resume", "{edited}"], "with train.lr=0.001, the run's config.yaml now has 0.01"),
    (["train", "--resume", "{corrupted}"], "does not match its sha256; an earlier checkpoint"),
    (["test", "{unfinished}"], "continue it with: osad train --resume"),
    (["run", "--out", "{finished}"], "already exists and is not empty"),
    (["train", "--out", "{tmp}/a", "--config", "{tmp}/missing.yaml"], "config file not found"),
    # config values
    (["train", "--out", "{tmp}/a", "train.attack.eps=-1"], "'train.attack.eps' must be >= 0"),
    (["train", "--out", "{tmp}/a", "eval.attacks.pgd.eps=300"], "must be <= 255"),
    (["train", "--out", "{tmp}/a", "train.attack.steps=0"], "'train.attack.steps' must be >= 1"),
    (["train", "--out", "{tmp}/a", "data.known=[0, 1, 1]"], "'data.known' has duplicates"),
    (["train", "--out", "{tmp}/a", "data.known=[0, 12]"], "class ids in 0..9, got [0, 12]"),
    (["train", "--out", "{tmp}/a", "data.known=[3]"], "needs at least 2 classes"),
    (
        ["train", "--out", "{tmp}/a", "data.known=[0,1,2,3,4,5,6,7,8,9]"],
        "names every class; leave some unknown",
    ),
    (["train", "--out", "{tmp}/a", "checkpoint.keep=0"], "'checkpoint.keep' must be >= 1"),
    (["train", "--out", "{tmp}/a", "checkpoint.every_steps=-2"], "must be >= 0, got -2"),
    (["train", "--out", "{tmp}/a", "checkpoint.evry_steps=3"], "did you mean 'checkpoint.every_"),
    (["train", "--out", "{tmp}/a", "deterministic=1"], "'deterministic' must be true or false"),
    (["train", "--out", "{tmp}/a", "--config", "{newer}"], "has format 2, newer than this osad"),
    (["train", "--out", "{tmp}/a", "format_version=1"], "unknown config key 'format_version'"),
]


@pytest.fixture
def places(finished_run, tmp_path):
    """Run directories in each state the CLI cases need."""
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "model.safetensors").unlink()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    save_config(make_config(overrides=list(RESUMABLE)), fresh / "config.yaml")
    edited = tmp_path / "edited"
    shutil.copytree(unfinished, edited)
    config = (edited / "config.yaml").read_text()
    (edited / "config.yaml").write_text(config.replace("lr: 0.001", "lr: 0.01"))
    corrupted = tmp_path / "corrupted"
    shutil.copytree(unfinished, corrupted)
    latest = corrupted / "checkpoints" / (corrupted / "checkpoints" / "latest").read_text().strip()
    (latest / "state.json").write_text((latest / "state.json").read_text().replace("1", "2", 1))
    newer = tmp_path / "newer.yaml"
    newer.write_text("format_version: 2\nmethod: plain\n")
    return {
        "newer": str(newer),
        "edited": str(edited),
        "corrupted": str(corrupted),
        "tmp": str(tmp_path),
        "run": str(unfinished),
        "unfinished": str(unfinished),
        "finished": str(finished_run),
        "fresh": str(fresh),
    }


@pytest.mark.parametrize("argv,message", CLI_CASES)
def test_bad_cli_input_gives_one_line_and_exit_2(argv, message, places, tmp_path, capsys):
    argv = [a.format(**places) for a in argv]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("osad: error: "), err
    assert message in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------
# Python API arguments


def _model():
    return tiny_net().eval()


X = torch.rand(4, 1, 8, 8)
Y = torch.tensor([0, 1, 2, 3])

API_CASES = [
    ("PGD eps in gray levels", lambda m: PGD(m, eps=8), "write eps=8/255"),
    ("FGSM eps > 1", lambda m: FGSM(m, eps=2.0), "eps must be <= 1 for linf"),
    ("negative eps", lambda m: PGD(m, eps=-0.1), "eps must be >= 0"),
    ("zero steps", lambda m: PGD(m, steps=0), "steps must be an integer >= 1"),
    ("fractional steps", lambda m: PGD(m, steps=2.5), "steps must be an integer >= 1"),
    ("zero restarts", lambda m: PGD(m, restarts=0), "restarts must be an integer >= 1"),
    ("unknown norm", lambda m: PGD(m, norm="l3"), "norm must be one of linf, l2"),
    ("uint8 images", lambda m: PGD(m)((X * 255).byte(), Y), "convert uint8 images"),
    ("images in 0..255", lambda m: PGD(m)(X * 255, Y), "divide images in 0..255 by 255"),
    ("NaN image", lambda m: PGD(m)(X.masked_fill(X > 0.9, float("nan")), Y), "got min nan"),
    ("images without batch", lambda m: PGD(m)(X[0], Y), "must have shape (batch, C, H, W)"),
    ("label -1 for unknown", lambda m: PGD(m)(X, Y - 1), "pass None to attack the model's"),
    ("labels of another length", lambda m: PGD(m)(X, Y[:3]), "must have shape (4,), one per"),
    ("float labels", lambda m: PGD(m)(X, Y.float()), "must be integer class indices"),
    (
        "labels below -1 for a score objective",
        lambda m: PGD(m, objective=score_objective(MSP(), "by_label"))(X, Y - 5),
        "class indices >= 0, or -1 for an unknown-class image, got -5",
    ),
    ("engine eps", lambda m: attack(m, X, Y, eps=3, alpha=0.1, steps=1), "eps must be <= 1"),
    ("model: RGB into gray", lambda m: m(torch.rand(2, 3, 8, 8)), "shape (batch, 1, 8, 8)"),
    ("model: wrong size", lambda m: m(torch.rand(2, 1, 16, 16)), "got (2, 1, 16, 16)"),
    ("model: uint8", lambda m: m(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)), "torch.uint8"),
    ("model: out of range", lambda m: m(X - 0.5), "must have values in [0, 1]"),
    ("model: not a tensor", lambda m: m([[0.0]]), "must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_api_argument_raises_input_error(call, message):
    with pytest.raises(InputError) as info:
        call(_model())
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_api_errors_are_typed_osad_errors(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match=r"did you mean 'train\.epochs'"):
        make_config(overrides=["train.epoch=3"])
    with pytest.raises(InputError, match="resume_from needs the run directory"):
        train(make_config(overrides=list(RESUMABLE)), None, resume_from=tmp_path)  # type: ignore[arg-type]
    assert issubclass(InputError, OsadError) and issubclass(InputError, ValueError)


def test_training_data_out_of_range_is_refused_before_training(digits_split0):
    from dataclasses import replace

    data = replace(digits_split0, train_images=digits_split0.train_images * 16)
    with pytest.raises(InputError, match=r"data\.train_images must have values in"):
        train(make_config(overrides=list(RESUMABLE)), data, progress=False)
