"""Weights files and training checkpoints that cannot lie.

Weights file (``model.safetensors``): the state dict in safetensors with, in its
metadata, the recipe ``(model_name, model_kwargs)`` that rebuilds the model,
the format version, and ``sha256``: a digest of the recipe and of every
tensor's name, dtype, shape and bytes. Loading never yields a randomly
initialised or silently damaged model: a missing, truncated or corrupted file,
a file of another format version, or weights whose names or shapes do not
match the architecture raise :class:`~osad.errors.CheckpointError` naming the
problem (and the mismatching parameter).

Training checkpoints (:class:`CheckpointStore`): one directory per checkpoint
holding any set of files plus ``manifest.json`` (the size and sha256 of each),
written into a temporary directory, flushed, renamed into place; the
``latest`` pointer is replaced atomically after that, and older checkpoints
beyond ``keep`` are deleted last. A crash at any moment leaves ``latest``
naming a complete checkpoint; reading one verifies every file first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from osad import __version__, storage
from osad.errors import CheckpointError, StorageError, require
from osad.models import check_recipe, create_model
from osad.rundir import RunDir, plain_name_inside

MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------
# The checkpoint section of a configuration


@dataclass
class CheckpointConfig:
    """When training writes checkpoints into ``RUN_DIR/checkpoints`` (the ``checkpoint``
    section of both tasks; see docs/reliability.md). An anti-spoofing run's step is one
    meta-learning iteration, its epoch the ``train.eval_every`` iterations that end with
    a validation record.

    SIGINT and SIGTERM always write one before training stops."""

    # Every N optimisation steps (0: never mid-epoch).
    every_steps: int = 0
    # At the end of every N-th epoch and of the last one (0: never at epoch ends).
    every_epochs: int = 1
    # How many of the newest checkpoints are kept.
    keep: int = 2


def check_checkpoint_section(c: CheckpointConfig) -> None:
    """Check the ``checkpoint`` section ``c``; one-line :class:`~osad.errors.ConfigError`
    if wrong."""
    require(c.every_steps >= 0, f"'checkpoint.every_steps' must be >= 0, got {c.every_steps}")
    require(c.every_epochs >= 0, f"'checkpoint.every_epochs' must be >= 0, got {c.every_epochs}")
    require(c.keep >= 1, f"'checkpoint.keep' must be >= 1, got {c.keep}")


# ---------------------------------------------------------------------------
# Weights files


def _digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """sha256 over the metadata and each tensor's name, dtype, shape and bytes, by name."""
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """A self-verifying safetensors file: ``metadata`` plus format version and digest."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format_version": str(storage.FORMAT_VERSION), "osad_version": __version__, **metadata}
    meta["sha256"] = _digest(tensors, meta)
    return _sorted_header(save_safetensors(tensors, meta))


def _sorted_header(data: bytes) -> bytes:
    """``data`` with its safetensors JSON header written with sorted keys.

    safetensors writes the ``__metadata__`` map in an order that changes from process
    to process (a hash map), so equal weights would give files, and ``weights_sha256``
    figures, that differ between runs. Keys sorted and the header padded with spaces to
    its old length (the format allows trailing spaces), the bytes depend on the
    contents alone; the tensor data and its offsets are untouched.
    """
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = text.encode()
    if len(encoded) > size:  # cannot happen: the same keys and values, reordered
        raise StorageError("internal error: the sorted safetensors header grew")
    return data[:8] + encoded.ljust(size, b" ") + data[8 + size :]


def parse_tensors(data: bytes, source: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a file made by :func:`tensors_bytes`, verified."""
    try:
        tensors = load_safetensors(data)
        (header_size,) = struct.unpack("<Q", data[:8])
        metadata = dict(json.loads(data[8 : 8 + header_size]).get("__metadata__") or {})
    except (SafetensorError, ValueError, struct.error) as exc:
        raise CheckpointError(
            f"{source} is truncated or corrupted: not a readable safetensors file ({exc})"
        ) from None
    intact = metadata.pop("sha256", None) == _digest(tensors, metadata)
    if intact or metadata.get("format_version") != str(storage.FORMAT_VERSION):
        # Another format may digest differently: name the version, not a corruption.
        storage.check_format(metadata.get("format_version"), source, CheckpointError)
    if not intact:
        raise CheckpointError(f"{source} is corrupted: its sha256 does not match its contents")
    return tensors, metadata


