"""Dynamic batching (service/batching.py): gathering, splitting, bounds, departed clients.

No timing asserts: the batcher only waits for requests that hold a slot and are not yet
queued, so these tests decide what a batch holds by reserving slots before submitting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.batching import Batcher, ImageRows, Normalization
from service.errors import ClientClosedRequest, Overloaded
from service.imaging import normalize
from service.main import create_app
from service.metrics import Metrics, create_metrics
from service.runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    LoadedModel,
    load_model,
    provider_options,
    session_options,
)
from service.settings import BatchPolicy, Settings
from service.workers import WorkerPool
from tests.service.conftest import make_settings
from tests.service.images import encode, scene

# Long enough never to expire in a test: batches are decided by slots, not by the clock.
PATIENT_S = 30.0


class CountingRunner:
    """Wraps a session and records the rows of every run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        self.batches.append(int(next(iter(feeds.values())).shape[0]))
        result: dict[str, npt.NDArray[Any]] = self.inner.run(feeds, output_names)
        return result


def _model(repo: Path, **changes: Any) -> LoadedModel:
    model = load_model("landmark", make_settings(repo, **changes))
    assert model.ready, model.error
    return model


def _batcher(model: LoadedModel, max_size: int = 8, queue_size: int = 64) -> Batcher:
    """The model's batcher on a counting runner, patient and with the given bounds."""
    batcher = model.batcher()
    batcher.runner = CountingRunner(batcher.runner)
    batcher.policy = BatchPolicy(max_size=max_size, max_delay_s=PATIENT_S, queue_size=queue_size)
    return batcher


def _images(count: int, seed: int = 0) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, 160, 160), dtype=np.float32) for _ in range(count)]


async def _submit_together(batcher: Batcher, feeds: list[Mapping[str, Any]]) -> list[Any]:
    """Reserve a slot per request first (all "being decoded"), then submit them all."""
    reservations = [batcher.reserve() for _ in feeds]
    return await asyncio.gather(
        *(batcher.infer(f, reservation=r) for f, r in zip(feeds, reservations, strict=True)),
        return_exceptions=True,
    )


def test_concurrent_requests_run_as_one_batch_and_split_back(repo: Path) -> None:
    model = _model(repo)
    batcher = _batcher(model)
    images = _images(5)
    expected = [model.run({"image": image}) for image in images]

    results = asyncio.run(_submit_together(batcher, [{"image": image} for image in images]))

    assert batcher.runner.batches == [5]  # type: ignore[attr-defined]
    for got, want in zip(results, expected, strict=True):
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert batcher.slots == 0 and batcher.queued == 0


def test_batches_never_exceed_max_size(repo: Path) -> None:
    batcher = _batcher(_model(repo), max_size=2)
    asyncio.run(_submit_together(batcher, [{"image": image} for image in _images(5)]))
    assert batcher.runner.batches == [2, 2, 1]  # type: ignore[attr-defined]


def test_a_lone_request_does_not_wait_for_company(repo: Path) -> None:
    """No other request holds a slot: the batch runs at once, not after max_delay (30 s)."""
    batcher = _batcher(_model(repo))

    async def one() -> None:
        await asyncio.wait_for(batcher.infer({"image": _images(1)[0]}), timeout=PATIENT_S / 2)

    asyncio.run(one())
    assert batcher.runner.batches == [1]  # type: ignore[attr-defined]


def test_a_request_alone_decodes_and_runs_in_one_worker_thread_trip(repo: Path) -> None:
    """run_alone: prepare (the decode) and the run in the same worker thread, the same
    answer as the model, and the slot and run slot given back."""
    model = _model(repo)
    batcher = _batcher(model)
    image = _images(1)[0]
    threads: list[int] = []

    class ThreadRunner(CountingRunner):
        def run(self, feeds: Any, output_names: Any = None) -> dict[str, Any]:
            threads.append(threading.get_ident())
            return super().run(feeds, output_names)

    batcher.runner = ThreadRunner(batcher.runner.inner)  # type: ignore[attr-defined]

    def prepare() -> tuple[dict[str, Any], str]:
        threads.append(threading.get_ident())
        return {"image": image}, "transform"

    async def lone() -> tuple[Any, str]:
        with batcher.slot() as reservation:
            assert batcher.alone()
            return await batcher.run_alone(
                prepare, reservation=reservation, pool=WorkerPool(1, "t")
            )

    outputs, extra = asyncio.run(lone())
    assert extra == "transform"
    assert len(threads) == 2 and threads[0] == threads[1] != threading.get_ident()
    assert batcher.runner.batches == [1]  # type: ignore[attr-defined]
    want = model.run({"image": image})
    for name in want:
        np.testing.assert_allclose(outputs[name], want[name], rtol=1e-5, atol=1e-6)
    assert batcher.slots == 0 and batcher.queued == 0
    with batcher.slot():
        assert batcher.alone()  # nothing left running


