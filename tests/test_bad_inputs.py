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
from tests.conftest import RESUMABLE, TINY, tiny_net

# ---------------------------------------------------------------------------
# CLI flags and config values, through `osad`

CLI_CASES = [
    # flags
    (["train", "--out", "{tmp}/a", "--resume", "{tmp}/b"], "not allowed with argument"),
    (["train", "--no-progress"], "one of the arguments --out --resume is required"),
    (["train", "--resume", "{run}", "train.epochs=3"], "takes no --config, key=value overrides"),
    (["train", "--resume", "{run}", "--force"], "key=value overrides or --force"),
    (["train", "--resume", "{tmp}/none"], "run directory not found"),
    (["train", "--resume", "{run}/config.yaml"], "is a file, not a run directory"),
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
    (["train", "--out", "{tmp}/a", "--config", "{newer}"], "has format 3, newer than this osad"),
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
    newer.write_text("format_version: 3\nmethod: plain\n")
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


# ---------------------------------------------------------------------------
# Refused commands leave nothing behind; a run's config.yaml is read strictly


REFUSED_TRAININGS = [
    (["seed=99999999999999999999999"], "'seed' must be in 0..4294967295"),
    (["device=cuda:abc"], "'device' must be auto, cpu, cuda or cuda:N"),
    (
        ["data.test_fraction=0.001"],
        "'data.test_fraction' 0.001 holds out 2 of the 1797 images for 10 classes; "
        "it must be in [0.0056, 0.9944]",
    ),
    (["data.val_fraction=0.001"], "'data.val_fraction' 0.001 holds out 1 of the"),
    (["model.width=100000"], "model.width=100000, model.latent_dim=16) describes a model"),
    (["train.attack.norm=l2", "train.attack.eps=.inf"], "'train.attack.eps' must be a finite"),
    (["train.attack.alpha=.inf"], "'train.attack.alpha' must be a finite number"),
    (["method=osdn-caml", "train.mutual_temperature=.inf"], "'train.mutual_temperature' must"),
    (["--config", "{bomb}"], "holds more than 10000 values"),
    (["train.batch_size=1"], "train.batch_size=1 is the global batch"),
    (["task=fas", "train.inner_lr=.nan"], "'train.inner_lr' must be a finite number"),
    (["task=fas", "train.inner_reduction=Sum"], "unknown train.inner_reduction 'Sum' (did"),
    (
        ["task=fas", "model.stem_width=100000", "model.blocks=[[100000]]"],
        "model.stem_width=100000, model.blocks=[[100000]], model.depth_widths=[16]",
    ),
]


@pytest.mark.parametrize("args,message", REFUSED_TRAININGS)
def test_refused_training_leaves_no_run_directory(args, message, tmp_path, capsys):
    from tests.test_config import ALIAS_BOMB

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    out = tmp_path / "D"
    args = [a.format(bomb=bomb) for a in args]
    tiny = () if "task=fas" in args else TINY
    for command in ("train", "run"):
        assert main([command, "--out", str(out), "--no-progress", *tiny, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("osad: error: "), err[:2000]
        assert message in err
        assert not out.exists()


def _run_with_config(tmp_path, content: bytes, finished: bool = True):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(content)
    if finished:
        (run / "model.safetensors").write_bytes(b"")
    return run


def _saved_config_text(tmp_path) -> bytes:
    save_config(make_config(), tmp_path / "saved.yaml")
    return (tmp_path / "saved.yaml").read_bytes()


@pytest.mark.parametrize(
    "content,message",
    [
        ("bomb", "holds more than 10000 values with its aliases expanded"),
        ("saved+seed: 3\n", "key 'seed' appears twice"),
        ("? [a, b]\n: 1\n", "a key must be a plain name"),
        (b"method: \xff plain\n", "is not UTF-8 text (byte 0xff at offset 8)"),
    ],
)
def test_a_run_config_yaml_is_read_by_the_strict_loader(content, message, tmp_path, capsys):
    import time

    from tests.test_config import ALIAS_BOMB

    if content == "bomb":
        content = ALIAS_BOMB.encode()
    elif isinstance(content, str):
        content = _saved_config_text(tmp_path) + content.removeprefix("saved+").encode()
    for argv in (["test"], ["check"], ["train", "--resume"]):
        run = _run_with_config(tmp_path, content, finished=argv[0] != "train")
        start = time.perf_counter()
        assert main([*argv, str(run)]) == 2
        assert time.perf_counter() - start < 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and len(err) < 300, err[:2000]
        assert f"{run / 'config.yaml'}" in err and message in err
        shutil.rmtree(run)


def test_a_non_finite_number_in_a_run_config_yaml_is_refused(tmp_path, capsys):
    text = _saved_config_text(tmp_path).replace(b"lr: 0.001", b"lr: .inf")
    assert b"lr: .inf" in text
    run = _run_with_config(tmp_path, text)
    assert main(["test", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: 'train.lr' must be a finite number" in err
