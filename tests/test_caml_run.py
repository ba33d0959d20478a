"""An osdn-caml run end to end: the peer network is saved with the run and tested alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from osad.checkpoint import load_model, read_recipe
from osad.cli import main
from tests.conftest import TINY, one_torch_thread

# Clean and FGSM conditions scored by MSP only: the test is about the peer, not the protocol.
CAML = (*TINY, "method=osdn-caml", "model.denoise=cbam", "eval.scores=[msp]")
FGSM_ONLY = "eval.attacks={fgsm: {name: fgsm, eps: 32}}"


@pytest.fixture(scope="module")
def caml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "caml"
    with one_torch_thread():
        assert main(["train", "--out", str(out), "--no-progress", *CAML, FGSM_ONLY]) == 0
    return out


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
    # A second test of the peer does not overwrite its results.
    assert main(["test", str(caml_run), "--no-progress", "--model", "peer"]) == 2
    assert "eval-peer already holds results" in capsys.readouterr().err


def test_run_without_a_peer_says_so(caml_run, tmp_path, capsys):
    run = tmp_path / "no-peer"
    shutil.copytree(caml_run, run)
    (run / "peer.safetensors").unlink()
    assert main(["test", str(run), "--no-progress", "--model", "peer"]) == 2
    assert "only osdn-caml runs train a peer network" in capsys.readouterr().err
    assert main(["test", str(run), "--model", "other"]) == 2
    assert "invalid choice: 'other'" in capsys.readouterr().err
