"""OcclusionDecoder: config validation and decoding into blocks and upload-pixel boxes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.decoding import DecodeConfigError, OcclusionDecoder, build_decoder
from service.imaging import LetterboxTransform


def table(k: int) -> list[list[int] | None]:
    spans = [(a, b) for a in range(k) for b in range(a + 1, k + 1)]
    return [None] + [[r0, r1, c0, c1] for r0, r1 in spans for c0, c1 in spans]


def decode_block(k: int = 2, **changes: Any) -> dict[str, Any]:
    return {"grid": {"rows": k, "cols": k}, "patterns": table(k), "verify_threshold": 0.5} | changes


SHAPES = {"pattern_logits": [-1, 10], "embedding": [-1, 8]}


def decoder(**changes: Any) -> OcclusionDecoder:
    built = build_decoder("occlusion_embedding", decode_block(**changes), [], SHAPES)
    assert isinstance(built, OcclusionDecoder)
    return built


def outputs(pid: int, patterns: int = 10) -> dict[str, np.ndarray]:
    logits = np.zeros((2, patterns), np.float32)
    logits[1, pid] = 5.0
    return {"pattern_logits": logits, "embedding": np.full((2, 8), 3.0, np.float32)}


@pytest.mark.parametrize(
    ("changes", "shapes", "message"),
    [
        ({"patterns": table(2)[:-1]}, SHAPES, "pattern table implies"),
        ({"patterns": [None, [0, 3, 0, 1]]}, SHAPES | {"pattern_logits": [-1, 2]}, "not inside"),
        ({"patterns": [None, [1, 1, 0, 1]]}, SHAPES | {"pattern_logits": [-1, 2]}, "not inside"),
        ({}, {"pattern_logits": [-1, 10]}, "needs outputs"),
        ({"verify_threshold": 2.0}, SHAPES, "invalid decode block"),
        ({"grid": {"rows": 0, "cols": 2}}, SHAPES, "invalid decode block"),
    ],
)
def test_bad_configs_are_refused(changes: dict, shapes: dict, message: str) -> None:
    with pytest.raises(DecodeConfigError, match=message):
        build_decoder("occlusion_embedding", decode_block(**changes), [], shapes)


def test_decodes_blocks_box_score_and_unit_embedding() -> None:
    pid = table(2).index([1, 2, 0, 2])  # the lower half
    result = decoder().decode(outputs(pid), LetterboxTransform(1.0, 0, 0, 96, 112), (112, 96), 1)
    assert result.occluded and result.pattern_id == pid and result.blocks == (1, 2, 0, 2)
    assert result.box == pytest.approx((0.0, 56.0, 96.0, 112.0))
    assert result.score == pytest.approx(np.exp(5) / (np.exp(5) + 9))
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0)


def test_no_occlusion_has_no_blocks_or_box() -> None:
    result = decoder().decode(outputs(0), LetterboxTransform(1.0, 0, 0, 96, 112), (112, 96), 1)
    assert not result.occluded and result.blocks is None and result.box is None


def test_box_leaves_the_letterbox_band_out() -> None:
    # A 192 x 112 upload in a 96 x 112 input: scale 0.5, 28-px bands above and below.
    transform = LetterboxTransform(0.5, 0, 28, 192, 112)
    pid = table(2).index([0, 1, 1, 2])  # the top-right block
    result = decoder().decode(outputs(pid), transform, (112, 96), 1)
    assert result.box == pytest.approx((96.0, 0.0, 192.0, 56.0))
