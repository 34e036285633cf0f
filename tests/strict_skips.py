"""CI's guard against silent skips.

With ``VISION_TESTS_FAIL_ON_SKIP=1`` (set by ``.ci/run``) a skipped test fails the run
unless its reason is about a GPU, the one thing CI machines are not expected to have.
Without it a missing browser, database server or data set would turn their tests into
skips and the run would still pass.
"""

from __future__ import annotations

import os

import pytest

FAIL_ON_SKIP_ENV = "VISION_TESTS_FAIL_ON_SKIP"
# Skips that depend on whether the machine has a GPU (or its CUDA wheels): a CI machine
# without one is expected, so they are listed by -ra, not failed.
ALLOWED_SKIP_REASONS = (
    "a working GPU is present",
    "nvidia-* wheels installed here",
    "no working CUDA GPU here",
)
# Filled by the report hook, which gets no config to stash on; one pytest process per run.
_unexpected_skips: list[str] = []
# Read once, when pytest starts: tests clear VISION_* from their environment (the service
# tests' autouse fixture does), and a flag read at each report would be gone by then.
_strict = False


def pytest_configure(config: pytest.Config) -> None:
    global _strict
    _strict = os.environ.get(FAIL_ON_SKIP_ENV) == "1"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    # A skip's longrepr is (file, line, "Skipped: reason").
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _check(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not _strict or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if not any(allowed in reason for allowed in ALLOWED_SKIP_REASONS):
        _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _check(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # A whole module skipped while it is imported (a module-level importorskip).
    _check(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unexpected_skips:
        terminalreporter.section(f"{FAIL_ON_SKIP_ENV}=1: these skips fail the run")
        for line in _unexpected_skips:
            terminalreporter.write_line(line)
