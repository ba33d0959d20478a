"""osad.evaluate_model and ``osad evaluate``: a model trained without osad, end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

import osad
from osad.cli import main
from osad.config import make_config
from osad.data import load_openset
from osad.errors import InputError, OsadError, RunDirError, StorageError
from tests.conftest import TINY_NET, tiny_net

from .outside_model import SmallCNN

FACTORY = "tests/eval/outside_model.py"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    return load_openset(make_config().data)  # digits split 0: 6 known, 4 unknown classes


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A SmallCNN trained by a plain torch loop (no osad trainer), and its weights file."""
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = digits.train_images, digits.train_labels
    for _ in range(15):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("weights") / "small_cnn.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


def _inputs(data, **changes):
    known = data.test_known
    inputs = dict(
        known_images=data.test_images[known],
        known_labels=data.test_labels[known],
        unknown_images=data.test_images[~known],
        train_images=data.train_images,
        train_labels=data.train_labels,
        val_images=data.val_images,
        val_labels=data.val_labels,
        eps=32,
        progress=False,
    )
    return {**inputs, **changes}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osad: error: "), err
    return lines[0]


@pytest.mark.slow
def test_function_and_cli_evaluate_an_outside_model_alike(digits, trained, tmp_path, capsys):
    model, weights = trained
    api = osad.evaluate_model(
        model,
        **_inputs(digits, attacks=["fgsm", "pgd"], scores=["msp", "openmax"], out=tmp_path / "api"),
    )
    known = digits.test_known
    with torch.no_grad():
        expected = (model(digits.test_images[known]).argmax(1) == digits.test_labels[known]).float()
    assert api.accuracy("clean") == pytest.approx(expected.sum().item() / len(expected), abs=1e-12)
    assert api.conditions == ["clean", "fgsm", "pgd"] and api.scores == ["msp", "openmax"]
    assert api.accuracy("pgd") < api.accuracy("clean")
    assert api.worst_case()["closed_set_accuracy"] == api.accuracy("pgd")
    assert api.metric("auroc", "pgd", "openmax") == api.auroc("pgd")["openmax"]

    out = tmp_path / "cli"
    argv = ["evaluate", "--model", f"{FACTORY}:small_cnn", "--weights", str(weights)]
    argv += ["--data", "digits", "--split", "0", "--eps", "32", "--attacks", "fgsm,pgd"]
    argv += ["--scores", "msp,openmax", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| pgd | PGD linf eps 32/255" in printed and f"results in {out}" in printed

    for folder in (tmp_path / "api", out):  # the files of osad test
        for name in ("metrics.json", "scores.h5", "results.md", "figures/roc_pgd.png"):
            assert (folder / name).is_file(), folder / name
    cli = json.loads((out / "metrics.json").read_text())
    # Same model, data and seed: the CLI and the function agree (FGSM is deterministic;
    # PGD's random start differs as the function orders the test images known first).
    for condition in ("clean", "fgsm"):
        for score in ("msp", "openmax"):
            assert cli["conditions"][condition]["metrics"][score] == pytest.approx(
                api.metrics["conditions"][condition]["metrics"][score], abs=1e-9
            )
    assert not list(tmp_path.glob(".*"))  # no partial folder left behind

    # Provenance: what was evaluated, never a placeholder method or dataset.
    model_info = cli["evaluated"]["model"]
    assert model_info["class"].endswith("outside_model.SmallCNN")
    assert model_info["factory"] == f"{FACTORY}:small_cnn"
    assert model_info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model_info["num_classes"] == 6 and model_info["features"] is None
    data_info = cli["evaluated"]["data"]
    assert data_info["source"]["dataset"] == "digits" and data_info["source"]["split"] == 0
    assert data_info["sizes"]["test_known"] == int(known.sum())
    assert data_info["sizes"]["test_unknown"] == int((~known).sum())
    assert data_info["known_classes"] == list(digits.known_classes)
    assert api.metrics["evaluated"]["data"]["source"]["known_test"] == "tensors"
    assert api.metrics["evaluated"]["data"]["validation"] == "given"
    for document in (cli, api.metrics):
        assert set(document["config"]) == {"seed", "eval", "perf"}
        assert "method" not in json.dumps(document["config"])


@pytest.mark.slow
def test_features_from_a_tuple_forward_or_a_callable(digits, trained):
    model, _ = trained
    tuple_model = SmallCNN(with_features=True)
    tuple_model.load_state_dict(model.state_dict())
    by_tuple = osad.evaluate_model(tuple_model, **_inputs(digits, attacks=[], figures=False))
    by_callable = osad.evaluate_model(
        model, **_inputs(digits, attacks=[], figures=False, features=model.body)
    )
    without = osad.evaluate_model(model, **_inputs(digits, attacks=[], figures=False))
    assert "mahalanobis" in by_tuple.scores and "knn" in by_tuple.scores
    assert "mahalanobis" not in without.scores and "knn" not in without.scores
    assert by_tuple.auroc() == pytest.approx(by_callable.auroc(), abs=1e-9)
    assert by_tuple.metrics["evaluated"]["model"]["feature_dim"] == 32
    assert by_tuple.metrics["evaluated"]["model"]["features"] == (
        "forward returns (logits, features)"
    )
    with pytest.raises(InputError, match="score 'knn' needs latent features"):
        osad.evaluate_model(model, **_inputs(digits, attacks=[], scores=["knn"], figures=False))


@pytest.mark.slow
def test_osad_models_give_their_latent_and_decoder(digits):
    net = tiny_net()  # an OpenSetNet with a decoder (untrained: only the path is checked)
    result = osad.evaluate_model(net, **_inputs(digits, attacks=[], figures=False))
    assert {"mahalanobis", "knn", "reconstruction"} <= set(result.scores)
    model_info = result.metrics["evaluated"]["model"]
    assert model_info["features"] == "forward_features (osad model)"
    assert model_info["feature_dim"] == TINY_NET["latent_dim"]


@pytest.mark.slow
def test_datasets_and_uint8_images_are_accepted(digits, trained):
    model, _ = trained
    base = osad.evaluate_model(model, **_inputs(digits, attacks=[], figures=False))
    known = digits.test_known
    as_datasets = _inputs(
        digits,
        known_images=TensorDataset(digits.test_images[known], digits.test_labels[known]),
        known_labels=None,
        unknown_images=TensorDataset(digits.test_images[~known]),
        train_images=TensorDataset(digits.train_images, digits.train_labels),
        train_labels=None,
        val_images=TensorDataset(digits.val_images, digits.val_labels),
        val_labels=None,
        attacks=[],
        figures=False,
    )
    from_datasets = osad.evaluate_model(model, **as_datasets)
    assert from_datasets.metrics["conditions"] == base.metrics["conditions"]
    source = from_datasets.metrics["evaluated"]["data"]["source"]
    assert source["train"] == "Dataset TensorDataset"

    def u8(t):
        return t.mul(255).round().to(torch.uint8)

    inputs = _inputs(digits, attacks=[], figures=False)
    for name in ("known_images", "unknown_images", "train_images", "val_images"):
        inputs[name] = u8(inputs[name])
    as_uint8 = osad.evaluate_model(model, **inputs)
    for name in inputs:
        if name.endswith("_images"):
            inputs[name] = inputs[name].float() / 255
    as_float = osad.evaluate_model(model, **inputs)
    assert as_uint8.metrics["conditions"] == as_float.metrics["conditions"]


def test_validation_split_is_seeded_and_stated(digits, trained):
    model, _ = trained
    inputs = _inputs(digits, attacks=[], figures=False, val_images=None, val_labels=None)
    first = osad.evaluate_model(model, **inputs)
    again = osad.evaluate_model(model, **inputs)
    assert first.metrics["conditions"] == again.metrics["conditions"]
    data_info = first.metrics["evaluated"]["data"]
    assert data_info["validation"].startswith("10% of the training images")
    n = len(digits.train_images)
    assert data_info["sizes"]["train"] + data_info["sizes"]["val"] == n
    assert data_info["sizes"]["val"] == pytest.approx(n / 10, abs=1)


def test_model_mode_restored_and_no_parameter_gradients(digits, trained):
    model, _ = trained
    net = SmallCNN()
    net.load_state_dict(model.state_dict())
    net.train()
    bn = net.body[1]
    running = bn.running_mean.clone()
    osad.evaluate_model(
        net, **_inputs(digits, attacks=["pgd", "adaptive"], scores=["msp"], figures=False)
    )
    assert all(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(bn.running_mean, running)  # BatchNorm in eval mode while attacked


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"known_labels": None}, "pass known_labels as well"),
        ({"known_images": torch.full((4, 1, 8, 8), 2.0)}, "values in [0, 1]"),
        ({"unknown_images": torch.zeros(4, 3, 8, 8)}, "every part must have one image format"),
        ({"version": "strongest"}, "'strongest'"),
        ({"eps": 0}, "eps must be a number > 0 in 1/255 units"),
        ({"eps": 300}, "at most 255 for linf"),
        ({"norm": "l3"}, "norm must be one of linf, l2"),
        ({"attacks": ["apgdd"]}, "unknown attack 'apgdd'"),
        ({"scores": ["reconstruction"]}, "needs an OSDN decoder"),
        ({"train_images": [1, 2]}, "train_images must be a torch.Tensor or a"),
    ],
)
def test_bad_inputs_raise_one_line(digits, trained, changes, message):
    model, _ = trained
    with pytest.raises(OsadError) as info:
        osad.evaluate_model(model, **_inputs(digits, figures=False, **changes))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_labels_must_be_the_models_outputs(digits, trained):
    model, _ = trained
    labels = digits.test_labels[digits.test_known].clone()
    labels[0] = 6
    with pytest.raises(InputError, match="model outputs 6 logits"):
        osad.evaluate_model(model, **_inputs(digits, known_labels=labels))
    with pytest.raises(InputError, match="model failed on images of shape"):
        osad.evaluate_model(torch.nn.Linear(3, 6), **_inputs(digits, attacks=[], figures=False))