def test_a_request_is_not_alone_while_another_holds_a_slot_or_runs(repo: Path) -> None:
    """Company means batching: a second slot, or a lone run still in progress, makes the
    next request take the queue, and it still gets its answer."""
    model = _model(repo)
    batcher = _batcher(model)
    first, second = _images(2)
    inside, finish = threading.Event(), threading.Event()

    def slow_prepare() -> tuple[dict[str, Any], None]:
        inside.set()
        assert finish.wait(PATIENT_S)
        return {"image": first}, None

    async def scenario() -> list[Any]:
        with batcher.slot(), batcher.slot():
            assert not batcher.alone()
        reservation = batcher.reserve()
        assert batcher.alone()
        lone = asyncio.ensure_future(
            batcher.run_alone(slow_prepare, reservation=reservation, pool=WorkerPool(1, "t"))
        )
        await asyncio.to_thread(inside.wait, PATIENT_S)
        with batcher.slot() as other:
            assert batcher.slots == 1  # the lone request gave its slot back when it started
            assert not batcher.alone()  # ... but it is still running
            queued = asyncio.ensure_future(batcher.infer({"image": second}, reservation=other))
            finish.set()
            return [await lone, await queued]

    (lone_outputs, _), queued_outputs = asyncio.run(scenario())
    assert sorted(batcher.runner.batches) == [1, 1]  # type: ignore[attr-defined]
    for got, image in ((lone_outputs, first), (queued_outputs, second)):
        want = model.run({"image": image})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert batcher.slots == 0 and batcher.queued == 0


def test_different_per_row_shapes_run_in_separate_batches(tmp_path: Path) -> None:
    """Requests only share a run when everything but the batch axis agrees."""
    from tests.service.fakes import write_model

    write_model(tmp_path / "repository")
    batcher = _batcher(_model(tmp_path / "repository"))
    inner = batcher.runner.inner  # type: ignore[attr-defined]
    shapes: list[tuple[int, ...]] = []

    class ShapeRunner(CountingRunner):
        def run(self, feeds: Any, output_names: Any = None) -> Any:
            shapes.append(tuple(feeds["image"].shape))
            return {"out": feeds["image"].sum(axis=(1, 2, 3))}

    batcher.runner = ShapeRunner(inner)
    small = [np.ones((1, 3, 8, 8), np.float32) * k for k in range(2)]
    large = [np.ones((1, 3, 16, 16), np.float32) * k for k in range(2)]
    feeds = [{"image": small[0]}, {"image": large[0]}, {"image": small[1]}, {"image": large[1]}]
    results = asyncio.run(_submit_together(batcher, feeds))
    assert sorted(shapes) == [(2, 3, 8, 8), (2, 3, 16, 16)]
    assert [float(r["out"][0]) for r in results] == [0.0, 0.0, 3 * 8 * 8, 3 * 16 * 16]


def test_image_rows_are_normalised_into_the_batch_like_normalize(repo: Path) -> None:
    model = _model(repo)
    batcher = _batcher(model)
    config = model.config
    assert config is not None
    pre = config.preprocess
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (1, 160, 160, 3), dtype=np.uint8) for _ in range(3)]

    results = asyncio.run(_submit_together(batcher, [{"image": ImageRows(p)} for p in pixels]))

    assert batcher.runner.batches == [3]  # type: ignore[attr-defined]
    for block, got in zip(pixels, results, strict=True):
        tensor = normalize(block, scale=pre.scale, mean=pre.mean, std=pre.std)
        want = model.run({"image": tensor})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


