"""The benchmark end to end at a token load: the limit table, the in-process pipeline,
the naive peer and both service configurations start, answer and are reported. No timing
is asserted (speed targets are read from `make benchmark` on a quiet machine)."""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

import pytest

from benchmarks import run

pytestmark = pytest.mark.slow

SERVERS = ("naive peer", "service, batching off", "service, batching on")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("benchmark")
    argv = ["--duration", "0.4", "--warmup", "0.2", "--concurrency", "1", "2", "--rounds", "3"]
    return run.main([*argv, "--out", str(out)]), out


def rounds(report: tuple[dict, Path]) -> list[dict]:
    return report[0]["rounds"]


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
    # The one-client ratio is the batching-on service's p50 at one client over this pipeline,
    # in each round; the headline's is their median.
    for measured in rounds(report):
        (on1,) = [r for r in measured["http"]["service, batching on"] if r["concurrency"] == 1]
        assert measured["headline"]["c1_ratio"] == pytest.approx(on1["p50_ms"] / pipe["single_ms"])
    per_round = [measured["headline"]["c1_ratio"] for measured in rounds(report)]
    assert report[0]["headline"]["c1_ratio"] == statistics.median(per_round)


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
    for measured in result["rounds"]:
        (on1,) = [r for r in measured["http"]["service, batching on"] if r["concurrency"] == 1]
        assert measured["headline"]["overload_p99_vs_one_client"] == pytest.approx(
            measured["overload"]["p99_ms"] / on1["p99_ms"]
        )
    markdown = (out / "benchmark.md").read_text()
    assert "## Headline: medians of 3 round(s) (concurrency 2 unless said)" in markdown
    assert "It is not an upper bound" in markdown and "/ 1-client p99" in markdown
    assert result["code"] and result["started_utc"].endswith("UTC")


def test_all_three_servers_answered_every_level_without_errors(
    report: tuple[dict, Path],
) -> None:
    for measured in rounds(report):
        http = measured["http"]
        assert list(http) == list(SERVERS)
        for name in SERVERS:
            assert [row["concurrency"] for row in http[name]] == [1, 2]
            for row in http[name]:
                assert row["ok"] > 0 and row["errors"] == 0, (name, row)
                assert row["other_status"] == 0, (name, row)


def test_each_round_rotates_the_servers_order(report: tuple[dict, Path]) -> None:
    assert [measured["order"] for measured in rounds(report)] == [
        list(SERVERS),
        [*SERVERS[1:], SERVERS[0]],
        [SERVERS[2], *SERVERS[:2]],
    ]
    markdown = (report[1] / "benchmark.md").read_text()
    assert "## Each round against the targets" in markdown


def test_each_round_s_row_and_the_median_round_s_operands_agree_with_the_ratios(
    report: tuple[dict, Path],
) -> None:
    """A round's row shows that round's own ratios; a headline ratio quoted with operands
    (its median round's, three rounds being odd) is their quotient, as printed."""
    data, out = report
    markdown = (out / "benchmark.md").read_text()
    for number, measured in enumerate(rounds(report), start=1):
        head = measured["headline"]
        (row,) = [line for line in markdown.splitlines() if line.startswith(f"| {number} | ")]
        ratios = ("on_vs_limit_with_decode", "on_vs_cpu_bound_limit", "on_vs_naive")
        assert "| " + " | ".join(f"{head[key]:.3f}" for key in ratios) + " |" in row
    found = re.search(
        r"naive peer: ([\d.]+) \(rounds [^;]*; target >= 2, met in \d of 3; in its median "
        r"round \((\d)\): ([\d.]+) / ([\d.]+) req/s\)",
        markdown,
    )
    assert found is not None, markdown
    ratio, index, on, naive = found.groups()
    assert float(on) / float(naive) == pytest.approx(float(ratio), abs=2e-3)
    median = data["headline"]["on_vs_naive"]
    assert rounds(report)[int(index) - 1]["headline"]["on_vs_naive"] == median
    assert data["headline"]["median_round"]["on_vs_naive"] == int(index) - 1
    found = re.search(
        r"p50 / decode \+ pre \+ run ([\d.]+) ms: ratio ([\d.]+) \(rounds [^;]*; target <= "
        r"1.2, met in \d of 3; in its median round \(\d\): ([\d.]+) ms\)",
        markdown,
    )
    assert found is not None, markdown
    pipeline, ratio, p50 = (float(value) for value in found.groups())
    assert p50 / pipeline == pytest.approx(ratio, abs=5e-3)