@pytest.mark.slow
def test_out_is_replaced_only_after_success(digits, trained, tmp_path, monkeypatch):
    model, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    inputs = _inputs(digits, attacks=[], scores=["msp"], out=out)
    with pytest.raises(RunDirError, match="already holds files"):
        osad.evaluate_model(model, **inputs)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("osad.eval.any_model.write_figures", fail)
    with pytest.raises(StorageError, match="No space left on device"):
        osad.evaluate_model(model, **inputs, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial folder left
    assert (out / "earlier.txt").read_text() == "keep me"
    monkeypatch.undo()
    osad.evaluate_model(model, **inputs, force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "figures",
        "metrics.json",
        "results.md",
        "scores.h5",
    ]


@pytest.fixture
def wrong_weights(tmp_path):
    wider = tmp_path / "wider.safetensors"
    save_file(SmallCNN(width=12).state_dict(), str(wider))
    pickled = tmp_path / "model.pt"
    torch.save(SmallCNN().state_dict(), pickled)
    ten = tmp_path / "ten.safetensors"
    save_file(SmallCNN(classes=10).state_dict(), str(ten))
    return {"wider": wider, "pickle": pickled, "ten": ten}


@pytest.mark.parametrize(
    ("model", "weights", "extra", "message"),
    [
        (
            "small_cnn",
            "wider",
            [],
            "does not match the architecture: body.0.weight has shape (12, 1, 3, 3)",
        ),
        ("small_cnn", "pickle", [], "is a pickle (torch.save) file, which osad never loads"),
        ("small_cnn", "missing", [], "not found"),
        ("ten_class_cnn", "ten", [], "model outputs 10 logits but the data have 6 known"),
        ("nope", "trained", [], "has no function 'nope'"),
        ("not_a_model", "trained", [], "returned a int, not a torch.nn.Module"),
        (None, "trained", [], "--model must be module:function or path/to/file.py:function"),
        ("small_cnn", "trained", ["--version", "strongest"], "'strongest'"),
        ("small_cnn", "trained", ["--data", "cifar-10"], "unknown dataset 'cifar-10'"),
    ],
)
def test_cli_refuses_bad_models_and_weights(
    trained, wrong_weights, tmp_path, capsys, model, weights, extra, message
):
    spec = FACTORY if model is None else f"{FACTORY}:{model}"
    path = {"trained": trained[1], "missing": tmp_path / "none.safetensors", **wrong_weights}
    argv = ["evaluate", "--model", spec, "--weights", str(path[weights]), "--data", "digits"]
    argv += ["--eps", "32", "--out", str(tmp_path / "out"), "--no-progress", *extra]
    assert main(argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_unknown_module_and_nonempty_out(trained, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    argv = ["evaluate", "--weights", str(trained[1]), "--data", "digits", "--eps", "32"]
    argv += ["--out", str(out)]
    assert main([*argv, "--model", "no_such_module_xyz:f"]) == 2
    assert "cannot import module 'no_such_module_xyz'" in _error_line(capsys)
    assert main([*argv, "--model", f"{FACTORY}:small_cnn"]) == 2
    assert "already holds files; pass --force" in _error_line(capsys)
    assert (out / "earlier.txt").read_text() == "keep me"


def _python_block_after(text: str, heading: str) -> str:
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's "Evaluate your own model" example, as printed there."""
    code = _python_block_after((ROOT / "README.md").read_text(), "## Evaluate your own model")
    assert len([line for line in code.splitlines() if line.strip()]) <= 17
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.conditions == ["clean", "pgd", "ensemble"]  # the standard ensemble
    assert result.accuracy("clean") > 0.8
    assert result.accuracy("ensemble") <= result.accuracy("pgd") <= result.accuracy("clean")
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_weights_files_are_verified(tmp_path):
    from osad.checkpoint import save_model
    from osad.errors import CheckpointError
    from osad.modelio import load_weights_file

    model = SmallCNN()
    path = tmp_path / "osad.safetensors"
    save_model(path, model, "small-cnn", {})  # an osad weights file carries a digest
    loaded = SmallCNN(classes=6)
    digest = load_weights_file(loaded, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    state = loaded.state_dict()
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one tensor byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_weights_file(SmallCNN(), path)
    path.write_bytes(b"not a weights file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights_file(SmallCNN(), path)
