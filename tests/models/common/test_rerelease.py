"""models/common/rerelease.py: a new version with the same graph bytes and one
pre-processing change, that the service loads, and that never overwrites a version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.common.rerelease import main
from service.runtime import read_config, select_version

SOURCE = Path("models/repository/occlusion/1")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    shutil.copytree(SOURCE, tmp_path / "occlusion" / "1")
    # A letterbox model stands in: the served occlusion model crops, so give it bars.
    config_path = tmp_path / "occlusion" / "1" / "config.json"
    config = json.loads(config_path.read_text())
    config["preprocess"]["resize"] = "letterbox"
    config_path.write_text(json.dumps(config))
    return tmp_path


def test_the_new_version_has_the_same_graph_and_edge_padding(repository: Path) -> None:
    args = ["--repository", str(repository), "--model", "occlusion", "--from", "1"]
    config = main([*args, "--version", "2", "--pad", "edge", "--note", "measured: better"])
    old, new = (
        read_config(repository / "occlusion" / "1"),
        read_config(repository / "occlusion" / "2"),
    )
    assert select_version(repository / "occlusion", None).name == "2"
    assert (new.version, new.preprocess.pad, old.preprocess.pad) == ("2", "edge", "constant")
    assert new.sha256 == old.sha256 and new.file == old.file
    assert (repository / "occlusion/2" / new.file).read_bytes() == (
        repository / "occlusion/1" / old.file
    ).read_bytes()
    assert new.preprocess.model_dump(exclude={"pad"}) == old.preprocess.model_dump(exclude={"pad"})
    assert new.metrics == old.metrics and new.labels == old.labels
    released = config["released_from"]
    assert released["version"] == "1" and released["change"] == "preprocess.pad: constant -> edge"
    assert released["command"].startswith("python -m models.common.rerelease --repository ")
    card = (repository / "occlusion/2/MODEL_CARD.md").read_text()
    assert "measured: better" in card and "../1/MODEL_CARD.md" in card
    with pytest.raises(SystemExit, match="not overwritten"):
        main([*args, "--version", "2", "--pad", "edge", "--note", "again"])
    with pytest.raises(SystemExit, match="nothing would change"):
        main([*args, "--version", "3", "--pad", "constant", "--note", "no change"])
    assert not (repository / "occlusion/3").exists()
