"""Models from outside osad: a Python factory plus a safetensors weights file.

``osad evaluate --model SPEC --weights FILE`` builds the network by calling a
factory without arguments, then loads the weights into it:

* ``SPEC`` is ``package.module:function`` (imported from ``sys.path``, which
  includes the current directory) or ``path/to/file.py:function`` (run from
  that file);
* ``FILE`` is a safetensors file of the model's ``state_dict()``, e.g. written
  by ``safetensors.torch.save_file(model.state_dict(), "model.safetensors")``,
  or an osad weights file (then also verified against its stored digest).
  Pickle files (``torch.save``) are refused: unpickling runs arbitrary code.
  Weights whose names or shapes do not match the model are refused naming the
  first mismatch, so a wrong file never yields a randomly initialised model.

Every failure is a one-line :class:`~osad.errors.InputError` (or
:class:`~osad.errors.CheckpointError` for the weights).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from osad.checkpoint import load_state_checked, parse_tensors
from osad.errors import CheckpointError, InputError, did_you_mean
from osad.storage import sha256_bytes

SPEC_FORM = "module:function or path/to/file.py:function"


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``spec`` (``module:function`` or ``file.py:function``)."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr or not attr.isidentifier():
        raise InputError(f"--model must be {SPEC_FORM}, got {spec!r}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _module_from_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise InputError(
                f"cannot import module {where!r} of --model {spec}: {exc}; "
                "give a file path (path/to/file.py:function) or add its folder to PYTHONPATH"
            ) from None
        except Exception as exc:
            raise InputError(f"importing {where} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise InputError(
            f"{where} has no function {attr!r}{did_you_mean(attr, defined)}; "
            f"it defines: {', '.join(sorted(defined)) or 'nothing callable'}"
        )
    if not callable(factory):
        raise InputError(f"{where}:{attr} is a {type(factory).__name__}, not a function")
    return factory


def _module_from_file(path: Path):
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    # The file's stem names its module (and its classes' __module__, which metrics.json
    # records), unless a module of that name is loaded already.
    name = path.stem
    if not name.isidentifier() or name in sys.modules:
        name = f"osad_user_model_{sha256_bytes(str(path.resolve()).encode())[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path} is not a Python file osad can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling inside the file look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise InputError(f"running {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def build_model(spec: str) -> nn.Module:
    """Call the factory ``spec`` without arguments; it must return an ``nn.Module``."""
    factory = load_factory(spec)
    try:
        model = factory()
    except Exception as exc:
        raise InputError(f"--model {spec}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model {spec}() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _is_pickle(data: bytes) -> bool:
    # torch.save writes a zip archive (PK..) or, with the legacy format, a raw pickle
    # (protocol 2+ starts with 0x80).
    return data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"


def load_weights_file(model: nn.Module, path: str | Path) -> str:
    """Load the safetensors weights at ``path`` into ``model``; return the file's sha256.

    Raises :class:`~osad.errors.CheckpointError` for a missing, pickle, unreadable or
    corrupted file, and for weights that do not match the model's parameters and
    buffers (naming the first mismatch).
    """
    path = Path(path)
    source = f"weights file {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{source} not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {source}: {exc.strerror}") from None
    if _is_pickle(data):
        raise CheckpointError(
            f"{source} is a pickle (torch.save) file, which osad never loads (unpickling runs "
            "arbitrary code); save the weights with safetensors.torch.save_file("
            "model.state_dict(), 'model.safetensors')"
        )
    try:
        state = load_safetensors(data)
        (header_size,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{source} is not a readable safetensors file ({exc})") from None
    if "sha256" in metadata and "format_version" in metadata:
        state, _ = parse_tensors(data, source)  # an osad weights file: verify its digest
    load_state_checked(model, state, source)
    return sha256_bytes(data)
