"""Checks of the images and labels given to osad's Python API (models, attacks).

Images are floating-point tensors of shape (B, C, H, W) with values in [0, 1]
(normalisation is the model's first layer); labels are integer class indices
of shape (B,). A violation raises :class:`~osad.errors.InputError` naming what
was expected and what came.

Checking the value range reads the tensor, which on a GPU waits for the device.
Code that has already checked its inputs (the attack engine between its steps,
the training loop, whose data was checked once) runs under
:func:`inputs_checked`, inside which the range checks are skipped; shape and
dtype checks cost nothing and always run.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor

from osad.errors import InputError

_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("osad_checked", default=False)


@contextlib.contextmanager
def inputs_checked() -> Iterator[None]:
    """Skip the value-range checks inside this block: the caller has made them."""
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def _range_check_due() -> bool:
    return not torch.compiler.is_compiling() and not _CHECKED.get()


def check_images(
    x: object,
    *,
    name: str = "images",
    channels: int | None = None,
    size: int | None = None,
) -> None:
    """``x`` must be float (B, C, H, W) in [0, 1]; ``channels`` and square ``size`` if given."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    expected = f"(batch, {channels or 'C'}, {size or 'H'}, {size or 'W'})"
    if (
        x.dim() != 4
        or (channels is not None and x.shape[1] != channels)
        or (size is not None and tuple(x.shape[-2:]) != (size, size))
    ):
        raise InputError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        hint = "; convert uint8 images with osad.data.to_float" if x.dtype == torch.uint8 else ""
        raise InputError(
            f"{name} must be floating point with values in [0, 1], got {x.dtype}{hint}"
        )
    if x.numel() and x.device.type != "meta" and _range_check_due():
        low, high = (v.item() for v in torch.aminmax(x.detach()))
        if not (low >= 0.0 and high <= 1.0):  # NaN fails both comparisons: refused
            hint = "; divide images in 0..255 by 255" if 1.0 < high <= 255.0 else ""
            raise InputError(
                f"{name} must have values in [0, 1] (the model normalises them itself), "
                f"got min {low:g} and max {high:g}{hint}"
            )


def check_labels(
    y: object, batch: int, *, name: str = "labels", allow_unknown: bool = False
) -> None:
    """``y`` must be a (batch,) integer tensor of class indices ``>= 0``; with
    ``allow_unknown`` also ``-1``, the label of an unknown-class image in
    :class:`~osad.data.OpenSetData` (which the detector-score objectives read)."""
    if not isinstance(y, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if tuple(y.shape) != (batch,):
        raise InputError(f"{name} must have shape ({batch},), one per image, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"{name} must be integer class indices, got {y.dtype}")
    lowest = -1 if allow_unknown else 0
    if batch and _range_check_due() and (y < lowest).any().item():
        if allow_unknown:
            raise InputError(
                f"{name} must be class indices >= 0, or -1 for an unknown-class image, "
                f"got {y.min().item()}"
            )
        raise InputError(
            f"{name} must be class indices >= 0, got {y.min().item()}; unknown-class images "
            "have no label: pass None to attack the model's own prediction, or attack a "
            "detector score (osad.attacks.score_objective), which reads the label -1"
        )
