"""A user's photographs read as the service reads uploads, bad files skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.common.images import image_files, read_images


def test_bad_and_vanished_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "folder.jpg").mkdir()
    paths = image_files(tmp_path)
    assert [p.name for p in paths] == ["empty.jpg", "good.png", "notes.jpg"]
    vanished = tmp_path / "removed-after-listing.jpg"  # an OSError, not a decode error
    with caplog.at_level(logging.WARNING, logger="models.common.images"):
        read = list(read_images([*paths, vanished]))
    assert [p.name for p, _ in read] == ["good.png"]
    assert np.all(read[0][1] == 255)  # transparent: white, as the service composites it
    skipped = {r.getMessage().split(":")[0] for r in caplog.records}
    assert skipped == {f"skipped {tmp_path / n}" for n in ("empty.jpg", "notes.jpg")} | {
        f"skipped {vanished}"
    }
