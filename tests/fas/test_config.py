"""The face anti-spoofing schema and the task dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from osad.config import Config, make_config
from osad.errors import ConfigError
from osad.fas.config import FasConfig, make_fas_config
from osad.tasks import make_task_config

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = {
    "fas-oci-to-m.yaml": (["oulu", "casia", "idiap"], "msu"),
    "fas-omi-to-c.yaml": (["oulu", "msu", "idiap"], "casia"),
    "fas-ocm-to-i.yaml": (["oulu", "casia", "msu"], "idiap"),
    "fas-icm-to-o.yaml": (["idiap", "casia", "msu"], "oulu"),
}


def test_default_preset_file_equals_builtin_default():
    assert make_task_config(ROOT / "configs" / "fas-faces.yaml") == make_fas_config()
    # the study's inner step by default, the authors' as a named preset
    default = make_fas_config()
    assert (default.train.inner_lr, default.train.inner_reduction) == (0.1, "sum")
    authors = ["train.inner_lr=0.001", "train.inner_reduction=mean"]
    assert make_task_config(ROOT / "configs" / "fas-faces-authors.yaml") == make_fas_config(
        overrides=authors
    )
    # the digits preset is the default with another collection and the authors' inner
    # step (the study ran on the faces only)
    digits = make_fas_config(overrides=["data.name=digits", *authors])
    assert make_task_config(ROOT / "configs" / "fas-digits.yaml") == digits


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_paper_presets(name):
    config = make_task_config(ROOT / "configs" / name)
    assert isinstance(config, FasConfig)
    assert (config.data.sources, config.data.target) == PROTOCOLS[name]
    assert config.data.image_size == 256 and config.depth_size == 32
    assert config.train.depth_weight == 10.0 and config.method == "rfmeta"


def test_task_key_selects_the_schema(tmp_path):
    assert isinstance(make_task_config(), Config)
    assert isinstance(make_task_config(overrides=["task=fas"]), FasConfig)
    assert isinstance(make_task_config({"task": "openset"}), Config)
    # an override wins over the file
    assert isinstance(make_task_config({"task": "fas"}, ["task=openset"]), Config)
    config = make_task_config(overrides=["task=fas", "method=no-meta", "train.iterations=7"])
    assert config.method == "no-meta" and config.train.iterations == 7
    # a saved configuration rebuilds to itself
    assert make_task_config(config.to_dict()) == config
    assert make_task_config(make_config().to_dict()) == make_config()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["task=fsa"], "unknown task 'fsa' (did you mean 'fas'?)"),
        (["task=fas", "method=rfmta"], "did you mean 'rfmeta'"),
        (["task=fas", "train.epochs=3"], "unknown config key 'train.epochs'"),
        (["task=fas", "data.target=studio"], "also a source"),
        (["task=fas", "data.target=cctvv"], "unknown lfw-faces domain 'cctvv'"),
        (["task=fas", "data.sources=[studio, studio]"], "duplicates"),
        (["task=fas", "data.sources=[studio]"], "at least 2 source domains"),
        (["task=fas", "data.name=face"], "did you mean 'faces'"),
        (["task=fas", "data.name=faces"], "unknown faces domain 'studio'"),
        (["task=fas", "data.image_size=30"], "multiple of 2**len(model.blocks) = 4"),
        (["task=fas", "data.val_fraction=0"], "must be in (0, 1)"),
        (["task=fas", "model.blocks=[[8], []]"], "'model.blocks[1]' must list"),
        (["task=fas", "train.inner_lr=0"], "'train.inner_lr' must be > 0"),
        (
            ["task=fas", "train.inner_reduction=avg"],
            "unknown train.inner_reduction 'avg'; choose one of: mean, sum",
        ),
        (["task=fas", "train.batch_size=1"], "'train.batch_size' must be >= 2"),
        (["task=fas", "train.depth_weight=-1"], "must be >= 0"),
        (["task=fas", "train.iterations=ten"], "must be an integer"),
        (["task=fas", "device=gpu"], "'device' must be"),
        (["train.inner_lr=0.1"], "unknown config key 'train.inner_lr'"),
    ],
)
def test_bad_fas_settings_name_the_problem(overrides, message):
    with pytest.raises(ConfigError) as info:
        make_task_config(overrides=overrides)
    assert message in str(info.value)


def test_no_meta_needs_only_one_source():
    config = make_task_config(overrides=["task=fas", "method=no-meta", "data.sources=[cctv]"])
    assert config.data.sources == ["cctv"]


def test_make_config_refuses_another_task():
    with pytest.raises(ConfigError, match="make_task_config"):
        make_config(overrides=["task=fas"])
