"""Compare the README's `osad run` table with a fresh run's, cell by cell.

The README's result table must come from the current code (issue 17, item 8).
This script trains and evaluates the embedded default exactly as the README
says (``osad run`` under :data:`README_ENV`: one thread, AVX2 kernels) and
compares every cell of the README's table with the fresh ``eval/results.md``, or
compares a run that exists already (``--run RUN_DIR``, cheap). It prints each cell
that differs and exits 1 if any differs by more than ``--tolerance`` (absolute,
default 0: the same thread count and kernels reproduce the table to the last digit).

    python scripts/check_readme_figures.py              # train + evaluate (a few minutes)
    python scripts/check_readme_figures.py --run runs/x # compare an existing run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## What `osad run` prints"
# The README's table comes from one thread on the AVX2 kernels, which every x86-64 CPU
# since 2013 runs: the AVX-512 kernels round differently, and 20 epochs of adversarial
# training turn that into differences of up to 0.09 AUROC (docs/performance.md).
README_ENV = {
    "OMP_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def first_table(text: str, after: str = "") -> list[list[str]]:
    """The cells of the first Markdown table in ``text`` (below the line ``after``)."""
    lines = text.splitlines()
    start = lines.index(after) + 1 if after else 0
    rows: list[list[str]] = []
    for line in lines[start:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):  # skip the |---| line
                rows.append(cells)
        elif rows:
            break
    if not rows:
        raise SystemExit(f"no Markdown table found{f' below {after!r}' if after else ''}")
    return rows


def readme_table(readme: Path = ROOT / "README.md") -> list[list[str]]:
    return first_table(readme.read_text(), HEADING)


def differences(expected: list[list[str]], actual: list[list[str]], tolerance: float) -> list[str]:
    """One line per cell of ``expected`` that ``actual`` does not reproduce."""
    if expected[0] != actual[0]:
        return [f"columns differ: README {expected[0]} vs run {actual[0]}"]
    found = {row[0]: row for row in actual[1:]}
    out = []
    for row in expected[1:]:
        other = found.get(row[0])
        if other is None:
            out.append(f"row '{row[0]}' is not in the run's table")
            continue
        for column, want, got in zip(expected[0], row, other, strict=True):
            try:
                off = abs(float(want) - float(got)) > tolerance
            except ValueError:
                off = want != got
            if off:
                out.append(f"{row[0]} / {column}: README {want}, run {got}")
    out += [
        f"row '{name}' of the run is not in the README"
        for name in found.keys() - {row[0] for row in expected[1:]}
    ]
    return out


def fresh_run(out: Path) -> Path:
    env = {**os.environ, **README_ENV}
    subprocess.run(["osad", "run", "--no-progress", "--out", str(out)], check=True, env=env)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="compare this run's eval/results.md")
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or fresh_run(Path(tmp) / "run")
        actual = first_table((run / "eval" / "results.md").read_text())
    problems = differences(readme_table(), actual, args.tolerance)
    for line in problems:
        print(line)
    print(f"{len(problems)} cell(s) differ (tolerance {args.tolerance})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
