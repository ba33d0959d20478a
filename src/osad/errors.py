"""Typed errors raised at osad's boundaries.

Every error a user can cause derives from :class:`OsadError`; the CLI turns it
into one line on stderr and exit status 2, the Python API lets it propagate.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from collections.abc import Iterable
from typing import Any


class OsadError(Exception):
    """Base class of the errors a user can fix by changing their input."""


class ConfigError(OsadError, ValueError):
    """A configuration key, value or override is invalid."""


class DataError(OsadError, ValueError):
    """A dataset is missing, malformed or does not match the request."""


class RunDirError(OsadError):
    """A run directory is missing, incomplete, or would be overwritten."""


class CheckpointError(OsadError):
    """Saved weights are missing, corrupted or do not match the architecture."""


class InputError(OsadError, ValueError):
    """An argument of the Python API is invalid: images of the wrong shape, dtype
    or range, labels that are not class indices, a budget out of range."""


class FitError(OsadError, ValueError):
    """An open-set score cannot be fitted on the training outputs it was given: a
    class without enough images, or a model whose outputs for a class are all equal."""


class StorageError(OsadError):
    """A file could not be written (disk full, no permission); what was written
    before is left intact."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint.

    Not an :class:`OsadError`: nothing was wrong with the input. The CLI prints
    the message and exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``; case is
    ignored (``CIFAR10`` suggests ``cifar10``)."""
    by_folded = {str(choice).casefold(): str(choice) for choice in choices}
    close = difflib.get_close_matches(str(name).casefold(), list(by_folded), n=1, cutoff=0.5)
    return f" (did you mean '{by_folded[close[0]]}'?)" if close else ""


SHOWN_CHARS = 80
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 8, 8
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS


def shown(value: Any, quoted: bool = True) -> str:
    """``value`` as an error message echoes it: its repr (``quoted=False``: its str,
    for a string), at most :data:`SHOWN_CHARS` characters, cut with ``...``.

    Reads at most a few elements of a container, so a huge value (an expanded YAML
    alias, a 4,000-digit integer) costs nothing to show."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = _REPR.repr(value) if quoted or not isinstance(value, str) else value
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with the one-line ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """A ConfigError for a name that is not among ``choices``, with a suggestion."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} '{shown(name, quoted=False)}'{did_you_mean(name, choices)}; "
        "choose one of: " + ", ".join(choices)
    )
