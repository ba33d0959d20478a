"""The reuse decision of an incremental evaluation (osad.eval.settings.reusable)."""

import pytest

from osad.errors import RunDirError
from osad.eval.settings import reusable


def test_a_file_as_the_destination_is_refused_and_kept(tmp_path):
    # `osad test RUN --out notes.txt` replaced the file with a folder of results
    dest = tmp_path / "notes.txt"
    dest.write_text("precious")

    def read(path, remedy):
        raise AssertionError("nothing to read")

    with pytest.raises(RunDirError, match="exists and is not a folder"):
        reusable(dest, {"clean": {}}, force=False, read=read)
    with pytest.raises(RunDirError, match="exists and is not a folder"):
        reusable(dest, {"clean": {}}, force=True, read=read)
    assert dest.read_text() == "precious"


def test_a_missing_or_empty_destination_reuses_nothing(tmp_path):
    def read(path, remedy):
        raise AssertionError("nothing to read")

    assert reusable(tmp_path / "new", {"clean": {}}, force=False, read=read) == ([], {})
    (tmp_path / "empty").mkdir()
    assert reusable(tmp_path / "empty", {"clean": {}}, force=False, read=read) == ([], {})
