"""The benchmark end to end at a token load: the limit table, the in-process pipeline,
the naive peer and both service configurations start, answer and are reported. No timing
is asserted (speed targets are read from `make benchmark` on a quiet machine)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import run

pytestmark = pytest.mark.slow

SERVERS = ("naive peer", "service, batching off", "service, batching on")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("benchmark")
    argv = ["--duration", "0.4", "--warmup", "0.2", "--concurrency", "1", "2", "--out", str(out)]
    return run.main(argv), out


def test_every_graph_in_the_repository_has_a_limit_row(report: tuple[dict, Path]) -> None:
    rows = report[0]["limits"]
    assert {row["model"] for row in rows} >= {"landmark", "attention", "gender", "occlusion"}
    for row in rows:
        assert [size["batch"] for size in row["sizes"]] == list(run.BATCH_SIZES)
        for size in row["sizes"]:
            assert size["images_per_s"] == pytest.approx(1000 * size["batch"] / size["ms"])
        fastest = max(row["sizes"], key=lambda size: size["images_per_s"])
        assert (row["best_batch"], row["best_images_per_s"]) == (
            fastest["batch"],
            fastest["images_per_s"],
        )
        assert row["batch_1_images_per_s"] == row["sizes"][0]["images_per_s"] > 0


def test_pipeline_reports_the_service_decode_and_the_full_decode(
    report: tuple[dict, Path],
) -> None:
    pipe = report[0]["pipeline"]
    assert pipe["jpeg_draft"] is True  # the service's default
    for key in ("decode_ms", "preprocess_ms", "run_ms", "full_decode_ms", "full_preprocess_ms"):
        assert pipe[key] > 0, key
    # The one-client ratio is the batching-on service's p50 at one client over this pipeline.
    (on1,) = [row for row in report[0]["http"]["service, batching on"] if row["concurrency"] == 1]
    assert report[0]["headline"]["c1_ratio"] == pytest.approx(on1["p50_ms"] / pipe["single_ms"])


def test_the_cpu_time_bound_and_the_levels_the_headline_used(report: tuple[dict, Path]) -> None:
    """The serial limit is no upper bound; the CPU-time one is said beside it. Run at 1 and 2
    clients, the headline names 2 as the level its throughput and overload figures are from,
    and the strict overload ratio divides by the one-client p99."""
    result, out = report
    pipe, head = result["pipeline"], result["headline"]
    landmark = next(row for row in result["limits"] if row["model"] == "landmark")
    cpu_ms = pipe["decode_cpu_ms"] + pipe["preprocess_cpu_ms"] + landmark["best_cpu_ms_per_image"]
    assert pipe["cpu_ms_per_image"] == pytest.approx(cpu_ms) and cpu_ms > 0
    cpus = result["machine"]["cpus_usable"]
    assert pipe["cpu_bound_limit_images_per_s"] == pytest.approx(cpus * 1000 / cpu_ms)
    assert head["levels"] == {"throughput": 2, "one_client": 1, "overload_base": 2}
    (on1,) = [row for row in result["http"]["service, batching on"] if row["concurrency"] == 1]
    assert head["overload_p99_vs_one_client"] == pytest.approx(
        result["overload"]["p99_ms"] / on1["p99_ms"]
    )
    markdown = (out / "benchmark.md").read_text()
    assert "## Headline (concurrency 2 unless said)" in markdown
    assert "It is not an upper bound" in markdown and "vs the 1-client p99" in markdown
    assert result["code"] and result["started_utc"].endswith("UTC")


def test_all_three_servers_answered_every_level_without_errors(
    report: tuple[dict, Path],
) -> None:
    http = report[0]["http"]
    assert set(http) == set(SERVERS)
    for name in SERVERS:
        assert [row["concurrency"] for row in http[name]] == [1, 2]
        for row in http[name]:
            assert row["ok"] > 0 and row["errors"] == 0 and row["other_status"] == 0, (name, row)


def test_the_service_rows_say_where_their_time_went(report: tuple[dict, Path]) -> None:
    """The service's Server-Timing medians are kept per level; the naive peer has none."""
    data, out = report
    assert all("server_timing_p50_ms" not in row for row in data["http"]["naive peer"])
    for name in ("service, batching off", "service, batching on"):
        for row in data["http"][name]:
            stages = row["server_timing_p50_ms"]
            assert stages["app"] > 0 and stages["decode"] > 0 and stages["infer"] > 0
            assert stages["queue"] >= 0 and stages["outside"] > 0
    assert "Where the service's time goes" in (out / "benchmark.md").read_text()


def test_http_floor_is_the_naive_peers_upload_only_endpoint(report: tuple[dict, Path]) -> None:
    floor = report[0]["http_floor"]
    assert floor["concurrency"] == 1 and floor["ok"] > 0 and floor["errors"] == 0
    assert floor["other_status"] == 0  # every answer a 200: the route exists and took the upload
    assert "HTTP floor" in (report[1] / "benchmark.md").read_text()


def test_thin_routes_answer_landmarks_at_one_client(report: tuple[dict, Path]) -> None:
    """Both thin routes ran at one client, answered only 200s, and their ratios are their p50
    over the same pipeline as the service's."""
    data, out = report
    thin, pipe, head = data["thin_route"], data["pipeline"], data["headline"]
    assert set(thin) == set(run.THIN_ROUTES)
    for row in thin.values():
        assert row["concurrency"] == 1 and row["ok"] > 0, row
        assert row["errors"] == 0 and row["other_status"] == 0, row
    assert head["c1_thin_ratio"] == pytest.approx(
        thin["worker thread"]["p50_ms"] / pipe["single_ms"]
    )
    assert head["c1_thin_on_loop_ratio"] == pytest.approx(
        thin["event loop"]["p50_ms"] / pipe["single_ms"]
    )
    assert "thinnest route" in (out / "benchmark.md").read_text()


