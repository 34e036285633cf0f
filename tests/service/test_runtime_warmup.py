"""Warm-up at load (service/runtime.py, load_model and warm_up): every graph of a version
runs zero batches at the configured batch sizes before it is reported ready, so the first
user request pays no allocation (or, on CUDA, kernel-selection) cost, and a graph that
loads but cannot run is refused at load instead of failing every request later.

test_runtime.py checks that a model loads and runs; these check that loading ran it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from service.main import create_app
from service.runtime import (
    CUDA_PROVIDER,
    ModelState,
    OnnxSession,
    UnpaddableOutputError,
    load_model,
    warmup_batch_sizes,
)
from tests.service.conftest import make_settings
from tests.service.fakes import CELLS, SIZE, landmark_graph, write_model

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"

# (session, first-axis length of its first input) for every OnnxSession.run call.
Runs = list[tuple[OnnxSession, int]]


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Runs:
    """Record every OnnxSession.run (warm-up calls it directly) and still run the graph."""
    seen: Runs = []
    real_run = OnnxSession.run

    def counting_run(
        self: OnnxSession,
        feeds: Mapping[str, npt.NDArray[Any]],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        seen.append((self, int(next(iter(feeds.values())).shape[0])))
        return real_run(self, feeds, output_names)

    monkeypatch.setattr(OnnxSession, "run", counting_run)
    return seen


def batch_sizes(runs: Runs, session: OnnxSession | None = None) -> Counter[int]:
    """How many runs each batch size got (of ``session`` only, if given)."""
    return Counter(size for ran, size in runs if session is None or ran is session)


def test_load_runs_each_configured_batch_size_warmup_runs_times(repo: Path, runs: Runs) -> None:
    """warmup_batch_sizes (deduplicated, sizes < 1 dropped) times warmup_runs runs happen
    inside load_model, before it returns READY: a load that skipped warming would serve its
    first requests cold, which is what the setting exists to prevent."""
    settings = make_settings(repo, warmup_runs=2, warmup_batch_sizes=[3, 0, 1, 3])
    model = load_model("landmark", settings)
    assert model.state is ModelState.READY, model.error
    assert batch_sizes(runs) == Counter({1: 2, 3: 2})
    assert all(session is model.session for session, _ in runs)


def test_cpu_default_warms_one_and_the_largest_batch(repo: Path, runs: Runs) -> None:
    """With no warmup_batch_sizes, a CPU session is warmed at 1 and at the graph's largest
    batch (so the memory arena is sized for a full batch), warmup_runs times each."""
    model = load_model("landmark", make_settings(repo, batch_max_size=5))
    assert model.state is ModelState.READY, model.error
    assert batch_sizes(runs) == Counter({1: 1, 5: 1})


@pytest.mark.skipif(not (REPOSITORY / "attention").is_dir(), reason="no committed attention model")
def test_every_graph_of_a_multi_graph_version_is_warmed(runs: Runs) -> None:
    """A version with several graphs (attention: features and perception) warms each of
    them, not only the first: either one left cold costs the first /attention request."""
    settings = make_settings(REPOSITORY, warmup_batch_sizes=[1, 2])
    model = load_model("attention", settings)
    assert model.state is ModelState.READY, model.error
    assert sorted(model.sessions) == ["features", "perception"]
    for graph, session in model.sessions.items():
        assert batch_sizes(runs, session) == Counter({1: 1, 2: 1}), graph


def runtime_failing_graph() -> bytes:
    """The fake landmark graph with its cell reshape asking for one cell too many: ONNX
    Runtime loads it and its declared signature matches config.json (the bad axis becomes
    unknown), but every run fails in the Reshape node."""
    model = onnx.load_from_string(landmark_graph())
    for initializer in model.graph.initializer:
        if initializer.name == "cell_shape":
            bad = np.array([0, CELLS + 1, 1], np.int64)
            initializer.CopyFrom(numpy_helper.from_array(bad, "cell_shape"))
    serialized: bytes = model.SerializeToString()
    return serialized


def test_a_graph_that_loads_but_cannot_run_fails_at_load(tmp_path: Path) -> None:
    """Warm-up is the only run before a model is declared ready: a graph that ONNX Runtime
    accepts but cannot execute must end FAILED with a reason, so readiness says so and the
    endpoint answers 503, rather than READY and a 500 on every request."""
    repo = tmp_path / "repository"
    write_model(repo, graph=runtime_failing_graph())
    model = load_model("landmark", make_settings(repo))
    assert model.state is ModelState.FAILED
    assert not model.ready and model.session is None and not model.batchers
    assert "Reshape" in (model.error or ""), model.error


def test_a_graph_that_cannot_run_leaves_the_service_not_ready(tmp_path: Path) -> None:
    """Through the app: the same graph makes /health/ready 503 naming the model, not 200."""
    repo = tmp_path / "repository"
    write_model(repo, graph=runtime_failing_graph())
    with TestClient(create_app(make_settings(repo))) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert "landmark" in ready.text


class RecordingSession:
    """The ORT session's ``run`` and ``io_binding``, recording the first-axis length of
    every input it is given (what ONNX Runtime itself sees, after any padding)."""

    def __init__(self, session: Any) -> None:
        self.session, self.rows = session, []

    def run(self, names: Any, feeds: Mapping[str, npt.NDArray[Any]]) -> Any:
        self.rows.append(int(next(iter(feeds.values())).shape[0]))
        return self.session.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def test_a_padded_session_runs_one_shape_and_returns_only_the_rows_sent(repo: Path) -> None:
    """``pad_batch_to`` (set on CUDA by ``Settings.cuda_fixed_batch``): ORT always sees that
    many rows, a larger batch in chunks of it, and the caller gets back exactly the rows it
    sent, equal to an unpadded run's."""
    graph = next(repo.glob("landmark/1/*.onnx"))
    plain = OnnxSession(graph, make_settings(repo))
    padded = OnnxSession(graph, make_settings(repo))
    padded.pad_batch_to = 4
    recorder = RecordingSession(padded._session)
    padded._session = recorder
    name = plain.inputs[0].name
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in plain.inputs[0].shape[1:]]
    rng = np.random.default_rng(0)
    for rows in (1, 3, 4, 6, 9):
        batch = rng.random((rows, *shape)).astype(np.float32)
        got, expected = padded.run({name: batch}), plain.run({name: batch})
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].shape == expected[key].shape
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
    assert recorder.rows == [4] * 8  # 1, 3 and 4 rows once each; 6 in two runs; 9 in three


