"""``osad test`` on an anti-spoofing run is incremental (issue 17): a held-out domain
already evaluated under identical settings is reused byte for byte, a new one is
computed alone, nothing stored is lost without ``--force``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import pytest

import osad.fas.evaluate as fas_evaluate
from osad.cli import main
from tests.fas.test_cli import FAS_TINY, PRESET

pytestmark = pytest.mark.usefixtures("single_thread")

# Two sources, so that two domains are held out: phone (data.target) and cctv.
TWO_SOURCES = (*FAS_TINY, "data.sources=[studio,webcam]")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fas-incremental") / "run"
    argv = ["train", "--out", str(out), "--config", PRESET, "--no-progress", *TWO_SOURCES]
    assert main(argv) == 0
    assert main(["test", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def run(evaluated, tmp_path):
    return shutil.copytree(evaluated, tmp_path / "run")


@pytest.fixture
def scored(monkeypatch):
    """The held-out domains scored (by name) and the number of frame-scoring passes."""
    calls = {"targets": [], "passes": 0}
    target_result, frame_scores = fas_evaluate.target_result, fas_evaluate.frame_scores

    def count_target(model, name, *args, **kwargs):
        calls["targets"].append(name)
        return target_result(model, name, *args, **kwargs)

    def count_pass(*args, **kwargs):
        calls["passes"] += 1
        return frame_scores(*args, **kwargs)

    monkeypatch.setattr(fas_evaluate, "target_result", count_target)
    monkeypatch.setattr(fas_evaluate, "frame_scores", count_pass)
    return calls


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _metrics(run: Path) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())


def _test(run: Path, *args: str) -> int:
    return main(["test", str(run), "--no-progress", *args])


def test_adding_a_target_keeps_the_earlier_result_and_computes_only_the_new_one(run, scored):
    first = _metrics(run)
    assert list(first["conditions"]) == ["phone"] and first["target"] == "phone"
    settings = first["conditions"]["phone"]["settings"]
    assert settings["target"] == "phone" and settings["batch_size"] == 256
    assert settings["data"]["sources"] == ["studio", "webcam"]
    assert len(settings["model_sha256"]) == 64 and len(settings["data_fingerprint"]) == 64
    eval_dir = run / "eval"
    roc = (eval_dir / "roc.png").read_bytes()
    with h5py.File(eval_dir / "scores.h5") as f:
        phone = {k: f[k][()].tobytes() for k in ("score", "label", "video", "video_level/score")}

    assert _test(run, "eval.targets=[cctv]") == 0
    assert scored["targets"] == ["cctv"]  # phone reused, not scored again
    assert scored["passes"] == 3  # the two sources' validation frames, then cctv
    metrics = _metrics(run)
    assert list(metrics["conditions"]) == ["phone", "cctv"]
    assert json.dumps(metrics["conditions"]["phone"]) == json.dumps(first["conditions"]["phone"])
    assert metrics["conditions"]["cctv"]["settings"]["target"] == "cctv"
    assert (eval_dir / "roc.png").read_bytes() == roc
    assert (eval_dir / "roc-cctv.png").read_bytes()[:4] == b"\x89PNG"
    with h5py.File(eval_dir / "scores.h5") as f:
        assert {k: f[k][()].tobytes() for k in phone} == phone
        assert len(f["targets/cctv/score"]) == metrics["conditions"]["cctv"]["frame"]["count"]
        validation = metrics["conditions"]["cctv"]["source_validation"]["frames"]
        assert len(f["source_validation/score"]) == validation
    results = (eval_dir / "results.md").read_text()
    assert "| phone | frame |" in results and "| cctv | video |" in results

    # Identical settings again, or the run's own (cctv kept): nothing scored or written.
    before = _tree(eval_dir)
    scored["targets"].clear()
    scored["passes"] = 0
    assert _test(run, "eval.targets=[cctv]") == 0
    assert _test(run) == 0
    assert scored == {"targets": [], "passes": 0} and _tree(eval_dir) == before

    # --force recomputes every target asked for, with the same numbers.
    assert _test(run, "--force", "eval.targets=[cctv]") == 0
    assert scored["targets"] == ["phone", "cctv"]
    again = _metrics(run)
    for name in ("phone", "cctv"):
        assert again["conditions"][name] == metrics["conditions"][name]


def test_a_target_under_other_settings_is_refused_without_force(run, scored, capsys):
    before = _tree(run / "eval")
    assert _test(run, "eval.batch_size=7") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "condition 'phone'" in err
    assert "batch_size: 256 there, 7 now" in err and "--force" in err
    assert _tree(run / "eval") == before and scored["passes"] == 0
    # Results written before the settings record are not reused either.
    path = run / "eval" / "metrics.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps({"target": "phone", **document["conditions"]["phone"]}))
    assert _test(run) == 2
    assert "records no settings" in capsys.readouterr().err
    assert _test(run, "--force") == 0 and "settings" in _metrics(run)["conditions"]["phone"]
    # A damaged one is one line, and --force replaces it.
    path.write_text('{"conditions": ')
    assert _test(run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid JSON" in err and "--force" in err
    assert _test(run, "--force") == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.targets=[studio]", "'eval.targets' lists studio, which is a source (data.sources)"),
        ("eval.targets=[cctv,cctv]", "'eval.targets' has duplicates"),
        ("eval.targets=[phon]", "unknown digits domain 'phon'"),
        ("data.target=cctv", "osad test takes eval.* overrides only, not 'data.target'"),
    ],
)
def test_bad_evaluation_overrides_are_one_line(run, capsys, override, message):
    before = _tree(run / "eval")
    assert _test(run, override) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert _tree(run / "eval") == before
