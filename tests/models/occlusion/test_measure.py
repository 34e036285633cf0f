"""models/occlusion/measure.py and the occluded-only verification of evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.occlusion.evaluate import pair_scores
from models.occlusion.measure import train_config_of
from models.occlusion.train import TrainConfig

REPOSITORY = Path(__file__).resolve().parents[3] / "models" / "repository"


def test_the_training_config_is_rebuilt_from_the_recorded_command() -> None:
    config = json.loads((REPOSITORY / "occlusion" / "1" / "config.json").read_text())
    rebuilt = train_config_of(config)
    assert rebuilt["steps"] == 1400 and rebuilt["eval_every"] == 200
    assert rebuilt["seed"] == TrainConfig().seed and rebuilt["synth"]
    with pytest.raises(SystemExit, match="not an occlusion training command"):
        train_config_of({"training": {"command": "python -m models.gender.train --out x"}})


def test_occluded_only_pairs_leave_out_the_clean_copies_and_each_sample_itself() -> None:
    identities = np.array([0, 0, 1, 1])
    clean = np.eye(4)
    occluded = np.eye(4) * 2 + 0.1  # sample i's copy scores 2.1 with itself, 0.1 with others
    same, diff = pair_scores(clean, occluded, identities)
    assert sorted(same.tolist()) == [0.1] * 4 and len(diff) == 8  # the diagonal left out
    columns = np.array([True, False, True, False])  # copies 1 and 3 are clean
    same, diff = pair_scores(clean, occluded, identities, columns)
    # Same pairs: clean 1 with copy 0, clean 3 with copy 2; different: 2 rows x 2 columns.
    assert sorted(same.tolist()) == [0.1, 0.1] and len(diff) == 4
