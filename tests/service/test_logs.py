"""service/logs.py: long records are capped, and a long traceback keeps its last line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from service.logs import MAX_MESSAGE_CHARS, JsonFormatter, TextFormatter


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


def test_a_long_message_keeps_its_start() -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "x" * 5000 + "END", (), None)
    message = json.loads(JsonFormatter().format(record))["message"]
    assert message.startswith("x" * 100) and "END" not in message and "chars cut" in message
