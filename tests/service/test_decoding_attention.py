"""AttentionDecoder: the decode block is checked against the graphs' outputs at load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.decoding import AttentionDecoder, DecodeConfigError, build_decoder

LABELS = ["a", "b", "c"]
SHAPES = {
    "feature_map": [-1, 8, 4, 4],
    "attention_map": [-1, 1, 4, 4],
    "attention_probs": [-1, 3],
    "perception_probs": [-1, 3],
}
DECODE: dict[str, Any] = {"map": {"height": 4, "width": 4}, "top_k": 2}


def test_builds_from_a_matching_config_and_classifies() -> None:
    decoder = build_decoder("attention_classification", DECODE, LABELS, SHAPES)
    assert isinstance(decoder, AttentionDecoder)
    result = decoder.classify(np.array([0.2, 0.5, 0.3], np.float32))
    assert (result.class_id, result.label) == (1, "b")
    assert result.score == pytest.approx(0.5)
    assert [c.label for c in result.top_k] == ["b", "c"]
    tie = decoder.classify(np.array([0.4, 0.4, 0.2], np.float32))
    assert tie.class_id == 0  # ties: the lower class id first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_map": [-1, 1, 5, 4]}, "attention_map"),
        ({"perception_probs": [-1, 4]}, "perception_probs"),
        ({"feature_map": [-1, 8, 2, 2]}, "feature_map"),
    ],
)
def test_refuses_outputs_that_disagree(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeConfigError, match=message):
        build_decoder("attention_classification", DECODE, LABELS, {**SHAPES, **change})


def test_refuses_missing_outputs_and_bad_blocks() -> None:
    shapes = {k: v for k, v in SHAPES.items() if k != "attention_probs"}
    with pytest.raises(DecodeConfigError, match="needs outputs"):
        build_decoder("attention_classification", DECODE, LABELS, shapes)
    with pytest.raises(DecodeConfigError, match="invalid decode block"):
        build_decoder("attention_classification", {"top_k": 2}, LABELS, SHAPES)