class OverlapRunner:
    """Wraps a session; each run waits (up to PATIENT_S) until ``parallel`` runs are inside
    at once or no more are coming, and records the most that ever were."""

    def __init__(self, inner: Any, parallel: int, total: int) -> None:
        self.inner, self.parallel, self.total = inner, parallel, total
        self.lock = threading.Condition()
        self.inside = self.started = self.most_inside = 0

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        with self.lock:
            self.inside += 1
            self.started += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.lock.notify_all()
            self.lock.wait_for(
                lambda: self.inside >= self.parallel or self.started == self.total, PATIENT_S
            )
        try:
            result: dict[str, npt.NDArray[Any]] = self.inner.run(feeds, output_names)
            return result
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_up_to_parallel_batches_run_at_once_each_with_its_own_buffer(
    repo: Path, parallel: int
) -> None:
    """Batches of one row each, image rows normalised into pooled buffers: exactly
    ``parallel`` runs overlap, and every request still gets its own image's answer."""
    model = _model(repo)
    config = model.config
    assert config is not None
    pre = config.preprocess
    batcher = model.batcher()
    total = 2 * parallel + 1
    runner = OverlapRunner(batcher.runner, parallel, total)
    batcher.runner = runner
    batcher.policy = BatchPolicy(
        max_size=1, max_delay_s=PATIENT_S, queue_size=64, parallel=parallel
    )
    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 256, (1, 160, 160, 3), dtype=np.uint8) for _ in range(total)]

    results = asyncio.run(_submit_together(batcher, [{"image": ImageRows(p)} for p in pixels]))

    assert runner.started == total
    assert runner.most_inside == parallel
    for block, got in zip(pixels, results, strict=True):
        want = model.run({"image": normalize(block, scale=pre.scale, mean=pre.mean, std=pre.std)})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert batcher.slots == 0 and batcher.queued == 0


def test_normalization_into_matches_normalize() -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = np.full((4, 3, 5, 7), np.nan, np.float32)
    Normalization.of(1 / 255, mean, std).into(pixels, out)
    np.testing.assert_allclose(
        out, normalize(pixels, scale=1 / 255, mean=mean, std=std), rtol=1e-6, atol=1e-6
    )


def test_full_queue_raises_overloaded_before_any_work(repo: Path) -> None:
    batcher = _batcher(_model(repo), queue_size=2)
    held = [batcher.reserve(), batcher.reserve()]
    with pytest.raises(Overloaded) as raised:
        batcher.reserve()
    assert raised.value.status == 503 and raised.value.headers["Retry-After"] == "1"
    with pytest.raises(Overloaded):
        asyncio.run(batcher.infer({"image": _images(1)[0]}))
    for reservation in held:
        reservation.release()
    batcher.reserve().release()  # slots come back
    assert batcher.runner.batches == []  # type: ignore[attr-defined]


def test_departed_clients_are_dropped_before_the_model(repo: Path) -> None:
    batcher = _batcher(_model(repo))
    images = _images(4)

    async def gone() -> bool:
        return True

    async def here() -> bool:
        return False

    async def main() -> list[Any]:
        reservations = [batcher.reserve() for _ in images]
        return await asyncio.gather(
            *(
                batcher.infer({"image": image}, reservation=r, disconnected=gone if k % 2 else here)
                for k, (image, r) in enumerate(zip(images, reservations, strict=True))
            ),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert batcher.runner.batches == [2]  # type: ignore[attr-defined]
    assert isinstance(results[1], ClientClosedRequest) and isinstance(
        results[3], ClientClosedRequest
    )
    assert isinstance(results[0], dict) and isinstance(results[2], dict)
    assert batcher.slots == 0


def test_a_failing_disconnect_check_drops_that_request_and_serves_the_rest(repo: Path) -> None:
    # The check runs inside the batcher's worker task: if its exception escaped, the
    # worker would die with the other requests taken off the queue and never answered.
    batcher = _batcher(_model(repo))
    images = _images(3)

    async def broken() -> bool:
        raise RuntimeError("receive() failed")

    async def here() -> bool:
        return False

    async def main() -> list[Any]:
        reservations = [batcher.reserve() for _ in images]
        checks = [here, broken, here]
        return await asyncio.wait_for(
            asyncio.gather(
                *(
                    batcher.infer({"image": image}, reservation=r, disconnected=check)
                    for image, r, check in zip(images, reservations, checks, strict=True)
                ),
                return_exceptions=True,
            ),
            PATIENT_S,
        )

    results = asyncio.run(main())
    assert isinstance(results[1], ClientClosedRequest)
    assert isinstance(results[0], dict) and isinstance(results[2], dict)
    assert batcher.runner.batches == [2]  # type: ignore[attr-defined]
    assert batcher.slots == 0


class FailingRunner:
    """Raises on its first ``fail`` runs, then delegates."""

    def __init__(self, inner: Any, fail: int = 1) -> None:
        self.inner, self.fail = inner, fail

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("ORT failed")
        result: dict[str, npt.NDArray[Any]] = self.inner.run(feeds, output_names)
        return result


def test_a_failed_run_fails_every_request_of_its_batch_and_frees_its_slot(repo: Path) -> None:
    batcher = _batcher(_model(repo))
    batcher.runner = FailingRunner(batcher.runner)
    images = _images(3)

    async def main() -> tuple[list[Any], Any]:
        together = _submit_together(batcher, [{"image": image} for image in images])
        failed = await asyncio.wait_for(together, PATIENT_S)  # a lost future fails, not hangs
        # The run slot came back: the next request runs (and the runner works again).
        after = await asyncio.wait_for(batcher.infer({"image": images[0]}), PATIENT_S)
        return failed, after

    failed, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "ORT failed" in str(r) for r in failed)
    assert "confidence" in after
    assert batcher.slots == 0 and batcher.queued == 0


