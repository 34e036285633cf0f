"""The mixed-endpoint overload benchmark end to end at a token load: every endpoint's
example form is answered 200 by a real server, the probe runs, the report has a row per
endpoint. No latency is asserted (figures come from a full run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import mixed_overload

pytestmark = pytest.mark.slow


def test_every_endpoint_is_answered_and_reported(tmp_path: Path) -> None:
    argv = ["--clients", "12", "--duration", "1", "--warmup", "0.3", "--label", "token"]
    argv += ["--retry-at-once", "--env", "VISION_DECODE_THREADS=1", "--out", str(tmp_path)]
    report = mixed_overload.main(argv)
    assert list(report["endpoints"]) == list(mixed_overload.endpoint_forms())
    for name, row in report["endpoints"].items():
        # Twelve clients cannot fill a queue of 16: every request is answered, none fails.
        assert row["ok"] > 0, name
        assert row["rejected_503"] == row["other_status"] == row["errors"] == 0, (name, row)
        assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert report["probe"]["probes"] > 0 and report["probe"]["failed"] == 0
    assert report["env"] == {"VISION_DECODE_THREADS": "1"}
    assert report["retry_after_honoured"] is False
    markdown = (tmp_path / "mixed_overload-token.md").read_text()
    assert markdown.startswith("# Every model endpoint at once: 12 clients retrying 503s at once")
    for name in report["endpoints"]:
        assert markdown.count(f"\n| `{name}` |") == 1
    assert "`VISION_DECODE_THREADS=1`" in markdown


def test_env_needs_name_and_value() -> None:
    assert mixed_overload.parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        mixed_overload.parse_env(["A"])
