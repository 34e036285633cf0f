"""The kill-during-saves check end to end at a token load: the server is killed while
saving, the file is read back, and the counts add up. The figures come from a full run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import kill_during_saves

pytestmark = pytest.mark.slow


def test_a_killed_round_is_read_back_and_reported(tmp_path: Path) -> None:
    argv = ["--rounds", "1", "--clients", "2", "--kill-window", "1.0", "1.5"]
    assert kill_during_saves.main([*argv, "--out", str(tmp_path)]) == 0
    (done,) = json.loads((tmp_path / "kill_during_saves.json").read_text())
    assert done["acknowledged"] > 0 and done["integrity"] == "ok"
    assert done["failed_requests"] == 2  # each saver stopped at the kill
    assert done["acknowledged_missing"] == 0
    assert done["stored"] == done["acknowledged"] + done["stored_unacknowledged"]
    markdown = (tmp_path / "kill_during_saves.md").read_text()
    assert "--kill-window 1 1.5" in markdown and "\n| 1 | " in markdown


def test_a_missing_acknowledged_record_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit status is the check: a round that lost an acknowledged record fails."""
    lost = kill_during_saves.Round(1.0, 10, 2, 9, 1, 0, "ok")
    monkeypatch.setattr(kill_during_saves, "one_round", lambda *args: lost)
    assert kill_during_saves.main(["--rounds", "1", "--out", str(tmp_path)]) == 1