def test_outputs_without_a_row_per_request_are_refused_when_batched(repo: Path) -> None:
    # A graph whose outputs do not follow the batch axis cannot be split back by rows.
    batcher = _batcher(_model(repo))
    inner = batcher.runner

    class Pooling:
        def run(
            self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
        ) -> dict[str, npt.NDArray[Any]]:
            outputs: dict[str, npt.NDArray[Any]] = inner.run(feeds, output_names)
            return {name: value[:1] for name, value in outputs.items()}  # one row for all

    batcher.runner = Pooling()
    results = asyncio.run(_submit_together(batcher, [{"image": i} for i in _images(2)]))
    assert all(isinstance(r, RuntimeError) and "cannot be batched" in str(r) for r in results)
    assert batcher.slots == 0


def test_a_reservation_from_another_batcher_is_refused(repo: Path) -> None:
    first, second = _batcher(_model(repo)), _batcher(_model(repo))  # two loads, two batchers
    reservation = second.reserve()

    async def main() -> None:
        await first.infer({"image": _images(1)[0]}, reservation=reservation)

    with pytest.raises(ValueError, match="another graph"):
        asyncio.run(main())
    assert first.slots == 0 and second.slots == 1  # nothing released on the wrong side


def test_cancelled_requests_are_dropped(repo: Path) -> None:
    batcher = _batcher(_model(repo))

    async def main() -> Any:
        keep = batcher.reserve()
        cancelled = asyncio.ensure_future(batcher.infer({"image": _images(1)[0]}))
        await asyncio.sleep(0)  # queued; the worker waits for the reserved request
        cancelled.cancel()
        return await batcher.infer({"image": _images(1, seed=3)[0]}, reservation=keep)

    result = asyncio.run(main())
    assert "confidence" in result
    assert batcher.runner.batches == [1]  # type: ignore[attr-defined]


def test_a_request_being_checked_when_the_worker_stops_is_not_left_waiting(repo: Path) -> None:
    """The worker cancelled (shutdown) while it asks whether a request's client is still
    there: that request, taken off the queue, is cancelled too instead of waiting for good."""
    batcher = _batcher(_model(repo))

    async def main() -> None:
        asked = asyncio.Event()

        async def never_answers() -> bool:
            asked.set()
            await asyncio.Event().wait()
            return False

        request = asyncio.ensure_future(
            batcher.infer({"image": _images(1)[0]}, disconnected=never_answers)
        )
        await asked.wait()
        assert batcher._worker is not None
        batcher._worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, timeout=PATIENT_S / 3)

    asyncio.run(main())


def test_batching_off_runs_every_request_alone(repo: Path) -> None:
    model = _model(repo, batching=False)
    batcher = model.batcher()
    assert batcher.policy.max_size == 1 and batcher.policy.max_delay_s == 0
    batcher.runner = CountingRunner(batcher.runner)
    asyncio.run(_submit_together(batcher, [{"image": image} for image in _images(3)]))
    assert batcher.runner.batches == [1, 1, 1]


