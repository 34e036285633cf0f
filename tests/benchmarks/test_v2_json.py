"""benchmarks/v2_json.py: both parse paths read the same request, and each is timed."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.v2_json import (
    answer_body,
    json_body,
    landmark_graph,
    main,
    standard_library_parse,
)
from service.routers.v2 import JSON_BODY, decode_inputs, split_body
from service.settings import Settings


def test_both_paths_decode_the_same_tensor() -> None:
    graph = landmark_graph(Settings())
    body, batch = json_body(graph, 0.01)
    ours = decode_inputs(*split_body(body, None), graph)
    theirs = decode_inputs(*standard_library_parse(body), graph)
    (name,) = ours
    assert ours[name].shape[0] == batch >= 1
    np.testing.assert_array_equal(ours[name], theirs[name])


def test_every_repeat_of_every_path_is_reported() -> None:
    result = main(["--mib", "0.01", "--repeats", "2"])
    timed = {key: value for key, value in result.items() if isinstance(value, list)}
    assert len(timed) == 6  # two parsers, two encoders at two batch sizes
    assert all(len(times) == 2 and min(times) > 0 for times in timed.values())
    assert result["body_mib"] >= 0.01


def test_both_encoders_write_the_same_answer() -> None:
    body = answer_body(1)
    assert json.loads(JSON_BODY.dump_json(body)) == json.loads(json.dumps(body)) == body
