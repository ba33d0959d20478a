"""Sweeps: many runs (methods x splits) from one preset, resumable, summarised over splits.

See docs/results-digits.md for the digits comparison it produces.
"""

from __future__ import annotations

from osad.sweep.figures import write_figures
from osad.sweep.runner import RunsFailed, Step, SweepRun, is_finished, plan, run_sweep
from osad.sweep.spec import FigureSpec, Sweep, SweepMethod, load_sweep
from osad.sweep.summary import summarize, summary_markdown, write_summary

__all__ = [
    "FigureSpec",
    "RunsFailed",
    "Step",
    "Sweep",
    "SweepMethod",
    "SweepRun",
    "is_finished",
    "load_sweep",
    "plan",
    "run_sweep",
    "summarize",
    "summary_markdown",
    "write_figures",
    "write_summary",
]