def test_settings_batch_policy_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_BATCH_MAX_SIZE", "8")
    monkeypatch.setenv("VISION_BATCH_MAX_DELAY_MS", "3")
    monkeypatch.setenv("VISION_BATCH_PARALLEL", "3")
    monkeypatch.setenv(
        "VISION_BATCH_PER_MODEL",
        '{"landmark": {"max_size": 4, "queue_size": 10},'
        ' "attention.features": {"max_delay_ms": 0, "parallel": 1}}',
    )
    settings = Settings()
    assert settings.batch_policy("landmark") == BatchPolicy(4, 0.003, 10, parallel=3)
    assert settings.batch_policy("attention", "features") == BatchPolicy(8, 0.0, 8, parallel=1)
    assert settings.batch_policy("attention", "perception") == BatchPolicy(8, 0.003, 8, parallel=3)
    monkeypatch.delenv("VISION_BATCH_PER_MODEL")
    off = Settings(batching=False, batch_per_model={"landmark": {"max_size": 4}})
    # Batching off: every request alone, the queue still bounded.
    assert off.batch_policy("landmark") == BatchPolicy(1, 0.0, 8, parallel=3)
    with pytest.raises(ValueError, match="extra"):
        Settings(batch_per_model={"landmark": {"max_batch": 4}})


def test_session_and_cuda_provider_options() -> None:
    settings = Settings(
        intra_op_threads=3,
        graph_optimization="basic",
        cpu_mem_arena=False,
        mem_pattern=False,
        intra_op_spinning=True,
        cuda_device_id=1,
        cudnn_conv_algo_search="HEURISTIC",
        gpu_mem_limit_mb=512,
    )
    options = session_options(settings)
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert (
        session_options(Settings()).get_session_config_entry("session.intra_op.allow_spinning")
        == "0"
    )
    cuda, cpu = provider_options(settings, [CUDA_PROVIDER, CPU_PROVIDER])
    assert cuda == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
        "gpu_mem_limit": str(512 * 1024 * 1024),
    }
    assert cpu == {}


def test_io_binding_path_gives_the_same_outputs(repo: Path) -> None:
    """The I/O-binding run (what CUDA uses) exercised on the CPU device."""
    plain = _model(repo)
    bound = _model(repo, io_binding="on")
    assert bound.graph().io_binding and not plain.graph().io_binding
    batch = np.concatenate(_images(3))
    want, got = plain.run({"image": batch}), bound.run({"image": batch})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_warm_up_covers_the_batch_sizes_in_use(repo: Path) -> None:
    from service.runtime import warmup_batch_sizes

    model = _model(repo)
    session = model.graph()
    assert warmup_batch_sizes(Settings(), session, 16) == [1, 16]  # CPU
    assert warmup_batch_sizes(Settings(warmup_batch_sizes=[4, 2, 2]), session, 16) == [2, 4]
    session.providers = [CUDA_PROVIDER, CPU_PROVIDER]  # as a CUDA session reports itself
    assert warmup_batch_sizes(Settings(), session, 4) == [1, 2, 3, 4]


def _post(client: TestClient, data: bytes) -> Any:
    return client.post("/recognize", files={"image": ("x.png", data, "image/png")})


def test_api_queue_full_is_503_problem_with_retry_after(repo: Path) -> None:
    settings = make_settings(repo, batch_queue_size=1)
    with TestClient(create_app(settings)) as client:
        batcher = client.app.state.registry.get("landmark").batcher()  # type: ignore[attr-defined]
        held = batcher.reserve()
        response = _post(client, encode(scene()))
        held.release()
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"].endswith("overloaded")
        # Refused by AdmissionMiddleware (body drained, not parsed): keep-alive stays usable.
        assert "connection" not in response.headers
        assert _post(client, encode(scene())).status_code == 200
        text = client.get("/metrics").text
    assert 'vision_batch_rejected_total{graph="model",model="landmark",reason="queue_full"' in text


@pytest.mark.parametrize("batching", [True, False])
def test_api_concurrent_requests_match_sequential_answers(repo: Path, batching: bool) -> None:
    """However concurrent requests were grouped, each gets its own image's answer."""
    boxes = [(8 * k, 8 * k, 8 * k + 16, 8 * k + 16) for k in range(8)]
    uploads = [encode(scene(box=box)) for box in boxes]
    with TestClient(create_app(make_settings(repo, batching=batching))) as client:
        expected = [_post(client, data).json() for data in uploads]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda d: _post(client, d), uploads * 2))
        text = client.get("/metrics").text
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json() for r in responses] == expected * 2
    assert expected[0] != expected[1]  # the images really differ
    # Every request's rows went through a run: 8 sequential + 16 concurrent.
    count = 'vision_batch_size_count{graph="model",model="landmark",version="1"}'
    total = 'vision_batch_size_sum{graph="model",model="landmark",version="1"} 24.0'
    assert count in text and total in text
    for name in (
        "vision_batch_queue_duration_seconds_bucket",
        "vision_batch_queue_depth",
        "vision_inference_duration_seconds_bucket",
        "vision_http_request_duration_seconds_bucket",
        "vision_http_requests_in_flight",
        'vision_http_requests_total{endpoint="/recognize",method="POST",status="200"} 24.0',
    ):
        assert name in text


