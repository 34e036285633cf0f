"""benchmarks/jpeg_draft_classifiers.py: both decode paths and both classifiers end to end on
a few held-out images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.jpeg_draft_classifiers import (
    ATTENTION_TEST_SEED,
    FACTOR,
    GENDER_TEST_SEED_OFFSET,
    compare,
    main,
)

# The held-out images come from the training code's generators (scikit-image photographs,
# SciPy), the training extra.
pytestmark = pytest.mark.train

COUNT = 8


def test_main_reports_both_models_and_paths_consistently(tmp_path: Path) -> None:
    returned = main(["--count", str(COUNT), "--out", str(tmp_path)])

    report = json.loads((tmp_path / "jpeg_draft_classifiers.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["count"] == COUNT
    assert list(report["models"]) == ["attention", "gender"]
    text = (tmp_path / "jpeg_draft_classifiers.md").read_text()
    assert text.startswith("# JPEG draft decoding vs full decode: attention and gender")
    for name, entry in report["models"].items():
        assert entry["held_out"]["images"] == COUNT
        assert entry["held_out"]["split"] == "test"
        assert set(entry["paths"]) == {"full", "draft"}
        assert entry["paths"]["full"]["draft"] is False
        assert entry["paths"]["draft"]["draft"] is True
        for path in entry["paths"].values():
            assert 0.0 <= path["accuracy"] <= 1.0
            assert path["accuracy"] == path["correct"] / COUNT
            assert path["decode_letterbox_ms_median"] > 0
            # JPEG at quality 90 never gives back the card's input exactly.
            assert 0 < path["input_mean_abs_diff_from_card_input_grey_levels"] < 255
        assert 0.0 <= entry["card_input_accuracy"] <= 1.0
        delta = entry["draft_minus_full"]
        only_full, only_draft = delta["only_full_right"], delta["only_draft_right"]
        # The discordant counts are the whole accuracy difference...
        accuracy_change = entry["paths"]["draft"]["accuracy"] - entry["paths"]["full"]["accuracy"]
        assert (only_draft - only_full) == round(accuracy_change * COUNT)
        assert delta["accuracy_difference"] == pytest.approx(accuracy_change)
        # ...and an image one path gets right and the other wrong changed its class.
        assert 0.0 <= delta["identical_class_share"] <= 1.0
        assert delta["class_changed"] == round((1 - delta["identical_class_share"]) * COUNT)
        assert only_full + only_draft <= delta["class_changed"]
        low, high = delta["interval_95"]
        # Zero width only when no image is right on one path alone, or every image is and
        # all on the same path (the paired variance is then zero).
        discordant = only_full + only_draft
        degenerate = discordant == 0 or (discordant == COUNT and 0 in (only_full, only_draft))
        assert (high - low > 0) == (not degenerate)
        assert 0.0 < delta["mcnemar_p"] <= 1.0
        mean, most = (
            delta["predicted_probability_change_mean"],
            delta["predicted_probability_change_max"],
        )
        assert 0.0 <= mean <= most <= 1.0
        # The upload is larger than the input and the two paths fed the model different
        # pixels: the setting reached the decoder.
        assert entry["upload_side"] == FACTOR * entry["model"]["input"][1]
        assert delta["model_input_mean_abs_diff_grey_levels"] > 0
        row = f"| {name} v{entry['model']['version']} | {COUNT} | "
        assert f"{row}{entry['card_input_accuracy']:.4f} | " in text


def test_compare_counts_discordant_images_and_the_probability_of_full_class() -> None:
    labels = np.array([0, 1, 1, 0])
    full = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    # Image 1: only draft right; image 3: both wrong; image 0: same class, 0.9 -> 0.7.
    draft = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])

    out = compare(labels, full, draft)

    assert (out["only_full_right"], out["only_draft_right"]) == (0, 1)
    assert out["accuracy_difference"] == 0.25
    assert out["identical_class_share"] == 0.75
    assert out["class_changed"] == 1
    assert out["predicted_probability_change_max"] == pytest.approx(0.2)
    assert out["predicted_probability_change_mean"] == pytest.approx(0.4 / 4)


def test_held_out_seeds_are_the_ones_the_cards_were_measured_with() -> None:
    from models.attention.export import TEST_SEED
    from models.gender.shift import TEST_SEED_OFFSET

    assert ATTENTION_TEST_SEED == TEST_SEED
    assert GENDER_TEST_SEED_OFFSET == TEST_SEED_OFFSET
