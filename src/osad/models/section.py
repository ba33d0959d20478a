"""Checks of a run's ``model`` section (:class:`osad.config.ModelConfig`) against the
encoder and denoiser registries."""

from __future__ import annotations

from typing import Any

from osad.errors import require, shown, unknown_name
from osad.models import DENOISERS, ENCODERS
from osad.models.denoise import denoise_forms


def check_model_section(m: Any, *, denoised: bool) -> None:
    """Check the ``model`` section ``m``; one-line :class:`~osad.errors.ConfigError` if
    wrong. ``denoised``: whether the method places denoising blocks; only then must
    ``m.denoise_places`` be places of the encoder family (a method without them
    ignores the field, so ``model.arch=madry-cnn method=plain`` needs no change of
    the default places)."""
    if m.arch not in ENCODERS:
        raise unknown_name("model.arch", m.arch, ENCODERS)
    forms = denoise_forms(m.denoise)
    for form in forms:
        if form not in DENOISERS:
            raise unknown_name("denoising form in 'model.denoise'", form, DENOISERS)
    require(
        len(set(forms)) == len(forms),
        f"'model.denoise' repeats a form: {shown(m.denoise, quoted=False)}",
    )
    require(m.width >= 2, f"'model.width' must be >= 2, got {m.width}")
    require(m.latent_dim >= 1, f"'model.latent_dim' must be >= 1, got {m.latent_dim}")
    if denoised:
        ENCODERS[m.arch].check_places(m.arch, m.denoise_places)
    require(
        len(set(m.denoise_places)) == len(m.denoise_places),
        f"'model.denoise_places' has duplicates: {shown(m.denoise_places)}",
    )