def weights_bytes(model: nn.Module, name: str, kwargs: dict[str, Any]) -> bytes:
    """The weights file of ``model`` with the recipe (``name``, ``kwargs``) that rebuilds it."""
    recipe = {"model_name": name, "model_kwargs": json.dumps(kwargs, sort_keys=True)}
    return tensors_bytes(model.state_dict(), recipe)


def save_model(path: str | Path, model: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    """Write the weights file of ``model`` to ``path`` atomically."""
    storage.write_atomic(path, weights_bytes(model, name, kwargs))


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], tuple[str, dict[str, Any]]]:
    """(state dict, recipe) of the weights file at ``path``, verified against its sha256."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc.strerror}") from None
    return parse_weights(data, f"weights file {path}")


def parse_weights(data: bytes, source: str) -> tuple[dict[str, Tensor], tuple[str, dict[str, Any]]]:
    """(state dict, recipe) of a weights file's bytes, the recipe a JSON object (see
    :func:`load_model` for one that is built)."""
    tensors, metadata = parse_tensors(data, source)
    if "model_name" not in metadata or "model_kwargs" not in metadata:
        raise CheckpointError(f"{source} does not say which model it holds")
    name = metadata["model_name"]
    try:
        kwargs = json.loads(metadata["model_kwargs"])
    except ValueError:
        raise CheckpointError(f"{source}: its recipe 'model_kwargs' is not JSON") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: its recipe 'model_kwargs' must be a JSON object")
    return tensors, (name, kwargs)


def read_recipe(path: str | Path) -> tuple[str, dict[str, Any]]:
    """The (name, kwargs) stored with the weights at ``path``."""
    return read_weights(path)[1]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every dotted key (sorted) whose value differs between two (nested) settings after
    a JSON round trip, with its saved and current values (None where a side lacks it)."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current)))
    return [
        (key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)
    ]


def first_difference(saved: dict[str, Any], current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """None if two (nested) settings agree after a JSON round trip, else the first
    dotted key that differs with its saved and current values (:func:`differences`)."""
    found = differences(saved, current)
    return found[0] if found else None


def _first_and_count(names: list[str]) -> str:
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def load_state_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model``, refusing any missing, unexpected or misshapen tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {_first_and_count(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first_and_count(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not match the architecture: " + "; ".join(problems))
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source} does not match the architecture: {key} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the verified weights at ``path`` into ``model`` (names and shapes must match)."""
    state, _ = read_weights(path)
    return load_state_checked(model, state, f"weights file {path}")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model stored at ``path`` and load its weights; returns it in eval mode.

    The recipe is checked first (:func:`osad.models.check_recipe`): one that names an
    unknown model or keyword, or would build an absurdly large model, is refused
    without allocating it."""
    state, (name, kwargs) = read_weights(path)
    check_recipe(name, kwargs, f"weights file {path}: its recipe", CheckpointError)
    model = create_model(name, **kwargs)
    load_state_checked(model, state, f"weights file {path}")
    return model.to(device).eval()


# ---------------------------------------------------------------------------
# Training checkpoints


class CheckpointStore:
    """The training checkpoints of a run directory (see :class:`~osad.rundir.RunDir`).

    ``save(step, files)`` writes one checkpoint, ``read(path)`` returns its
    files after checking each against the manifest, ``latest()`` is where to
    resume. ``keep`` newest checkpoints are kept.
    """

    def __init__(self, run: RunDir, keep: int) -> None:
        self.run = run
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present, ascending."""
        if not self.run.checkpoints.is_dir():
            return []
        found = (RunDir.checkpoint_step(p) for p in self.run.checkpoints.iterdir() if p.is_dir())
        return sorted(s for s in found if s is not None)

    def latest(self) -> Path | None:
        """The checkpoint the ``latest`` pointer names, or None before the first one."""
        pointer = self.run.latest_checkpoint
        if not pointer.is_file():
            return None
        plain_name_inside(self.run.checkpoints, pointer.name, str(pointer))
        try:
            name = pointer.read_bytes()[:256].decode().strip()
        except (OSError, UnicodeDecodeError):
            raise CheckpointError(
                f"{pointer} is unreadable: it must hold a checkpoint name"
            ) from None
        target = plain_name_inside(self.run.checkpoints, name, str(pointer))
        if RunDir.checkpoint_step(target) is None or not target.is_dir():
            raise CheckpointError(f"{pointer} names a checkpoint that does not exist: {target}")
        return target

    def save(self, step: int, files: dict[str, bytes]) -> Path:
        """Write checkpoint ``step`` holding ``files``; on failure the previous ones are intact."""
        final = self.run.checkpoint(step)
        tmp = final.with_name(f".tmp-{final.name}")
        try:
            self.run.checkpoints.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            manifest: dict[str, Any] = {
                "format_version": storage.FORMAT_VERSION,
                "osad_version": __version__,
                "step": step,
                "files": {},
            }
            for name, data in files.items():
                storage.write_synced(tmp / name, data)
                manifest["files"][name] = {"bytes": len(data), "sha256": storage.sha256_bytes(data)}
            storage.write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
            storage.fsync_dir(tmp)
            if final.exists():  # left by an abandoned continuation (see discard_after)
                shutil.rmtree(final)
            os.rename(tmp, final)
            storage.fsync_dir(self.run.checkpoints)
            storage.write_atomic(self.run.latest_checkpoint, final.name + "\n")
        except (OSError, StorageError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            previous = self.latest()
            kept = (
                f"the previous checkpoint {previous} is intact"
                if previous is not None
                else "no earlier checkpoint exists"
            )
            raise StorageError(f"cannot write checkpoint {final}: {reason}; {kept}") from None
        self._prune()
        return final

    def _prune(self) -> None:
        # A failed deletion only costs disk space; it must not stop training.
        for step in self.steps()[: -self.keep]:
            shutil.rmtree(self.run.checkpoint(step), ignore_errors=True)

    def discard_after(self, step: int) -> None:
        """Delete checkpoints newer than ``step`` and unfinished writes: resuming from
        ``step`` abandons them, and pruning must never prefer them to new ones."""
        for newer in (s for s in self.steps() if s > step):
            shutil.rmtree(self.run.checkpoint(newer))
        if self.run.checkpoints.is_dir():
            for partial in self.run.checkpoints.glob(".tmp-*"):
                shutil.rmtree(partial, ignore_errors=True)

    def read(self, path: Path) -> dict[str, bytes]:
        """The files of checkpoint ``path``, each verified against the manifest."""
        plain_name_inside(self.run.checkpoints, path.name, f"checkpoint {path}")
        if not path.is_dir():
            raise CheckpointError(f"checkpoint not found: {path}")
        manifest_path = plain_name_inside(path, MANIFEST, f"checkpoint {path}")
        try:
            manifest = json.loads(manifest_path.read_text())
            listed = {
                plain_name_inside(path, name, str(manifest_path)): (
                    int(entry["bytes"]),
                    str(entry["sha256"]),
                )
                for name, entry in manifest["files"].items()
            }
        except FileNotFoundError:
            problem = f"is incomplete: {MANIFEST} is missing"
            raise CheckpointError(f"checkpoint {path} {problem}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            problem = f"is corrupted: unreadable {MANIFEST}"
            raise CheckpointError(f"checkpoint {path} {problem}") from None
        storage.check_format(manifest.get("format_version"), f"checkpoint {path}", CheckpointError)
        files = {}
        for file, (size, digest) in listed.items():
            name = file.name
            if not file.is_file():
                raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
            data = file.read_bytes()
            if len(data) != size:
                raise CheckpointError(
                    f"checkpoint {path} is truncated or corrupted: {name} has {len(data)} bytes, "
                    f"the manifest says {size}"
                )
            if storage.sha256_bytes(data) != digest:
                raise CheckpointError(
                    f"checkpoint {path} is corrupted: {name} does not match its sha256"
                )
            files[name] = data
        return files
