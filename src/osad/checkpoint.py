"""Model weights in safetensors, with the (name, kwargs) that rebuild the model.

Loading never yields a randomly initialised model: a missing file, a file that
is not valid safetensors, or weights whose names or shapes do not match the
architecture raise :class:`~osad.errors.CheckpointError` naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from osad import __version__
from osad.errors import CheckpointError
from osad.models import create_model


def save_model(path: str | Path, model: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    """Write the state dict and the rebuild recipe (``name``, ``kwargs``) to ``path``."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "osad_version": __version__,
        "model_name": name,
        "model_kwargs": json.dumps(kwargs, sort_keys=True),
    }
    save_file(state, str(path), metadata=metadata)


def read_recipe(path: str | Path) -> tuple[str, dict[str, Any]]:
    """The (name, kwargs) stored with the weights at ``path``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from None
    if "model_name" not in meta or "model_kwargs" not in meta:
        raise CheckpointError(f"weights file {path} does not say which model it holds")
    return meta["model_name"], json.loads(meta["model_kwargs"])


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model``, refusing any missing, unexpected or misshapen tensor."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {unexpected[0]}"
                + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            )
        raise CheckpointError(
            f"weights in {path} do not match the architecture: " + "; ".join(parts)
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"weights in {path} do not match the architecture: {key} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model stored at ``path`` and load its weights; returns it in eval mode."""
    name, kwargs = read_recipe(path)
    model = create_model(name, **kwargs)
    load_weights(model, path)
    return model.to(device).eval()
