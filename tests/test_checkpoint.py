"""Weights files and training checkpoints refuse anything they cannot vouch for."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save as save_safetensors

from osad import storage
from osad.checkpoint import (
    CheckpointStore,
    load_model,
    load_weights,
    save_model,
    tensors_bytes,
)
from osad.cli import main
from osad.config import make_config
from osad.errors import CheckpointError, ConfigError, StorageError
from osad.rundir import RunDir
from osad.train.state import Network, TrainState
from tests.conftest import TINY_NET, tiny_net


@pytest.fixture
def weights_file(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_model(path, tiny_net(), "openset-resnet", TINY_NET)
    return path


def test_weights_round_trip_exactly(weights_file):
    loaded = load_model(weights_file)
    for key, value in tiny_net().state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_model(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_weights_file_is_refused(weights_file, keep):
    data = weights_file.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    weights_file.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(weights_file)


def test_every_sampled_bit_flip_in_a_weights_file_is_refused(weights_file):
    data = weights_file.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    positions = [0, 9, header_end // 2, header_end - 2, header_end, len(data) - 1]
    positions += random.Random(0).sample(range(len(data)), 40)
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 1 << (position % 8)
        weights_file.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError):
            load_model(weights_file)


def test_weights_of_another_architecture_name_the_mismatching_parameter(weights_file):
    wider = tiny_net(width=4)
    with pytest.raises(CheckpointError) as info:
        load_weights(wider, weights_file)
    assert "encoder.stem.0.weight has shape (2, 1, 3, 3), the model expects (4, 1, 3, 3)" in str(
        info.value
    )
    without_decoder = tiny_net(decoder=False)
    with pytest.raises(CheckpointError, match=r"unexpected decoder\.\S+ and \d+ more"):
        load_weights(without_decoder, weights_file)


@pytest.mark.parametrize(
    "version,message",
    [("2", "newer than this osad"), ("0", "older than this osad"), ("x", "invalid format")],
)
def test_weights_of_another_format_version_are_refused(tmp_path, version, message):
    path = tmp_path / "other.safetensors"
    recipe = {"model_name": "openset-resnet", "model_kwargs": json.dumps(TINY_NET)}
    path.write_bytes(tensors_bytes(tiny_net().state_dict(), {**recipe, "format_version": version}))
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_weights_without_format_version_are_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(save_safetensors(tiny_net().state_dict(), {"model_name": "openset-resnet"}))
    with pytest.raises(CheckpointError, match="has no format_version"):
        load_model(path)


def test_config_of_another_format_version_is_refused(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"format_version": 99, "method": "plain"}))
    with pytest.raises(ConfigError, match="format 99, newer than this osad"):
        make_config(config)


def test_a_run_config_without_format_version_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["format_version"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["test", str(run), "--no-progress"]) == 2
    assert "config.yaml has no format_version" in capsys.readouterr().err


def test_osad_test_refuses_weights_that_do_not_fit_the_run_config(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = make_config(overrides=["model.width=2", "model.latent_dim=8"])
    from osad.data import load_openset
    from osad.train import build_model_for

    data = load_openset(config.data)
    for change, message in [
        (["model.width=4"], "encoder.stem.0.weight has shape (4, 1, 3, 3), the model expects"),
        (["model.denoise=dot"], "was made with denoise='dot', the run's config gives 'gaussian'"),
    ]:
        other = make_config(overrides=["model.width=2", "model.latent_dim=8", *change])
        model, name, kwargs = build_model_for(other, data)
        save_model(run / "model.safetensors", model, name, kwargs)
        assert main(["test", str(run), "--no-progress", "--force"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


# ---------------------------------------------------------------------------
# Training checkpoints


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    store = CheckpointStore(RunDir(tmp_path / "run"), keep=2)
    for step in (1, 2, 3):
        store.save(step, {"a.bin": bytes([step]) * 100, "b.json": b'{"step": %d}' % step})
    return store


def test_store_keeps_the_newest_and_points_latest_at_the_last(store):
    assert store.steps() == [2, 3]
    assert store.latest() == store.run.checkpoint(3)
    assert store.read(store.latest())["a.bin"] == bytes([3]) * 100


@pytest.mark.parametrize("name", ["a.bin", "b.json"])
def test_truncated_checkpoint_file_is_refused(store, name):
    path = store.latest() / name
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=f"truncated or corrupted: {name} has"):
        store.read(store.latest())


@pytest.mark.parametrize("name", ["a.bin", "b.json"])
def test_bit_flipped_checkpoint_file_is_refused(store, name):
    path = store.latest() / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0b100
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"corrupted: {name} does not match its sha256"):
        store.read(store.latest())


def test_checkpoint_without_manifest_or_file_is_refused(store):
    (store.latest() / "a.bin").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: a\.bin is missing"):
        store.read(store.latest())
    (store.latest() / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: manifest\.json is missing"):
        store.read(store.latest())


def test_latest_pointing_nowhere_is_refused(store):
    shutil.rmtree(store.latest())
    with pytest.raises(CheckpointError, match="names a checkpoint that does not exist"):
        store.latest()


def test_a_failed_checkpoint_write_leaves_everything_as_it_was(store, monkeypatch):
    before = {p: p.read_bytes() for p in store.run.checkpoints.rglob("*") if p.is_file()}

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "write_synced", full_disk)
    with pytest.raises(StorageError) as info:
        store.save(4, {"a.bin": b"new"})
    assert str(info.value) == (
        f"cannot write checkpoint {store.run.checkpoint(4)}: No space left on device; "
        f"the previous checkpoint {store.run.checkpoint(3)} is intact"
    )
    after = {p: p.read_bytes() for p in store.run.checkpoints.rglob("*") if p.is_file()}
    assert after == before


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    storage.write_atomic(target, "old\n")

    def full_disk(path, data):
        path.write_bytes(data[:1])  # a partial temporary file, as a real full disk leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "write_synced", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        storage.write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]


def test_train_state_round_trip_includes_scheduler_optimizer_and_generators():
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        generators = {"g": torch.Generator().manual_seed(1)}
        state = TrainState(
            {"main": Network(model, optimizer, ("linear", {}))},
            generators,
            context={"config": {"lr": 0.1}, "data": "d", "device": "cpu"},
            scheduler=scheduler,
        )
        return state

    def steps(state, n):
        for _ in range(n):
            x = torch.randn(4, 3, generator=state.generators["g"])
            state.optimizer.zero_grad()
            state.model(x).square().mean().backward()
            state.optimizer.step()
            state.scheduler.step()
            state.finish_step({"loss": 1.0}, 4, 2)

    first = make()
    steps(first, 3)
    second = make()
    second.restore(first.files(), "test")
    assert second.step == 3 and second.meter == first.meter
    steps(first, 2)
    steps(second, 2)
    assert second.scheduler.state_dict() == first.scheduler.state_dict()
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_config_key_added_since_the_checkpoint_does_not_block_resume():
    def make(config, complete=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return TrainState(
            {"main": Network(model, torch.optim.SGD(model.parameters(), lr=0.1), ("linear", {}))},
            {},
            context={"config": config, "data": "d", "device": "cpu"},
            complete_config=complete,
        )

    written = make({"lr": 0.1}).files()  # by an osad without the key "new" (default 1)
    with_default = lambda saved: {"new": 1, **saved}  # noqa: E731
    make({"lr": 0.1, "new": 1}, with_default).restore(written, "old checkpoint")
    with pytest.raises(CheckpointError, match=r"new=1, the run's config\.yaml now has 2"):
        make({"lr": 0.1, "new": 2}, with_default).restore(written, "old checkpoint")
    with pytest.raises(CheckpointError, match="new=None"):
        make({"lr": 0.1, "new": 1}).restore(written, "old checkpoint")


def test_equal_weights_give_equal_bytes_in_every_process():
    # safetensors writes its metadata map in a per-process order; the file (and the
    # weights_sha256 osad records) must depend on the weights alone
    import subprocess
    import sys

    code = (
        "import hashlib, torch\n"
        "from osad.checkpoint import tensors_bytes\n"
        "t = {f'layer{i}.weight': torch.full((3,), float(i)) for i in range(20)}\n"
        "m = {k: v for k, v in zip('abcdefgh', '12345678')}\n"
        "print(hashlib.sha256(tensors_bytes(t, m)).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(4)
    }
    assert len(digests) == 1, digests


def test_sorted_header_files_still_load_with_their_metadata():
    from safetensors.torch import load

    from osad.checkpoint import parse_tensors, tensors_bytes

    tensors = {"b": torch.arange(5.0), "a": torch.ones(2, 3, dtype=torch.float64)}
    data = tensors_bytes(tensors, {"z": "1", "y": "2"})
    loaded = load(data)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    read, meta = parse_tensors(data, "test")
    assert meta["z"] == "1" and meta["y"] == "2"
    assert all(torch.equal(read[k], tensors[k]) for k in tensors)
