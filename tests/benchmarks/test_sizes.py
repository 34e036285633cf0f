"""The photo-size sweep end to end at a token load: every route answers at every size in
every round, the ratios are the p50s over the pipeline timed around them, and the files
are written. No timing is asserted (the figures are read from a full run)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest

from benchmarks import sizes

pytestmark = pytest.mark.slow

SIZES = ("96x72", "400x300")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sizes")
    argv = ["--sizes", *SIZES, "--rounds", "2", "--duration", "0.4", "--warmup", "0.2"]
    argv += ["--pipeline-seconds", "0.05", "--out", str(out)]
    return sizes.main(argv), out


def test_every_route_answers_every_size_in_every_round(report: tuple[dict, Path]) -> None:
    rounds = report[0]["rounds"]
    assert len(rounds) == 2
    for round_ in rounds:
        assert set(round_) == set(SIZES)
        for measured in round_.values():
            assert set(measured["rows"]) == set(sizes.ROUTES)
            for row in measured["rows"].values():
                assert row["ok"] > 0
                assert row["errors"] == row["rejected_503"] == row["other_status"] == 0


def test_rounds_alternate_the_order_of_the_sizes_and_routes(report: tuple[dict, Path]) -> None:
    first, second = report[0]["rounds"]
    assert list(first) == list(SIZES)
    assert list(second) == list(reversed(SIZES))
    for size in SIZES:
        assert list(first[size]["rows"]) == list(sizes.ROUTES)
        assert list(second[size]["rows"]) == list(reversed(sizes.ROUTES))


def test_ratios_divide_by_the_pipeline_timed_before_and_after(report: tuple[dict, Path]) -> None:
    for round_ in report[0]["rounds"]:
        for measured in round_.values():
            before, after = measured["pipeline_before"], measured["pipeline_after"]
            for timing in (before, after):
                parts = timing["decode_ms"] + timing["preprocess_ms"] + timing["run_ms"]
                assert timing["single_ms"] == pytest.approx(parts)
            mean = (before["single_ms"] + after["single_ms"]) / 2
            assert measured["pipeline_ms"] == pytest.approx(mean)
            for name, row in measured["rows"].items():
                assert measured["ratios"][name] == pytest.approx(row["p50_ms"] / mean)


def test_the_summary_is_the_median_over_rounds(report: tuple[dict, Path]) -> None:
    data = report[0]
    for name, summary in data["summary"].items():
        ratios = [round_[name]["ratios"]["service"] for round_ in data["rounds"]]
        assert summary["ratio"]["service"] == pytest.approx(statistics.median(ratios))
        assert (summary["service_ratio_min"], summary["service_ratio_max"]) == (
            min(ratios),
            max(ratios),
        )
        assert summary["rounds_met"] == sum(ratio <= sizes.TARGET for ratio in ratios)
    small, large = (data["bytes"][name] for name in SIZES)
    assert large > small


def test_the_files_are_written(report: tuple[dict, Path]) -> None:
    data, out = report
    assert json.loads((out / "sizes.json").read_text())["summary"] == data["summary"]
    markdown = (out / "sizes.md").read_text()
    for name in SIZES:
        assert f"| {name} | {data['bytes'][name]} |" in markdown
    assert (out / "sizes.png").stat().st_size > 0


@pytest.mark.parametrize("text", ["640", "640x", "x480", "0x480", "axb", "640x480x3"])
def test_a_malformed_size_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        sizes.parse_size(text)


def test_a_size_reads_width_then_height() -> None:
    assert sizes.parse_size("4032X3024") == (4032, 3024)
