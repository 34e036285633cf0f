"""Shared fixtures: fake repositories, settings pointing at them, and clients."""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.logs import JsonFormatter, RequestIdFilter
from service.main import create_app
from service.schemas import PROBLEM_MEDIA_TYPE
from service.settings import Settings
from tests.service.fakes import write_model

PROBLEM = PROBLEM_MEDIA_TYPE


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is a problem+json error of ``status`` with every RFC 9457 member the
    contract names and a non-empty detail; its body."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status and body["detail"]
    return body


@pytest.fixture(autouse=True)
def _no_vision_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure Settings explicitly; a developer's VISION_* must not leak in."""
    for key in list(os.environ):
        if key.upper().startswith("VISION_"):
            monkeypatch.delenv(key)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one good landmark model, version 1."""
    root = tmp_path / "repository"
    write_model(root)
    return root


@cache
def scratch() -> Path:
    """Where apps whose test names no feedback database keep theirs: never the developer's
    var/feedback.sqlite3, which the settings' default points at. Made on first use, so a
    child process that imports this module and is then killed leaves nothing behind."""
    path = Path(tempfile.mkdtemp(prefix="vision-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_settings(repo: Path, **changes: Any) -> Settings:
    """Small, fast, CPU-only settings for tests."""
    values: dict[str, Any] = {
        "model_repository": repo,
        "providers": "cpu",
        "intra_op_threads": 1,
        "decode_threads": 2,
        "warmup_runs": 1,
        "feedback_db": scratch() / "feedback.sqlite3",
    }
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def settings_for() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    """A running app (lifespan done) over the good repository."""
    with TestClient(create_app(make_settings(repo))) as test_client:
        yield test_client


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record of the service loggers, as the JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    service_logger = logging.getLogger("service")
    old_level = service_logger.level
    service_logger.addHandler(handler)
    service_logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        service_logger.removeHandler(handler)
        service_logger.setLevel(old_level)
