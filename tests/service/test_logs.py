"""service/logs.py: long records are capped, and a long traceback keeps its last line."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.logs import (
    ACCESS_LOGGER,
    MAX_MESSAGE_CHARS,
    JsonFormatter,
    TextFormatter,
    printable,
)
from service.main import create_app
from tests.service.conftest import make_settings


def deep_error_record(depth: int = 80) -> logging.LogRecord:
    """An error record whose traceback (``depth`` distinct frames, as deep as a FastAPI
    stack) is well over the cap; the exception's own line is its last."""
    namespace: dict[str, object] = {}
    source = "def f0():\n    raise KeyError('the-actual-cause')\n" + "".join(
        f"def f{i}():\n    f{i - 1}()\n" for i in range(1, depth + 1)
    )
    exec(source, namespace)  # distinct frames: repeated ones would be folded by traceback
    record = logging.LogRecord("service", logging.ERROR, __file__, 1, "unhandled error", (), None)
    try:
        namespace[f"f{depth}"]()  # type: ignore[operator]
    except KeyError:
        record.exc_info = sys.exc_info()
    return record


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_long_traceback_is_capped_but_keeps_the_exception_line(
    formatter: logging.Formatter,
) -> None:
    record = deep_error_record()
    out = formatter.format(record)
    text = json.loads(out)["error"] if isinstance(formatter, JsonFormatter) else out
    assert "chars cut" in text
    assert len(text) < MAX_MESSAGE_CHARS + 100  # the cap plus its marker
    assert text.rstrip().endswith("KeyError: 'the-actual-cause'")
    assert "Traceback (most recent call last)" in text  # and its start


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_traceback_logged_as_the_message_keeps_the_exception_line(
    formatter: logging.Formatter,
) -> None:
    """uvicorn logs a failed startup as ``logger.error(traceback.format_exc())``: the cause
    (the exception's line, last) was cut off and the log said only that startup failed."""
    record = deep_error_record()
    assert record.exc_info is not None
    text = logging.Formatter().formatException(record.exc_info)
    as_message = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, text, (), None)
    out = formatter.format(as_message)
    message = json.loads(out)["message"] if isinstance(formatter, JsonFormatter) else out
    assert "chars cut" in message and len(message) < MAX_MESSAGE_CHARS + 100
    assert message.rstrip().endswith("KeyError: 'the-actual-cause'")


def test_a_long_message_keeps_its_start() -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "x" * 5000 + "END", (), None)
    message = json.loads(JsonFormatter().format(record))["message"]
    assert message.startswith("x" * 100) and "END" not in message and "chars cut" in message


def test_long_extra_fields_are_capped_like_the_message() -> None:
    """An access line's path is as long as the client makes it: 50 000 characters made a
    52 kB JSON line while the message beside it was capped."""
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "GET", (), None)
    record.path = "/" + "p" * 50_000
    record.status = 404
    entry = json.loads(JsonFormatter().format(record))
    assert len(entry["path"]) < MAX_MESSAGE_CHARS + 100 and "chars cut" in entry["path"]
    assert entry["status"] == 404  # numbers stay numbers


@pytest.mark.parametrize("root_path", ["", "/vision"])
def test_probes_and_scrapes_log_their_access_lines_at_debug(
    repo: Path, json_log: io.StringIO, root_path: str
) -> None:
    """Kubernetes and KServe probe every few seconds: those lines (V2's health paths too,
    and behind a proxy's path prefix) stay at DEBUG; work is logged at INFO."""
    settings = make_settings(repo, log_level="DEBUG")  # else create_app sets INFO
    with TestClient(create_app(settings), root_path=root_path) as client:
        json_log.truncate(0)
        json_log.seek(0)
        for path in ("/health/live", "/health/ready", "/v2/health/ready", "/metrics", "/models"):
            assert client.get(root_path + path).status_code == 200, path
        for path in ("/metrics.php", "/health/x"):  # scanners, under the probes' prefixes
            assert client.get(root_path + path).status_code == 404, path
    levels = {
        record["path"].removeprefix(root_path): record["level"]
        for record in map(json.loads, json_log.getvalue().splitlines())
        if record["logger"] == ACCESS_LOGGER
    }
    assert levels == {
        "/health/live": "DEBUG",
        "/health/ready": "DEBUG",
        "/v2/health/ready": "DEBUG",
        "/metrics": "DEBUG",
        "/models": "INFO",
        "/metrics.php": "INFO",
        "/health/x": "INFO",
    }


def test_printable_escapes_every_line_break_a_log_viewer_may_honour() -> None:
    """C0 controls, C1 controls (NEL, U+0085) and U+2028 / U+2029, which some viewers break
    lines at: a path holding one could forge a line of a text log."""
    assert printable("a\nb\x85c\u2028d\u2029e\x7f") == "a\\x0ab\\x85c\\u2028d\\u2029e\\x7f"
    assert printable("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"  # letters stay as they are