def test_overload_and_headline_are_written(report: tuple[dict, Path]) -> None:
    data, out = report
    assert data["overload"]["offered_rps"] > 0
    assert data["overload"]["errors"] == 0
    for key in ("on_vs_limit_with_decode", "on_vs_naive", "c1_ratio", "overload_p99_ratio"):
        assert data["headline"][key] > 0, key
    assert json.loads((out / "benchmark.json").read_text())["headline"] == data["headline"]
    markdown = (out / "benchmark.md").read_text()
    assert "naive peer" in markdown and "Headline" in markdown
    assert (out / "benchmark.png").stat().st_size > 0


def test_the_one_client_level_and_its_bounds_are_measured_by_wrk_too(
    report: tuple[dict, Path],
) -> None:
    """Of the levels asked for (1 and 2), wrk measures the target levels: one client, for
    each server and each bound; every answer a 200, and the headline's ratio is its p50
    over the same pipeline as loadgen.py's."""
    from benchmarks import wrk

    if not wrk.available():
        pytest.skip("wrk is not installed (apt-get install wrk)")
    data, out = report
    assert set(data["wrk"]) == set(SERVERS)
    bounds = {"HTTP floor", *(f"thin route, {where}" for where in run.THIN_ROUTES)}
    assert set(data["wrk_bounds"]) == bounds
    rows = [row for name in SERVERS for row in data["wrk"][name]]
    assert [row["concurrency"] for row in rows] == [1, 1, 1]
    for row in [*rows, *data["wrk_bounds"].values()]:
        assert row["ok"] == row["answers"] > 0 and row["errors"] == 0, row
        assert row["status_400_up"] == 0, row
        assert row["server_cpu_ms_per_request"] > 0, row
    (on1,) = data["wrk"]["service, batching on"]
    head = data["headline"]
    assert head["wrk_c1_ratio"] == pytest.approx(on1["p50_ms"] / data["pipeline"]["single_ms"])
    assert "wrk_on_vs_naive" not in head  # no level of 16 clients was asked for
    assert "measured by wrk, concurrency 1" in (out / "benchmark.md").read_text()


@pytest.mark.parametrize(
    ("difference", "words"),
    [(1.254, "1.25 ms above"), (-0.31, "0.31 ms below"), (0.0, "0.00 ms above")],
)
def test_the_gap_to_the_thin_route_reads_as_above_or_below(difference: float, words: str) -> None:
    assert run.above_or_below(difference) == words


def test_wrk_headline_reads_the_target_levels_from_the_wrk_rows() -> None:
    """A made-up report with both target levels: the ratios come from wrk's rows, over the
    same pipeline and limit as loadgen.py's, and the headline says them."""
    pipeline = {"single_ms": 4.0, "limit_with_decode_images_per_s": 400.0}

    def row(concurrency: int, rps: float, p50: float, not_ok: int = 0) -> dict:
        return {
            "concurrency": concurrency,
            "throughput_rps": rps,
            "p50_ms": p50,
            "status_400_up": not_ok,
        }

    report = {
        "pipeline": pipeline,
        "wrk": {
            "naive peer": [row(1, 100.0, 9.0), row(16, 150.0, 100.0, not_ok=3)],
            "service, batching off": [row(1, 180.0, 5.5), row(16, 250.0, 60.0)],
            "service, batching on": [row(1, 190.0, 5.0), row(16, 330.0, 48.0)],
        },
        "wrk_bounds": {
            "HTTP floor": row(1, 2000.0, 0.4),
            "thin route, worker thread": row(1, 220.0, 4.4),
            "thin route, event loop": row(1, 230.0, 4.6),
        },
    }
    head = run.wrk_headline(report)
    assert head == pytest.approx(
        {
            "wrk_c1_p50_ms": 5.0,
            "wrk_c1_ratio": 1.25,
            "wrk_c1_floor_ms": 0.4,
            "wrk_c1_thin_ratio": 1.1,
            "wrk_c1_thin_on_loop_ratio": 1.15,
            "wrk_on_vs_limit_with_decode": 0.825,
            "wrk_on_vs_naive": 2.2,
            "wrk_16_status_400_up": 3,
        }
    )
    lines = run.wrk_headline_lines({"headline": head, "pipeline": pipeline})
    assert lines[0].startswith("- measured by wrk, concurrency 16")
    assert "0.825 (target >= 0.80)" in lines[0] and "2.200 (target >= 2)" in lines[0]
    assert "3 answers of status >= 400 (service and peer) left out of them" in lines[0]
    assert "ratio 1.25 (target <= 1.2)" in lines[1] and "thin route 1.10" in lines[1]
    # Without wrk: no wrk figures, and the section says why.
    assert run.wrk_headline({"wrk": None}) == {}
    assert "not installed" in "\n".join(run.wrk_lines({"wrk": None}))


def test_physical_cores_counts_the_affinity_s_cores_or_says_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = run.physical_cores()
    assert cores is None or 1 <= cores <= len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # as off Linux
    assert run.physical_cores() is None
