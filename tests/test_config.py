from pathlib import Path

import pytest
import yaml

from osad.config import AttackConfig, Config, make_config
from osad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_preset_file_equals_builtin_default():
    assert make_config(ROOT / "configs" / "digits-osdn-pgd.yaml") == make_config()


def test_overrides_are_typed():
    c = make_config(
        overrides=[
            "train.epochs=3",
            "model.denoise_places=[0, 4]",
            "train.reconstruction=false",
            "eval.attacks.pgd.steps=20",
            "method=pgd-at",
        ]
    )
    assert c.train.epochs == 3 and c.model.denoise_places == [0, 4]
    assert c.train.reconstruction is False and c.eval.attacks["pgd"].steps == 20
    assert c.eval.attacks["fgsm"].eps == 32.0 and c.method == "pgd-at"


def test_new_eval_attack_by_override():
    c = make_config(overrides=["eval.attacks.pgd50.steps=50", "eval.attacks.pgd50.eps=16"])
    assert c.eval.attacks["pgd50"].steps == 50 and c.eval.attacks["pgd50"].name == "pgd"


def test_file_attacks_replace_the_default_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"eval": {"attacks": {"pgd20": {"steps": 20}}}}))
    assert list(make_config(f).eval.attacks) == ["pgd20"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epoch=3", "did you mean 'train.epochs'"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("train.epochs=three", "must be an integer"),
        ("train.reconstruction=False_", "must be true or false"),
        ("train.reconstruction='False'", "must be true or false"),
        ("train.epochs=true", "must be an integer"),
        ("train.attack.eps=-1", "must be >= 0"),
        ("train.attack.eps=300", "must be <= 255"),
        ("train.attack.steps=0", "must be >= 1"),
        ("method=osdm", "did you mean 'osdn'"),
        ("data.name=cifar", "unknown dataset"),
        ("data.split=5", "must be in 0..4"),
        ("model.denoise=gausian", "did you mean 'gaussian'"),
        ("model.denoise_places=[0, 5]", "must be in 0..4"),
        ("eval.scores=[msp, energyy]", "unknown score"),
        ("eval.attacks.pgd.norm=l3", "unknown norm"),
        ("train.epochs", "malformed override"),
        ("=3", "malformed override"),
        ("train.epochs=[1", "malformed value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        make_config(overrides=[override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        make_config(listy)


def test_round_trip_through_dict():
    from osad.config import config_from_dict

    c = make_config(overrides=["train.epochs=2"])
    assert config_from_dict(c.to_dict()) == c
    assert isinstance(c, Config)


def test_attack_step_defaults_follow_the_attack():
    default = make_config()
    assert default.train.attack.alpha == 8.0  # PGD: eps/4
    fast = make_config(overrides=["train.attack.name=fgsm-rs"])
    assert fast.train.attack.alpha == 40.0  # FGSM-RS: 1.25 eps (Wong et al. 2020)
    explicit = make_config(overrides=["train.attack.name=fgsm-rs", "train.attack.alpha=10"])
    assert explicit.train.attack.alpha == 10.0
    smaller = make_config(overrides=["train.attack.name=fgsm-rs", "train.attack.eps=8"])
    assert smaller.train.attack.alpha == 10.0
    assert make_config(overrides=["eval.attacks.pgd16.eps=16"]).eval.attacks["pgd16"].alpha == 4.0
    assert AttackConfig(name="fgsm-rs", eps=8).alpha_unit == 10 / 255
    assert AttackConfig(eps=8, alpha=3).alpha_unit == 3 / 255


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["perf.cuda_graphs=true"], "set perf.compile=true as well"),
        (["device=cpu", "perf.bf16=true"], "'perf.bf16' needs a CUDA device"),
        (["device=cpu", "perf.compile=true", "perf.cuda_graphs=true"], "needs a CUDA device"),
        (["perf.channels_lst=true"], "did you mean 'perf.channels_last'"),
        (["perf.compile=yes please"], "must be true or false"),
        (["train.attack.alpha=fast"], "must be a number"),
        (["train.attack.alpha=0"], "must be > 0"),
        (["train.fused_branches=1"], "must be true or false"),
    ],
)
def test_bad_perf_and_training_switches(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_config(overrides=overrides)
