"""The README's two commands are the ones CI and users run."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```bash"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    run_cmd, test_cmd = blocks[0], blocks[1]
    assert run_cmd.endswith("osad run") and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    # CI and users run every tier: `-m "not slow"` is only the inner loop.
    pyproject = (ROOT / "pyproject.toml").read_text().splitlines()
    addopts = next(line for line in pyproject if line.startswith("addopts"))
    assert "slow" not in test_cmd and "slow" not in addopts


def _figure_checker():
    spec = importlib.util.spec_from_file_location(
        "check_readme_figures", ROOT / "scripts" / "check_readme_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_has_the_rows_and_columns_the_default_run_prints():
    """A cheap staleness check: the README's table is laid out as `osad run` lays out
    today's default evaluation (every condition, every score), with no placeholder."""
    from osad.config import make_config, score_names
    from osad.eval.protocol import ENSEMBLE
    from osad.eval.report import score_label

    table = _figure_checker().readme_table()
    config = make_config()
    conditions = ["clean", *config.eval.attacks, *([ENSEMBLE] if config.eval.version else [])]
    header = ["condition", "attack", "closed-set acc"]
    assert table[0] == header + [f"AUROC {score_label(s)}" for s in score_names(config)]
    assert [row[0] for row in table[1:]] == conditions
    assert "PLACEHOLDER" not in (ROOT / "README.md").read_text()


def test_figure_checker_reports_each_differing_cell():
    checker = _figure_checker()
    readme = checker.readme_table()
    stale = [row[:] for row in readme]
    stale[3][2] = f"{float(readme[3][2]) + 0.0185:.4f}"  # issue 17's stale PGD figure
    assert checker.differences(readme, readme, 0.0) == []
    found = checker.differences(readme, stale, 0.01)
    assert len(found) == 1 and f"{readme[3][0]} / closed-set acc" in found[0]
    assert checker.differences(readme, readme[:-1], 0.0) == [
        f"row '{readme[-1][0]}' is not in the run's table"
    ]


@pytest.mark.slow
def test_readme_table_reproduces_from_a_fresh_run(tmp_path):
    """`osad run` on one thread and the AVX2 kernels (which AVX2 and AVX-512 CPUs both
    run) reproduces every cell of the README's table exactly: a stale figure fails."""
    checker = _figure_checker()
    results = checker.fresh_run(tmp_path / "run") / "eval" / "results.md"
    actual = checker.first_table(results.read_text())
    assert checker.differences(checker.readme_table(), actual, 0.0) == []
