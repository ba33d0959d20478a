import dataclasses
import re
import time
import typing
from pathlib import Path

import pytest
import yaml

from osad.attacks import ATTACK_SPECS
from osad.config import AttackConfig, Config, make_config, parse_override
from osad.errors import ConfigError
from osad.fas.config import FasConfig
from osad.tasks import make_task_config

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
    assert c.train.reconstruction is False and c.eval.attacks["pgd"].params["steps"] == 20
    assert c.eval.attacks["fgsm"].eps == 32.0 and c.method == "pgd-at"


def test_new_eval_attack_by_override():
    c = make_config(overrides=["eval.attacks.pgd50.steps=50", "eval.attacks.pgd50.eps=16"])
    assert c.eval.attacks["pgd50"].params["steps"] == 50 and c.eval.attacks["pgd50"].name == "pgd"


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
        ("model.denoise=gaussian+cbm", "unknown denoising form in 'model.denoise' 'cbm'"),
        ("model.denoise=cbam+cbam", "'model.denoise' repeats a form"),
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

    from osad.config import save_config
    from osad.tasks import load_saved_config

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
    assert attacks["apgd"].params == {"steps": 100, "random_start": True}
    assert attacks["square"].loss == "margin" and attacks["square"].params["p_init"] == 0.8
    assert attacks["rs"].params["alpha"] == 10.0 and attacks["rs"].params["random_start"] is True
    assert attacks["pgd"].params["alpha"] == 8.0  # eps / 4
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
        chosen = c.train.attack if attack == "train" else c.eval.attacks[attack]
        return chosen.resolved().params["alpha"]

    assert step() == 8.0  # PGD: eps/4
    assert step("train.attack.name=fgsm-rs") == 40.0  # FGSM-RS: 1.25 eps (Wong et al. 2020)
    assert step("train.attack.name=fgsm-rs", "train.attack.alpha=10") == 10.0
    assert step("train.attack.name=fgsm-rs", "train.attack.eps=8") == 10.0
    assert step("eval.attacks.pgd16.eps=16", attack="pgd16") == 4.0
    assert AttackConfig(name="fgsm-rs", eps=8).resolved().params["alpha"] == 10
    assert AttackConfig(eps=8, params={"alpha": 3}).resolved().params["alpha"] == 3


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
    assert (fast.name, fast.eps, fast.params["steps"], fast.params["alpha"]) == (
        "fgsm-rs",
        32.0,
        1,
        40.0,
    )
    apgd = make_config(overrides=["eval.attacks.pgd.name=apgd"]).eval.attacks["pgd"]
    assert apgd.resolved().params == {"steps": 100, "random_start": True} and apgd.eps == 32.0
    # Keys set in the same command survive the rename, in either order.
    for order in (
        ("train.attack.alpha=10", "train.attack.name=fgsm-rs"),
        ("train.attack.name=fgsm-rs", "train.attack.alpha=10"),
    ):
        assert make_config(overrides=list(order)).train.attack.resolved().params["alpha"] == 10.0
    with pytest.raises(
        ConfigError, match=re.escape("'train.attack.steps' is always 1 for fgsm-rs")
    ):
        make_config(overrides=["train.attack.name=fgsm-rs", "train.attack.steps=5"])


def test_saved_config_states_every_resolved_attack_key(tmp_path):
    from osad.config import save_config

    config = make_config(overrides=["train.attack.name=fgsm-rs"])
    save_config(config, tmp_path / "c.yaml")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    params = saved["train"]["attack"]["params"]
    assert params["alpha"] == 40.0 and params["steps"] == 1 and saved["format_version"] == 2
    assert (
        make_config(tmp_path / "c.yaml").train.attack.resolved() == config.train.attack.resolved()
    )


# ---------------------------------------------------------------------------
# Every YAML osad reads goes through one strict loader (issue 15 item 4)

# 342 bytes that expand to 9**9 strings: PyYAML composes it in microseconds, but
# echoing, copying or merging the expanded value takes gigabytes.
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
BAD_YAML = [
    (ALIAS_BOMB.encode(), "holds more than 10000 values with its aliases expanded"),
    (b"a: &a [*a]\n", "an alias refers to a node that contains it"),
    (b"? [a, b]\n: 1\n", "a key must be a plain name, not a list or mapping"),
    (b"method: plain\nmethod: osdn\n", "key 'method' appears twice"),
    (b"method: \xff\xfe plain\n", "is not UTF-8 text (byte 0xff at offset 8)"),
    (b"seed: " + b"9" * 5000 + b"\n", "holds a value osad cannot read"),
    (b"eval: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", "more than 32 levels deep"),
    (b"eval: [" + b"1, " * 20_000 + b"]\n", "holds more than 10000 values"),
    (b"# " + b"x" * (1 << 20) + b"\n", "holds 1048579 bytes, more than the 1048576"),
]