def tiny_graph(node: onnx.NodeProto, x_shape: list[Any], y_shape: list[Any]) -> bytes:
    """A one-node graph from ``x`` (float) to ``y`` (float)."""
    graph = onnx.helper.make_graph(
        [node],
        "tiny",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 11)])
    model.ir_version = 8
    return model.SerializeToString()


def test_padding_refuses_a_graph_whose_outputs_are_not_batch_first(repo: Path) -> None:
    """A graph that sums over the batch gives one row whatever it gets: padded rows would
    leak into it, so the padded run refuses it (warm-up runs it first: a load failure)."""
    node = onnx.helper.make_node("ReduceSum", ["x"], ["y"], axes=[0], keepdims=1)
    session = OnnxSession(tiny_graph(node, ["N", 3], [1, 3]), make_settings(repo))
    batch = np.ones((2, 3), np.float32)
    assert session.run({"x": batch})["y"].tolist() == [[2.0, 2.0, 2.0]]
    session.pad_batch_to = 4
    with pytest.raises(UnpaddableOutputError, match="first axis is not the batch"):
        session.run({"x": batch})
    with pytest.raises(UnpaddableOutputError, match="first axis is not the batch"):
        session.run({"x": np.zeros((4, 3), np.float32)})  # what warm-up runs


def test_an_unpadded_session_still_runs_a_scalar_input(repo: Path) -> None:
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    session = OnnxSession(tiny_graph(node, [], []), make_settings(repo))
    assert session.run({"x": np.array(2.5, np.float32)})["y"] == 2.5


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OnnxSession says it runs on CUDA (the graph still runs on the CPU)."""
    real_init = OnnxSession.__init__

    def on_cuda(self: OnnxSession, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.providers = [CUDA_PROVIDER, *self.providers]

    monkeypatch.setattr(OnnxSession, "__init__", on_cuda)


@pytest.mark.parametrize("warmup", [{}, {"warmup_runs": 0}, {"warmup_batch_sizes": []}])
def test_on_cuda_a_graph_whose_outputs_are_not_batch_first_fails_its_load(
    repo: Path, fake_cuda: None, monkeypatch: pytest.MonkeyPatch, warmup: dict[str, Any]
) -> None:
    """With the outputs summed over the batch (one row whatever the batch), the load fails
    and says why, also with warm-up off: the model never serves padding rows."""
    real_run_once = OnnxSession._run_once

    def summed(self: OnnxSession, feeds: Any, names: Any) -> dict[str, npt.NDArray[Any]]:
        outputs = real_run_once(self, feeds, names)
        return {name: array.sum(axis=0, keepdims=True) for name, array in outputs.items()}

    monkeypatch.setattr(OnnxSession, "_run_once", summed)
    model = load_model("landmark", make_settings(repo, batch_max_size=8, **warmup))
    assert model.state is ModelState.FAILED
    assert "first axis is not the batch" in (model.error or "")
    assert "VISION_CUDA_FIXED_BATCH=false" in (model.error or "")


def test_on_cuda_a_graph_with_a_fixed_batch_is_not_padded(tmp_path: Path, fake_cuda: None) -> None:
    fixed = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE]}],
    }
    write_model(tmp_path, config_changes=fixed)
    model = load_model("landmark", make_settings(tmp_path, batch_max_size=8))
    assert model.state is ModelState.READY, model.error
    assert model.session is not None and model.session.pad_batch_to is None


@pytest.mark.parametrize(("fixed", "pad", "warmed"), [(True, 8, [8]), (False, None, range(1, 9))])
def test_on_cuda_load_pads_the_graph_and_warms_what_it_will_run(
    repo: Path,
    runs: Runs,
    fake_cuda: None,
    fixed: bool,
    pad: int | None,
    warmed: Sequence[int],
) -> None:
    """load_model on a session that runs on CUDA (faked: the providers list says so, the
    graph runs on the CPU): padded to the max batch and warmed at that size alone; with
    ``cuda_fixed_batch`` off, unpadded and warmed at every size up to the max."""
    settings = make_settings(repo, batch_max_size=8, cuda_fixed_batch=fixed)
    model = load_model("landmark", settings)
    assert model.state is ModelState.READY and model.session is not None
    assert model.session.pad_batch_to == pad
    assert batch_sizes(runs, model.session) == Counter(
        {size: settings.warmup_runs for size in warmed}
    )


def test_on_the_cpu_nothing_is_padded(repo: Path) -> None:
    model = load_model("landmark", make_settings(repo, batch_max_size=8))
    assert model.session is not None and model.session.pad_batch_to is None
    assert warmup_batch_sizes(make_settings(repo), model.session, 8) == [1, 8]
