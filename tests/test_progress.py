"""Progress bars on stderr for the long commands, and --no-progress on every command."""

from __future__ import annotations

import re

import pytest

from osad.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = (
    "model.width=2",
    "model.latent_dim=8",
    "train.epochs=1",
    "train.batch_size=128",
    "train.attack.steps=1",
    "eval.attacks.pgd.steps=1",
    "eval.scores=[msp]",
    "eval.eps_sweep=[0,16]",
)
# A tqdm bar with a total: "desc:  50%|#####     | 1/2 [00:01<00:01, ...]" (elapsed<ETA).
BAR = re.compile(r"\| *\d+/\d+ \[\d\d:\d\d<")


def _stderr(capsys, argv: list[str], status: tuple[int, ...] = (0,)) -> str:
    capsys.readouterr()
    assert main(argv) in status
    return capsys.readouterr().err


@pytest.mark.slow
def test_no_progress_hides_every_bar_and_bars_show_otherwise(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _stderr(capsys, ["train", "--out", run, "--no-progress", *TINY]) == ""
    assert _stderr(capsys, ["test", run, "--no-progress"]) == ""
    check = ["check", run, "--images", "24", "--queries", "5"]
    verdicts = (0, 1)  # a check may fail on a one-epoch model; only the output matters here
    assert _stderr(capsys, [*check, "--no-progress"], verdicts) == ""
    out = str(tmp_path / "report")
    assert _stderr(capsys, ["report", run, "--out", out, "--no-progress"]) == ""

    tested = _stderr(capsys, ["test", run, "--force"])
    # Per condition (with an ETA over the conditions) and per attack pass.
    assert re.search(r"evaluate: .*\d+/3 \[\d\d:\d\d<", tested)
    assert "pgd: PGD linf" in tested and "pgd test" in tested
    assert re.search(r"eps sweep figure: .*\d+/2 \[\d\d:\d\d<", tested)
    checked = _stderr(capsys, [*check, "--force"], verdicts)
    assert re.search(r"check: .*\d+/12 \[\d\d:\d\d<", checked)
    assert "Square" in checked and "score" in checked
    trained = _stderr(capsys, ["train", "--out", str(tmp_path / "again"), *TINY])
    assert BAR.search(trained)