def test_a_round_without_a_figure_does_not_decide_its_median_or_range() -> None:
    """A NaN (a p99 of no answers) would make the median and range depend on the order."""
    levels = {"throughput": 16, "one_client": 1, "overload_base": 16}
    nan = float("nan")
    heads = [{"c1_ratio": value, "levels": levels} for value in (nan, 1.5, 1.7)]
    head = run.summarize_rounds(heads)
    assert head["c1_ratio"] == pytest.approx(1.6)
    assert run.spread(head, "c1_ratio", 2).startswith("rounds 1.50-1.70;")
    assert run.median_round(head, "c1_ratio") is None  # the median is no round's own
    assert run.spread(run.summarize_rounds(heads[:1]), "c1_ratio", 2).startswith("rounds n/a")


def test_the_median_table_has_one_row_per_server_and_level(report: tuple[dict, Path]) -> None:
    """Its req/s is the rounds' median, with their range; the rounds' 503s are added up."""
    lines = run.median_table_lines(report[0])
    assert len(lines) == 2 + len(SERVERS) * 2
    name, level = "service, batching on", 2
    rows = [
        row
        for measured in rounds(report)
        for row in measured["http"][name]
        if row["concurrency"] == level
    ]
    rps = sorted(row["throughput_rps"] for row in rows)
    (line,) = [line for line in lines if line.startswith(f"| {name} | {level} |")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[2] == f"{rps[1]:.1f} ({rps[0]:.1f}-{rps[2]:.1f})"
    assert cells[5] == str(sum(row["rejected_503"] for row in rows))
    assert "req/s, median (rounds' range)" in (report[1] / "benchmark.md").read_text()


def test_the_service_rows_say_where_their_time_went(report: tuple[dict, Path]) -> None:
    """The service's Server-Timing medians are kept per level; the naive peer has none."""
    _, out = report
    for measured in rounds(report):
        http = measured["http"]
        assert all("server_timing_p50_ms" not in row for row in http["naive peer"])
        for name in ("service, batching off", "service, batching on"):
            for row in http[name]:
                stages = row["server_timing_p50_ms"]
                assert stages["app"] > 0 and stages["decode"] > 0 and stages["infer"] > 0
                assert stages["queue"] >= 0 and stages["outside"] > 0
    assert "Where the service's time goes" in (out / "benchmark.md").read_text()


def test_http_floor_is_the_naive_peers_upload_only_endpoint(report: tuple[dict, Path]) -> None:
    for measured in rounds(report):
        floor = measured["http_floor"]
        assert floor["concurrency"] == 1 and floor["ok"] > 0 and floor["errors"] == 0
        assert floor["other_status"] == 0  # every answer a 200: the route took the upload
    assert "HTTP floor" in (report[1] / "benchmark.md").read_text()


def test_thin_routes_answer_landmarks_at_one_client(report: tuple[dict, Path]) -> None:
    """Both thin routes ran at one client, answered only 200s, and their ratios are their p50
    over the same pipeline as the service's."""
    data, out = report
    pipe = data["pipeline"]
    for measured in rounds(report):
        thin, head = measured["thin_route"], measured["headline"]
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
    for measured in rounds(report):
        assert measured["overload"]["offered_rps"] > 0
        assert measured["overload"]["errors"] == 0
    assert data["headline"]["overload_errors"] == 0
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
    bounds = {"HTTP floor", *(f"thin route, {where}" for where in run.THIN_ROUTES)}
    for measured in rounds(report):
        assert set(measured["wrk"]) == set(SERVERS)
        assert set(measured["wrk_bounds"]) == bounds
        rows = [row for name in SERVERS for row in measured["wrk"][name]]
        assert [row["concurrency"] for row in rows] == [1, 1, 1]
        for row in [*rows, *measured["wrk_bounds"].values()]:
            assert row["ok"] == row["answers"] > 0 and row["errors"] == 0, row
            assert row["status_400_up"] == 0, row
            assert row["server_cpu_ms_per_request"] > 0, row
        (on1,) = measured["wrk"]["service, batching on"]
        ratio = on1["p50_ms"] / data["pipeline"]["single_ms"]
        assert measured["headline"]["wrk_c1_ratio"] == pytest.approx(ratio)
    head = data["headline"]
    assert head["per_round"]["wrk_c1_ratio"] == [
        measured["headline"]["wrk_c1_ratio"] for measured in rounds(report)
    ]
    assert "wrk_on_vs_naive" not in head  # no level of 16 clients was asked for
    assert "measured by wrk, concurrency 1" in (out / "benchmark.md").read_text()


@pytest.mark.parametrize(
    ("difference", "words"),
    [(1.254, "1.25 ms above"), (-0.31, "0.31 ms below"), (0.0, "0.00 ms above")],
)
def test_the_gap_to_the_thin_route_reads_as_above_or_below(difference: float, words: str) -> None:
    assert run.above_or_below(difference) == words


def wrk_row(concurrency: int, rps: float, p50: float, not_ok: int = 0) -> dict:
    return {
        "concurrency": concurrency,
        "throughput_rps": rps,
        "p50_ms": p50,
        "status_400_up": not_ok,
    }


def wrk_round(on16: float, on1_p50: float, on16_not_ok: int) -> dict:
    """A made-up round's wrk rows at both target levels."""
    return {
        "wrk": {
            "naive peer": [wrk_row(1, 100.0, 9.0), wrk_row(16, 150.0, 100.0, not_ok=3)],
            "service, batching off": [wrk_row(1, 180.0, 5.5), wrk_row(16, 250.0, 60.0)],
            "service, batching on": [
                wrk_row(1, 190.0, on1_p50),
                wrk_row(16, on16, 48.0, not_ok=on16_not_ok),
            ],
        },
        "wrk_bounds": {
            "HTTP floor": wrk_row(1, 2000.0, 0.4),
            "thin route, worker thread": wrk_row(1, 220.0, 4.4),
            "thin route, event loop": wrk_row(1, 230.0, 4.6),
        },
    }


def test_wrk_headline_reads_the_target_levels_from_the_wrk_rows() -> None:
    """Two made-up rounds with both target levels: each round's ratios come from its wrk
    rows, over the same pipeline and limit as loadgen.py's; the headline says their median,
    their range and the rounds that met each target, and adds up the non-OK answers."""
    pipeline = {"single_ms": 4.0, "limit_with_decode_images_per_s": 400.0}
    first = run.wrk_headline(wrk_round(330.0, 5.0, 0), pipeline)
    assert first == pytest.approx(
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
    second = run.wrk_headline(wrk_round(300.0, 4.6, 1), pipeline)
    levels = {"throughput": 16, "one_client": 1, "overload_base": 16}
    head = run.summarize_rounds([first | {"levels": levels}, second | {"levels": levels}])
    assert head["wrk_on_vs_limit_with_decode"] == pytest.approx((0.825 + 0.75) / 2)
    assert head["wrk_on_vs_naive"] == pytest.approx(2.1)
    assert head["wrk_c1_ratio"] == pytest.approx(1.2)
    assert head["wrk_16_status_400_up"] == 7  # 3 + (3 + 1): added up, not a median
    assert head["met"] == {
        "wrk_on_vs_limit_with_decode": 1,
        "wrk_on_vs_naive": 2,  # 2.0 meets ">= 2"
        "wrk_c1_ratio": 1,  # 1.15 does, 1.25 does not
    }
    assert head["rounds"] == 2 and head["levels"] == levels
    lines = run.wrk_headline_lines({"headline": head, "pipeline": pipeline})
    assert lines[0].startswith("- measured by wrk, concurrency 16")
    assert "0.787 (rounds 0.750-0.825; target >= 0.8, met in 1 of 2)" in lines[0]
    assert "2.100 (rounds 2.000-2.200; target >= 2, met in 2 of 2)" in lines[0]
    assert "7 answers of status >= 400 (service and peer, all rounds) left out" in lines[0]
    assert "ratio 1.20 (rounds 1.15-1.25; target <= 1.2, met in 1 of 2)" in lines[1]
    # Without wrk: no wrk figures, and the section says why.
    assert run.wrk_headline({"wrk": None}, pipeline) == {}
    assert "not installed" in "\n".join(run.wrk_lines({"rounds": [{"wrk": None}]}))


def test_summarize_rounds_takes_medians_and_leaves_out_what_a_round_lacks() -> None:
    levels = {"throughput": 16, "one_client": 1, "overload_base": 16}
    heads = [
        {"on_vs_naive": 1.9, "c1_ratio": 1.7, "overload_errors": 0, "levels": levels},
        {"on_vs_naive": 2.3, "c1_ratio": 1.5, "overload_errors": 2, "levels": levels},
        {"on_vs_naive": 2.0, "c1_ratio": 1.6, "overload_errors": 0, "levels": levels, "x": 1},
    ]
    head = run.summarize_rounds(heads)
    assert head["on_vs_naive"] == 2.0 and head["c1_ratio"] == 1.6
    assert head["overload_errors"] == 2  # an error in any round shows
    assert "x" not in head and "x" not in head["per_round"]
    assert head["per_round"]["on_vs_naive"] == [1.9, 2.3, 2.0]
    assert head["met"] == {"on_vs_naive": 2, "c1_ratio": 0}
    assert run.spread(head, "on_vs_naive", 2) == "rounds 1.90-2.30; target >= 2, met in 2 of 3"


def test_rotated_starts_each_round_one_server_later() -> None:
    names = ["a", "b", "c"]
    assert [run.rotated(names, index) for index in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_physical_cores_counts_the_affinity_s_cores_or_says_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = run.physical_cores()
    assert cores is None or 1 <= cores <= len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # as off Linux
    assert run.physical_cores() is None


def test_the_report_names_its_provider(report: tuple[dict, Path]) -> None:
    data, out = report
    assert data["machine"]["providers"] == "cpu" and data["machine"]["gpu"] is None
    assert (
        (out / "benchmark.md")
        .read_text()
        .startswith("# Benchmark: POST /recognize (landmark), CPU\n")
    )
    gpu_report = {"machine": {"providers": "cuda", "gpu": "NVIDIA H200, 580.159.04"}}
    assert run.provider_title(gpu_report) == "CUDA (NVIDIA H200, 580.159.04)"
    assert run.provider_title({"machine": {}}) == "CPU"  # reports written before the option


def test_providers_reach_every_server(tmp_path: Path) -> None:
    assert run.service_env(True, tmp_path, "cuda")["VISION_PROVIDERS"] == "cuda"
    assert run.service_env(False, tmp_path)["VISION_PROVIDERS"] == "cpu"
    assert run.naive_env(tmp_path, "cuda") == {
        "NAIVE_MODEL_DIR": str(tmp_path),
        "NAIVE_PROVIDERS": "cuda",
    }
    naive = (Path(run.__file__).parent / "naive_app.py").read_text()
    assert 'os.environ.get("NAIVE_PROVIDERS", "cpu")' in naive
