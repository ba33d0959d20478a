import re
from pathlib import Path

import pytest
import yaml

from osad.config import Config, make_config
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
        ("eval.attacks.pgd.name=apdg", "did you mean 'apgd'"),
        ("eval.attacks.pgd.loss=dlrr", "did you mean 'dlr'"),
        ("eval.attacks.pgd.name=apgd", "'eval.attacks.pgd.alpha' does not apply to apgd"),
        ("eval.attacks.fgsm.alpha=8", "'eval.attacks.fgsm.alpha' is always 32.0 for fgsm"),
        ("eval.attacks.pgd.queries=100", "'eval.attacks.pgd.queries' does not apply to pgd"),
        ("eval.attacks.sq={name: square, steps: 10}", "'eval.attacks.sq.steps' does not apply"),
        ("eval.attacks.pgd.alpha=0", "must be > 0"),
        ("train.attack.name=square", "black-box evaluation attack"),
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


def test_new_attacks_from_overrides_take_their_defaults():
    c = make_config(
        overrides=[
            "eval.attacks.apgd.name=apgd",
            "eval.attacks.apgd.eps=32",
            "eval.attacks.apgd.loss=dlr",
            "eval.attacks.square={name: square, eps: 32, queries: 100}",
            "eval.attacks.rs={name: fgsm-rs, eps: 8}",
            "eval.attacks.pgd.alpha=null",
        ]
    )
    attacks = {k: a.resolved() for k, a in c.eval.attacks.items()}
    assert attacks["apgd"].steps == 100 and attacks["apgd"].alpha is None
    assert attacks["square"].loss == "margin" and attacks["square"].p_init == 0.8
    assert attacks["rs"].alpha == 10.0 and attacks["rs"].random_start is True
    assert attacks["pgd"].alpha == 8.0  # eps / 4
    assert attacks["apgd"].describe() == "APGD-DLR linf eps 32/255, 100 steps"
    assert attacks["square"].describe() == "Square linf eps 32/255, 100 queries, p_init 0.8"
    assert c.eval.attacks["pgd"].describe() == "PGD linf eps 32/255, step 8/255, 10 steps"


def test_unknown_attack_key_is_named():
    with pytest.raises(ConfigError, match=re.escape("did you mean 'eval.attacks.pgd.queries'")):
        make_config(overrides=["eval.attacks.pgd.querys=3"])


def test_undotted_keys_name_the_one_section_that_has_them():
    c = make_config(overrides=["split=2", "epochs=3", "width=8", "unknown=svhn"])
    assert (c.data.split, c.train.epochs, c.model.width, c.data.unknown) == (2, 3, 8, "svhn")
    assert make_config(overrides=["seed=4"]).seed == 4  # top-level keys stay top-level
    with pytest.raises(ConfigError, match="ambiguous key 'batch_size': write one of"):
        make_config(overrides=["batch_size=32"])
    with pytest.raises(ConfigError, match="unknown config key 'splitt'"):
        make_config(overrides=["splitt=2"])
