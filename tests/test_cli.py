"""End-to-end behaviour of the command line on tiny digits runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from osad.checkpoint import load_model
from osad.cli import main
from tests.conftest import TINY, one_torch_thread

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--out", str(out), "--no-progress", *TINY]) == 0
    assert main(["test", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_train_and_test_write_the_run_directory(tiny_run, capsys):
    for name in (
        "config.yaml",
        "model.safetensors",
        "history.jsonl",
        "eval/metrics.json",
        "eval/scores.h5",
        "eval/results.md",
        "eval/figures/roc_pgd.png",
        "eval/figures/hist_msp.png",
        "eval/figures/eps_sweep.png",
        "eval/figures/reconstructions.png",
    ):
        assert (tiny_run / name).is_file(), name
    assert any((tiny_run / "tensorboard").iterdir())
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert set(metrics["conditions"]) == {"clean", "fgsm", "pgd"}
    for cond in metrics["conditions"].values():  # the core keys, every score by default
        assert 0.0 <= cond["closed_set_accuracy"] <= 1.0
        assert {"msp", "openmax", "odin", "knn", "reconstruction"} <= set(cond["auroc"])
        assert "attack" in cond
        assert cond["metrics"]["msp"]["auroc"] == cond["auroc"]["msp"]
        assert {"aupr_in", "fpr95_known_positive", "oscr", "threshold"} <= set(
            cond["metrics"]["openmax"]
        )
        assert cond["pairings"] == {}
    assert metrics["seed"] == 0 and metrics["config"]["method"] == "osdn"
    assert metrics["torch_threads"] == torch.get_num_threads()
    assert metrics["conditions"]["pgd"]["attack"]["eps"] == 32.0
    history = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 1 and "val_attacked_accuracy" in history[-1]


@pytest.mark.slow
def test_scores_h5_holds_per_sample_results(tiny_run):
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    with h5py.File(tiny_run / "eval" / "scores.h5") as f:
        assert set(f) == {"clean", "fgsm", "pgd"}
        g = f["pgd"]
        n = metrics["counts"]["test_known"] + metrics["counts"]["test_unknown"]
        for key in ("index", "true_class", "is_known", "logits", "score_msp", "score_openmax"):
            assert g[key].shape[0] == n
        known = g["is_known"][:]
        acc = (g["predicted"][:][known] == g["label"][:][known]).mean()
        assert acc == pytest.approx(metrics["conditions"]["pgd"]["closed_set_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_test_options_select_attacks_scores_and_pairings(tmp_path, capsys):
    run = tmp_path / "adaptive"
    small_adaptive = "eval.attacks.adaptive={name: apgd, eps: 32, steps: 2, target: score}"
    assert main(["train", "--out", str(run), "--no-progress", *TINY, small_adaptive]) == 0
    assert main(["test", str(run), "--attacks", "pgd,adaptve"]) == 2
    assert "did you mean 'adaptive'" in capsys.readouterr().err
    assert not (run / "eval").exists()
    assert main(["test", str(run), "--version", "fastest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown ensemble version (eval.version) 'fastest'" in err
    assert not (run / "eval").exists()
    argv = ["test", str(run), "--no-progress", "--attacks", "pgd,adaptive"]
    with one_torch_thread():
        assert main([*argv, "--scores", "msp,openmax", "--pairings", "known"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics["conditions"]) == ["clean", "pgd", "adaptive"]
    adaptive = metrics["conditions"]["adaptive"]
    assert set(adaptive["auroc"]) == {"msp", "openmax"}
    assert adaptive["attack"]["target"] == "score" and adaptive["attack"]["steps"] == 2
    assert set(adaptive["pairings"]) == {"known"}
    with h5py.File(run / "eval" / "scores.h5") as f:
        assert set(f) == {"clean", "pgd", "adaptive"}
        assert {"score_msp", "logits_msp", "known"} <= set(f["adaptive"])
        assert {"score_openmax", "logits", "predicted"} <= set(f["pgd/known"])


@pytest.mark.slow
def test_check_prints_each_verdict_and_saves_them(tiny_run, capsys):
    with one_torch_thread():
        status = main(["check", str(tiny_run), "--images", "32", "--queries", "20"])
    saved = json.loads((tiny_run / "check.json").read_text())
    assert status == (0 if saved["passed"] else 1)
    lines = capsys.readouterr().out.splitlines()
    names = ["eps_monotone", "more_iterations", "black_box", "gradients", "deterministic"]
    assert [c["name"] for c in saved["checks"]] == names
    for check, line in zip(saved["checks"], lines, strict=False):
        assert line.startswith(("PASS" if check["passed"] else "FAIL") + f"  {check['name']}: ")
    assert main(["check", str(tiny_run), "--score", "mps", "--force"]) == 2
    assert "did you mean 'msp'" in capsys.readouterr().err


@pytest.mark.slow
def test_rebuilt_model_gives_identical_logits(tmp_path):
    from osad.checkpoint import save_model
    from osad.config import make_config
    from osad.data import load_openset
    from osad.train import train

    config = make_config(overrides=list(TINY))
    data = load_openset(config.data)
    result = train(config, data, progress=False)
    save_model(tmp_path / "m.safetensors", result.model, result.model_name, result.model_kwargs)
    rebuilt = load_model(tmp_path / "m.safetensors")
    x = data.test_images[:50]
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), rebuilt(x))


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tiny_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--out", str(again), "--no-progress", *TINY]) == 0
    assert main(["test", str(again), "--no-progress"]) == 0
    first = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    second = json.loads((again / "eval" / "metrics.json").read_text())
    for metrics in (first, second):  # the settings name each model file's sha256
        for condition in metrics["conditions"].values():
            condition.pop("settings")
    assert first["conditions"] == second["conditions"]


@pytest.mark.slow
def test_existing_output_is_not_overwritten(tiny_run, capsys):
    before = (tiny_run / "model.safetensors").read_bytes()
    assert main(["train", "--out", str(tiny_run), "--no-progress", *TINY]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tiny_run / "model.safetensors").read_bytes() == before
    # A second osad test reuses every condition computed under the same settings.
    before = {p.name: p.read_bytes() for p in (tiny_run / "eval").iterdir() if p.is_file()}
    assert main(["test", str(tiny_run), "--no-progress"]) == 0
    assert "| pgd |" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in (tiny_run / "eval").iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--out", "{tmp}/a", "data.name=cifar11"], "unknown dataset 'cifar11'"),
        (["train", "--out", "{tmp}/a", "method=osdm"], "did you mean 'osdn'"),
        (["test", "{tmp}/no-such-run"], "run directory not found"),
        (["train", "--out", "{tmp}/a", "--config", "{tmp}/missing.yaml"], "config file not found"),
        (["train", "--out", "{tmp}/a", "data.split=7"], "'data.split' must be in 0..4"),
        (["train", "--out", "{tmp}/a", "train.epochs"], "malformed override"),
        (["train", "--out", "{tmp}/a", "device=cpu", "perf.bf16=true"], "needs a CUDA device"),
        pytest.param(
            ["train", "--out", "{tmp}/a", "perf.bf16=true"],  # device=auto resolves to the CPU
            "needs a CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
        (["train"], "one of the arguments --out --resume is required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("osad: error: ")
    assert message in err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "osad", "test", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("osad: error: run directory not found")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_seed_entry_point_trains_and_tests(tmp_path):
    run_dir = tmp_path / "main-run"
    common = [sys.executable, str(ROOT / "main.py"), "--run_dir", str(run_dir), "--no-progress"]
    train = subprocess.run(
        [*common, "--training_type", "Train", *TINY], capture_output=True, text=True, cwd=tmp_path
    )
    assert train.returncode == 0, train.stderr
    test = subprocess.run(
        [*common, "--training_type", "Test"], capture_output=True, text=True, cwd=tmp_path
    )
    assert test.returncode == 0, test.stderr
    assert "| pgd |" in test.stdout and (run_dir / "eval" / "metrics.json").is_file()


# A paper preset shrunk to seconds (the non-local filter costs O(pixels^2) whatever
# the width, so the local mean filter stands in); the data are a miniature CIFAR-10.
PAPER_TINY = (
    "model.width=4",
    "model.latent_dim=16",
    "model.denoise=mean",
    "train.epochs=1",
    "eval.attacks.pgd.steps=2",
    "eval.attacks.pgd20.steps=2",
    "data.verify=false",
    "data.download=false",
)
CIFAR_PRESET = str(ROOT / "configs" / "cifar10-osdn-pgd.yaml")


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """``osad train --config configs/cifar10-osdn-pgd.yaml split=2 --data-root DIR``."""
    from tests.data.miniature import write_cifar10

    base = tmp_path_factory.mktemp("paper")
    data_root, out = base / "data", base / "run"
    write_cifar10(data_root)
    # The flag wins over data.root from the config or an override.
    options = ["--out", str(out), "--no-progress", "--data-root", str(data_root)]
    argv = ["train", *options, "--config", CIFAR_PRESET, "split=2", "data.root=/nonexistent"]
    with one_torch_thread():
        assert main([*argv, *PAPER_TINY]) == 0
    return out, data_root


@pytest.mark.slow
def test_paper_preset_starts_a_real_run(paper_run):
    out, data_root = paper_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["name"] == "cifar10" and saved["data"]["split"] == 2
    assert saved["data"]["root"] == str(data_root)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 1 and history[-1]["step"] > 0


@pytest.mark.slow
def test_moved_data_needs_the_test_time_flag(paper_run, tmp_path, capsys):
    """The run's config.yaml records the root and data.verify=false; osad test takes
    neither from it (a run directory may be someone else's), only from its flags."""
    out, data_root = paper_run
    moved = tmp_path / "moved"
    shutil.copytree(data_root, moved)
    shutil.rmtree(data_root)
    capsys.readouterr()
    assert main(["test", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"records data.root='{data_root}'" in err
    argv = ["test", str(out), "--no-progress", "--no-verify", "--data-root"]
    assert main([*argv, str(data_root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CIFAR-10 (python version) not found" in err
    assert str(data_root / "cifar-10-batches-py") in err
    assert main(["test", str(out), "--no-progress", "--data-root", str(moved)]) == 2
    assert "data.verify=false" in capsys.readouterr().err
    with one_torch_thread():
        assert main([*argv, str(moved)]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["conditions"]) == {"clean", "fgsm", "pgd", "pgd20", "ensemble"}


def test_missing_data_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", CIFAR_PRESET, "--out", str(out), "--no-progress"]
    argv += ["--data-root", str(tmp_path / "empty")]
    assert main([*argv, *PAPER_TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("osad: error: CIFAR-10 (python version) not found: expected data_batch_1")
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    assert not out.exists()


def test_default_run_directories_are_claimed_not_shared(tmp_path, monkeypatch):
    from osad.cli import _default_out
    from osad.config import make_config

    monkeypatch.chdir(tmp_path)
    config = make_config()
    first, second = _default_out(config), _default_out(config)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == f"{first.name}-2"
