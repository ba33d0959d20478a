"""An osdn-caml run end to end: the peer network is saved with the run, checkpointed,
resumed exactly and tested alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from osad.checkpoint import CheckpointStore, load_model, read_recipe, read_weights
from osad.cli import main
from osad.rundir import RunDir
from tests.conftest import RESUMABLE, TINY, one_torch_thread

# Clean and FGSM conditions scored by MSP only: the test is about the peer, not the protocol.
CAML = (*TINY, "method=osdn-caml", "model.denoise=cbam", "eval.scores=[msp]")
FGSM_ONLY = "eval.attacks={fgsm: {name: fgsm, eps: 32}}"


@pytest.fixture(scope="module")
def caml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "caml"
    with one_torch_thread():
        assert main(["train", "--out", str(out), "--no-progress", *CAML, FGSM_ONLY]) == 0
    return out


@pytest.mark.slow
def test_the_peer_is_saved_with_its_recipe(caml_run):
    name, kwargs = read_recipe(caml_run / "peer.safetensors")
    _, osdn = read_recipe(caml_run / "model.safetensors")
    assert name == "openset-resnet" and kwargs["denoise_places"] == []
    assert not kwargs["decoder"] and not kwargs["rotation_head"]
    assert osdn["denoise"] == "cbam" and osdn["denoise_places"] == [0, 1, 2, 3, 4]
    peer = load_model(caml_run / "peer.safetensors")
    assert peer(torch.rand(2, 1, 8, 8)).shape == (2, 6)
    (record,) = [json.loads(line) for line in (caml_run / "history.jsonl").read_text().splitlines()]
    for key in ("train_kl", "train_peer_loss", "train_peer_ce", "train_peer_kl"):
        assert record[key] > 0, key
    assert 0 <= record["val_peer_accuracy"] <= 1


@pytest.mark.slow
def test_peer_is_tested_on_its_own(caml_run, capsys):
    with one_torch_thread():
        assert main(["test", str(caml_run), "--no-progress", "--model", "peer"]) == 0
        assert main(["test", str(caml_run), "--no-progress"]) == 0
    assert f"results in {caml_run / 'eval-peer'}" in capsys.readouterr().out
    title = "osdn-caml peer network on digits split 0"
    assert title in (caml_run / "eval-peer" / "results.md").read_text()
    peer = json.loads((caml_run / "eval-peer" / "metrics.json").read_text())
    osdn = json.loads((caml_run / "eval" / "metrics.json").read_text())
    assert set(peer["conditions"]) == set(osdn["conditions"]) == {"clean", "fgsm"}
    assert peer["conditions"]["clean"] != osdn["conditions"]["clean"]
    assert peer["evaluated"]["model"]["name"] == "peer"
    assert peer["evaluated"]["model"]["weights"] == "peer.safetensors"
    # A second test of the peer reuses its results and writes nothing.
    before = (caml_run / "eval-peer" / "metrics.json").read_bytes()
    assert main(["test", str(caml_run), "--no-progress", "--model", "peer"]) == 0
    assert (caml_run / "eval-peer" / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_run_without_a_peer_says_so(caml_run, tmp_path, capsys):
    run = tmp_path / "no-peer"
    shutil.copytree(caml_run, run)
    (run / "peer.safetensors").unlink()
    assert main(["test", str(run), "--no-progress", "--model", "peer"]) == 2
    assert "only osdn-caml runs train a peer network" in capsys.readouterr().err
    assert main(["test", str(run), "--model", "other"]) == 2
    assert "invalid choice: 'other'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_caml(tmp_path_factory):
    """An osdn-caml run of RESUMABLE trained without interruption."""
    out = tmp_path_factory.mktemp("reference") / "caml"
    with one_torch_thread():
        assert main(["train", "--out", str(out), "--no-progress", *RESUMABLE_CAML]) == 0
    return out


RESUMABLE_CAML = (*RESUMABLE, "method=osdn-caml", "model.denoise=cbam")


def _weights(path):
    return read_weights(path)[0]


@pytest.mark.slow
def test_checkpoints_hold_the_peer_and_its_optimizer(finished_caml):
    latest = CheckpointStore(RunDir(finished_caml), keep=3).latest()
    assert (latest / "peer.safetensors").is_file()
    state = json.loads((latest / "state.json").read_text())
    assert state["peer_optimizer"]["type"] == "Adam" and state["peer_optimizer"]["state"]
    final, saved = (
        _weights(finished_caml / "peer.safetensors"),
        _weights(latest / "peer.safetensors"),
    )
    assert all(torch.equal(final[k], saved[k]) for k in final)


@pytest.mark.slow
def test_resumed_caml_run_ends_bit_identical_peer_included(finished_caml, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(finished_caml, run)
    (run / "model.safetensors").unlink()
    (run / "peer.safetensors").unlink()
    with one_torch_thread():
        assert main(["train", "--resume", str(RunDir(run).checkpoint(10)), "--no-progress"]) == 0
    for name in ("model.safetensors", "peer.safetensors"):
        got, expected = _weights(run / name), _weights(finished_caml / name)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    history = (run / "history.jsonl").read_text()
    assert history == (finished_caml / "history.jsonl").read_text()


def test_non_finite_peer_loss_names_the_peer_update(tmp_path, monkeypatch, capsys):
    from osad.methods import terms

    calls = {"n": 0}
    original = terms.softened_kl

    def poisoned(student, teacher, temperature=1.0):
        calls["n"] += 1  # two calls a step: OSDN's term, then the peer's
        value = original(student, teacher, temperature)
        return value * float("nan") if calls["n"] == 4 else value

    monkeypatch.setattr(terms, "softened_kl", poisoned)
    run = tmp_path / "nan"
    with one_torch_thread():
        assert main(["train", "--out", str(run), "--no-progress", *RESUMABLE_CAML]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at epoch 1, step 2 (batch 2 of 6), peer update" in err
    assert f"the last good checkpoint {RunDir(run).checkpoint(1)} is kept" in err
