"""Low-level writers every task's results share: Markdown tables, HDF5 files made in
memory, and pyplot on the file-only backend.

Low on purpose (it imports nothing from osad), so that the open-set evaluation
(:mod:`osad.eval.report`, :mod:`osad.eval.figures`) and the anti-spoofing slice
(:mod:`osad.fas.evaluate`) use the same code without one importing the other.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def h5_bytes(build: Callable[[Any], None]) -> bytes:
    """The bytes of an HDF5 file filled by ``build`` (given the open ``h5py.File``), made
    in memory: the file on disk is then written by Python
    (:func:`osad.storage.write_atomic`), so a full disk is one catchable error, never a
    crash inside the HDF5 library."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getvalue()


def pyplot():
    """pyplot on the file-only backend (no display on a compute node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
