"""benchmarks/idle.py: the spinning policies and thread counts reach ONNX Runtime, and every
thread count, policy and gap gets a row."""

from __future__ import annotations

import pytest

from benchmarks.idle import POLICIES, landmark_graph, main, policy_session
from service.settings import Settings


@pytest.mark.parametrize(
    ("policy", "spinning", "stop"),
    [("off", "0", None), ("on", "1", None), ("during-run", "1", "1")],
)
def test_each_policy_sets_its_spinning_options(
    policy: str, spinning: str, stop: str | None
) -> None:
    settings = Settings(providers="cpu")
    options = policy_session(landmark_graph(settings), settings, policy).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    if stop is None:
        with pytest.raises(RuntimeError):  # ORT raises for a key that was never set
            options.get_session_config_entry("session.force_spinning_stop")
    else:
        assert options.get_session_config_entry("session.force_spinning_stop") == stop


@pytest.mark.parametrize("threads", [1, 3])
def test_the_thread_count_reaches_the_session(threads: int) -> None:
    settings = Settings(providers="cpu")
    session = policy_session(landmark_graph(settings), settings, "off", threads)
    assert session.get_session_options().intra_op_num_threads == threads


def test_the_services_thread_count_by_default() -> None:
    settings = Settings(providers="cpu", intra_op_threads=3)
    session = policy_session(landmark_graph(settings), settings, "off")
    assert session.get_session_options().intra_op_num_threads == 3


def test_a_row_per_policy_and_gap_with_a_positive_run_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = main(["--runs", "3", "--gaps", "0", "1"])
    threads = Settings().resolved_intra_op_threads()
    assert [(r["threads"], r["policy"], r["gap_ms"]) for r in rows] == [
        (threads, p, g) for p in POLICIES for g in (0.0, 1.0)
    ]
    assert all(r["run_ms"] > 0 and r["cpus"] > 0 for r in rows)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row


def test_a_row_per_thread_count_for_the_chosen_policies() -> None:
    rows = main(["--runs", "2", "--gaps", "0", "--intra-op-threads", "1", "2", "--policies", "off"])
    assert [(r["threads"], r["policy"]) for r in rows] == [(1, "off"), (2, "off")]
