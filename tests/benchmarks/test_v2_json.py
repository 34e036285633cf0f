"""benchmarks/v2_json.py: both parse paths read the same request, and each is timed."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.v2_json import (
    ENCODERS,
    answer_values,
    json_body,
    landmark_graph,
    main,
    standard_library_parse,
)
from service.routers.v2 import decode_inputs, split_body
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
    assert len(timed) == 8  # two parsers, three encoders at two batch sizes
    assert all(len(times) == 2 and min(times) > 0 for times in timed.values())
    assert result["body_mib"] >= 0.01


def test_every_encoder_writes_the_same_answer() -> None:
    """Pieces joined by the service's writer are the whole list's JSON, value for value."""
    values = answer_values(3)  # 73 728 values: two pieces
    written = {label: json.loads(encode(values)) for label, encode in ENCODERS.items()}
    service, *others = written.values()
    assert len(service) == values.size
    assert all(other == {"data": service} for other in others)
    np.testing.assert_array_equal(np.array(service, np.float32), values.reshape(-1))
