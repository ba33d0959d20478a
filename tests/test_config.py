import re
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
        ("eval.attacks.pgd.name=apdg", "did you mean 'apgd'"),
        ("eval.attacks.pgd.loss=dlrr", "did you mean 'dlr'"),
        (
            "eval.attacks.pgd={name: apgd, eps: 8, alpha: 2}",
            "'eval.attacks.pgd.alpha' does not apply to apgd",
        ),
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


def test_round_trip_through_dict_and_a_saved_file(tmp_path):
    import dataclasses

    import yaml

    from osad.config import load_saved_config, save_config

    c = make_config(overrides=["train.epochs=2"])
    assert make_config(c.to_dict()) == c
    save_config(c, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    again = load_saved_config(saved, "config.yaml")
    assert isinstance(again, Config) and again.train.epochs == 2
    # The file states every attack setting the run used: the resolved attacks.
    assert again.train.attack == c.train.attack.resolved()
    assert again.eval.attacks == {k: a.resolved() for k, a in c.eval.attacks.items()}
    assert dataclasses.replace(again, train=c.train, eval=c.eval) == c


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


def test_attack_step_defaults_follow_the_attack():
    def step(*overrides, attack="train"):
        c = make_config(overrides=list(overrides))
        return (c.train.attack if attack == "train" else c.eval.attacks[attack]).resolved().alpha

    assert step() == 8.0  # PGD: eps/4
    assert step("train.attack.name=fgsm-rs") == 40.0  # FGSM-RS: 1.25 eps (Wong et al. 2020)
    assert step("train.attack.name=fgsm-rs", "train.attack.alpha=10") == 10.0
    assert step("train.attack.name=fgsm-rs", "train.attack.eps=8") == 10.0
    assert step("eval.attacks.pgd16.eps=16", attack="pgd16") == 4.0
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


def test_renaming_an_attack_keeps_its_budget_and_resets_its_own_keys():
    fast = make_config(overrides=["train.attack.name=fgsm-rs"]).train.attack.resolved()
    assert (fast.name, fast.eps, fast.steps, fast.alpha) == ("fgsm-rs", 32.0, 1, 40.0)
    apgd = make_config(overrides=["eval.attacks.pgd.name=apgd"]).eval.attacks["pgd"]
    assert apgd.resolved().steps == 100 and apgd.alpha is None and apgd.eps == 32.0
    # Keys set in the same command survive the rename, in either order.
    for order in (
        ("train.attack.alpha=10", "train.attack.name=fgsm-rs"),
        ("train.attack.name=fgsm-rs", "train.attack.alpha=10"),
    ):
        assert make_config(overrides=list(order)).train.attack.resolved().alpha == 10.0
    with pytest.raises(
        ConfigError, match=re.escape("'train.attack.steps' is always 1 for fgsm-rs")
    ):
        make_config(overrides=["train.attack.name=fgsm-rs", "train.attack.steps=5"])


def test_saved_config_states_every_resolved_attack_key(tmp_path):
    from osad.config import save_config

    config = make_config(overrides=["train.attack.name=fgsm-rs"])
    save_config(config, tmp_path / "c.yaml")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert saved["train"]["attack"]["alpha"] == 40.0 and saved["train"]["attack"]["steps"] == 1
    assert (
        make_config(tmp_path / "c.yaml").train.attack.resolved() == config.train.attack.resolved()
    )