def test_api_full_queue_still_answers_401_without_a_key(repo: Path) -> None:
    settings = make_settings(repo, batch_queue_size=1, api_keys=["secret"])
    with TestClient(create_app(settings)) as client:
        batcher = client.app.state.registry.get("landmark").batcher()  # type: ignore[attr-defined]
        with batcher.slot():
            anonymous = _post(client, encode(scene()))
            keyed = client.post(
                "/recognize",
                files={"image": ("x.png", encode(scene()), "image/png")},
                headers={"X-API-Key": "secret"},
            )
    assert anonymous.status_code == 401
    assert keyed.status_code == 503 and keyed.headers["retry-after"] == "1"


def test_multi_row_requests_are_split_back_by_their_own_rows(repo: Path) -> None:
    """V2 requests may carry several rows: each gets exactly its own rows back."""
    model = _model(repo)
    batcher = _batcher(model, max_size=8)
    two, three = np.concatenate(_images(2, seed=1)), np.concatenate(_images(3, seed=2))
    results = asyncio.run(_submit_together(batcher, [{"image": two}, {"image": three}]))
    assert batcher.runner.batches == [5]  # type: ignore[attr-defined]
    for got, image in zip(results, (two, three), strict=True):
        want = model.run({"image": image})
        for name, value in want.items():
            assert got[name].shape == value.shape
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_a_multi_row_request_that_does_not_fit_waits_for_the_next_batch(repo: Path) -> None:
    batcher = _batcher(_model(repo), max_size=4)
    feeds = [{"image": np.concatenate(_images(3, seed=s))} for s in (1, 2)]
    results = asyncio.run(_submit_together(batcher, feeds))
    assert batcher.runner.batches == [3, 3]  # type: ignore[attr-defined]
    assert all(isinstance(r, dict) for r in results)


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"model": "landmark", **labels})


def test_queue_depth_reads_old_and_new_batchers_of_one_version_together(repo: Path) -> None:
    """A reload of the same version: the old batcher drains while the new one fills, both
    under the same labels. The gauge reads their sum, not whichever changed last."""
    metrics = create_metrics()
    settings = make_settings(repo)
    old = load_model("landmark", settings, metrics).batcher()
    new = load_model("landmark", settings, metrics).batcher()
    graph = {"graph": "model", "version": "1"}
    draining = [old.reserve(), old.reserve()]
    arriving = new.reserve()
    assert _sample(metrics, "vision_batch_queue_depth", **graph) == 3
    draining[0].release()
    assert _sample(metrics, "vision_batch_queue_depth", **graph) == 2
    draining[1].release()
    arriving.release()
    assert _sample(metrics, "vision_batch_queue_depth", **graph) == 0


def test_batch_metrics_count_what_happened(repo: Path) -> None:
    """Depth counts requests still decoding; a departed client is counted by reason; queue
    time is the time a request waited for its batch."""
    metrics = create_metrics()
    model = load_model("landmark", make_settings(repo), metrics)
    batcher = _batcher(model)
    graph = {"graph": "model", "version": "1"}
    held = [batcher.reserve(), batcher.reserve()]
    assert _sample(metrics, "vision_batch_queue_depth", **graph) == 2
    for reservation in held:
        reservation.release()
    assert _sample(metrics, "vision_batch_queue_depth", **graph) == 0

    async def gone() -> bool:
        return True

    async def slow_but_here() -> bool:
        await asyncio.sleep(0.05)  # the check runs in the worker, before the batch runs
        return False

    async def main() -> list[Any]:
        images = _images(2)
        reservations = [batcher.reserve() for _ in images]
        checks = (gone, slow_but_here)
        return await asyncio.gather(
            *(
                batcher.infer({"image": image}, reservation=r, disconnected=check)
                for image, r, check in zip(images, reservations, checks, strict=True)
            ),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert isinstance(results[0], ClientClosedRequest) and isinstance(results[1], dict)
    rejected = _sample(metrics, "vision_batch_rejected_total", **graph, reason="client_gone")
    assert rejected == 1
    waited = _sample(metrics, "vision_batch_queue_duration_seconds_sum", **graph)
    assert waited is not None and waited >= 0.05