@pytest.mark.parametrize("content,message", BAD_YAML)
def test_bad_yaml_files_are_refused_in_one_short_line(content, message, tmp_path):
    assert ALIAS_BOMB.count("\n") == 9 and len(ALIAS_BOMB) < 400
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        make_config(path)
    assert time.perf_counter() - start < 2
    text = str(info.value)
    assert message in text and "\n" not in text and len(text) < 200, text


def test_overrides_go_through_the_strict_loader():
    bomb = "[" + ", ".join(["&x [&y [&z [1, 1, 1, 1, 1, 1, 1, 1, 1]]]"] + ["*x"] * 9999) + "]"
    for value, message in [
        (bomb, "more than 10000 values"),
        ("{a: 1, a: 2}", "key 'a' appears twice"),
        ("{[a, b]: 1}", "a key must be a plain name"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            make_config(overrides=[f"train.attack={value}"])
        assert len(str(info.value)) < 250


def test_yaml_1_2_numbers_are_floats(tmp_path):
    # PyYAML implements YAML 1.1, where a float needs a dot: 1e-3 was a string.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  attack:\n    eps: 16E0\n")
    c = make_config(path, ["train.weight_decay=5e-4", "eval.attacks.pgd.eps=+8e0"])
    assert c.train.lr == 1e-3 and c.train.attack.eps == 16.0
    assert c.train.weight_decay == 5e-4 and c.eval.attacks["pgd"].eps == 8.0
    # YAML 1.1 forms still read as before; integers stay integers.
    c = make_config(overrides=["train.lr=1_0.5", "train.epochs=3"])
    assert c.train.lr == 10.5 and c.train.epochs == 3
    assert parse_override("data.name=1e") == ("data.name", "1e")


def test_a_scalar_where_a_list_is_expected_is_a_one_element_list(tmp_path):
    assert make_config(overrides=["eval.scores=msp"]).eval.scores == ["msp"]
    assert make_config(overrides=["model.denoise_places=4"]).model.denoise_places == [4]
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  eps_sweep: 8\n")
    assert make_config(path).eval.eps_sweep == [8.0]
    with pytest.raises(ConfigError, match=re.escape("'eval.scores' must be a list of a string")):
        make_config(overrides=["eval.scores={a: 1}"])


@pytest.mark.parametrize(
    "override,suggestion",
    [("data.name=CIFAR10", "cifar10"), ("method=OSDN", "osdn"), ("Train.epochs=3", "train")],
)
def test_suggestions_ignore_case(override, suggestion):
    with pytest.raises(ConfigError, match=re.escape(f"(did you mean '{suggestion}'?)")):
        make_config(overrides=[override])


@pytest.mark.parametrize(
    "override",
    [
        "method=" + "x" * 100_000,
        "x" * 100_000 + "=1",
        "data.known=[" + ", ".join(["1"] * 9000) + "]",
        "eval.eps_sweep=[" + ", ".join(["300"] * 9000) + "]",
        "model.denoise=" + "+".join(["cbam"] * 9000),
        "device=" + "cuda" * 9000,
        "seed=" + "9" * 4000,
        "train.lr=" + "9" * 4000,
        "train.epochs=" + "x" * 100_000,
        "data.name={" + ", ".join(f"k{i}: {i}" for i in range(9000)) + "}",
    ],
)
def test_error_messages_never_echo_unbounded_values(override):
    with pytest.raises(ConfigError) as info:
        make_config(overrides=[override])
    assert len(str(info.value)) < 300, str(info.value)[:400]


# ---------------------------------------------------------------------------
# Numbers: finite, and integers torch and NumPy accept (issue 15 items 7 and 8)


def _float_keys(schema: type, prefix: str = "") -> list[str]:
    """Every key of ``schema`` that holds a float (attack mappings through 'pgd')."""
    keys = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, key = hints[f.name], prefix + f.name
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, key + ".")
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
            keys += _float_keys(args[1], key + ".pgd.")
        elif schema is AttackConfig and f.name == "params":  # every attack's own floats
            names = {
                n for s in ATTACK_SPECS.values() for n, p in s.params.items() if p.type is float
            }
            keys += [prefix + name for name in sorted(names)]
        elif tp is float or float in args:
            keys.append(key)
    return keys


def test_every_float_key_is_found():
    keys = _float_keys(Config)
    for key in ["train.lr", "train.attack.eps", "train.attack.alpha", "eval.eps_sweep"]:
        assert key in keys
    assert "train.mutual_temperature" in keys and "eval.attacks.pgd.p_init" in keys
    assert {"train.inner_lr", "train.depth_weight"} <= set(_float_keys(FasConfig))


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1" + "0" * 400])
def test_non_finite_numbers_are_refused_naming_the_key(value):
    cases = [([], key) for key in _float_keys(Config)]
    cases += [(["task=fas"], key) for key in _float_keys(FasConfig)]
    cases += [(["train.attack.norm=l2"], "train.attack.eps")]
    for extra, key in cases:
        with pytest.raises(ConfigError, match=re.escape(f"'{key}") + r"(\[0\])?' must be a finite"):
            make_task_config(overrides=[*extra, f"{key}={value}"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=99999999999999999999999", "'seed' must be in 0..4294967295"),
        ("seed=-1", "'seed' must be in 0..4294967295"),
        ("data.partition_seed=4294967296", "'data.partition_seed' must be in 0..4294967295"),
        ("train.epochs=9223372036854775808", "'train.epochs' must be in -9223372036854775808.."),
        ("device=cuda:abc", "'device' must be auto, cpu, cuda or cuda:N (N a GPU index)"),
        ("device=cuda:", "'device' must be a string"),
        ("device=cuda:-1", "'device' must be auto"),
        ("device=CPU", "'device' must be auto"),
    ],
)
def test_integers_and_devices_out_of_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(overrides=[override])
    if override.startswith(("seed", "device")):  # the anti-spoofing schema has both
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_task_config(overrides=["task=fas", override])


# ---------------------------------------------------------------------------
# Attacks own their parameters; config format 2 (issue 16 item 1)

FORMAT1 = Path(__file__).parent / "config_format1.yaml"  # written by osad before issue 16


def test_a_format_1_saved_run_loads_with_its_attacks_and_tail():
    from osad.tasks import load_saved_config

    config = load_saved_config(yaml.safe_load(FORMAT1.read_text()), str(FORMAT1))
    attacks = config.eval.attacks
    # The captions the run wrote, by the code of its time (tests/config_format1.yaml).
    assert [a.describe() for a in attacks.values()] == [
        "FGSM linf eps 32/255",
        "PGD linf eps 32/255, step 8/255, 10 steps",
        "Square linf eps 16/255, 100 queries, p_init 0.8",
        "Patch 3x3, 20 candidate positions, step 12.75/255, 10 steps",
    ]
    assert config.train.attack.describe() == "FGSM-RS linf eps 32/255, step 40/255"
    assert attacks["sq"].params == {"queries": 100, "p_init": 0.8}
    tail = {"tail_size": 10}
    assert config.eval.score_options == {"openmax": tail, "openmax-bb": tail}
    assert config.train.epochs == 2


def test_flat_and_params_spellings_are_one_setting():
    flat = make_config(overrides=["eval.attacks.pgd.steps=50", "train.attack.alpha=4"])
    nested = make_config(
        overrides=["eval.attacks.pgd.params.steps=50", "train.attack.params.alpha=4"]
    )
    assert flat == nested and flat.eval.attacks["pgd"].params["steps"] == 50


@pytest.mark.parametrize(
    "override,message",
    [
        ("eval.attacks.pgd.params.querys=3", "did you mean 'eval.attacks.pgd.queries'"),
        ("eval.attacks.pgd.params.queries=3", "'eval.attacks.pgd.queries' does not apply to pgd"),
        ("eval.attacks.sq={name: square, alpha: 2}", "a parameter of fgsm, fgsm-rs, patch, pgd"),
        ("eval.attacks.pgd.params=3", "'eval.attacks.pgd.params' must be a mapping"),
        ("eval.score_options.openmax.tail=3", "did you mean 'tail_size'"),
        ("eval.score_options.openmx.tail_size=3", "did you mean 'openmax'"),
        ("eval.score_options.openmax.tail_size=1", "'tail_size' of score 'openmax' must be >= 2"),
        ("eval.score_options.knn.k=two", "'eval.score_options.knn.k' must be an integer"),
    ],
)
def test_attack_params_and_score_options_are_checked_by_their_owner(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(overrides=[override])


def test_score_options_reach_the_scorers():
    from osad.eval.protocol import make_scorers

    config = make_config(
        overrides=["eval.scores=[openmax,openmax-bb,knn]", "eval.score_options.knn.k=3"]
    )
    config.eval.score_options["openmax"] = {"tail_size": 7}
    scorers = make_scorers(config, model=None)
    assert (scorers["openmax"].tail_size, scorers["openmax-bb"].tail_size) == (7, 20)
    assert scorers["knn"].k == 3


def test_default_captions_are_unchanged():
    c = make_config()
    assert c.train.attack.describe() == "PGD linf eps 32/255, step 8/255, 5 steps"
    assert [a.describe() for a in c.eval.attacks.values()] == [
        "FGSM linf eps 32/255",
        "PGD linf eps 32/255, step 8/255, 10 steps",
    ]
    score = make_config(overrides=["eval.attacks.a={name: apgd, target: score, restarts: 2}"])
    assert (
        score.eval.attacks["a"].describe()
        == "APGD linf eps 8/255, 100 steps, 2 restarts, on each score"
    )
