"""The container entry command (python -m service.serve): uvicorn options from the env."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from service import serve
from service.protocol import HeaderTimeoutProtocol
from service.runtime import preload_cuda_libraries


def test_main_runs_one_worker_with_env_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(serve, "preload_cuda_libraries", lambda: pytest.fail("cpu: no preload"))
    monkeypatch.setenv("VISION_PROVIDERS", "cpu")
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("GRACEFUL_SHUTDOWN_S", "7")
    monkeypatch.setenv("VISION_HEADER_TIMEOUT_S", "4.5")
    monkeypatch.setenv("KEEP_ALIVE_S", "65")
    monkeypatch.setenv("ROOT_PATH", "/vision")
    serve.get_settings.cache_clear()
    try:
        serve.main([])
    finally:
        serve.get_settings.cache_clear()
    ((args, kwargs),) = calls
    assert args == ("service.main:create_app",)
    assert kwargs["factory"] is True and kwargs["workers"] == 1
    assert kwargs["host"] == "0.0.0.0" and kwargs["port"] == 9001
    assert kwargs["timeout_graceful_shutdown"] == 7
    assert kwargs["timeout_keep_alive"] == 65 and kwargs["root_path"] == "/vision"
    assert issubclass(kwargs["http"], HeaderTimeoutProtocol)
    assert kwargs["http"].header_timeout_s == 4.5


def test_help_prints_the_environment_it_reads_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(serve.uvicorn, "run", lambda *a, **k: pytest.fail("--help started it"))
    with pytest.raises(SystemExit) as exited:
        serve.main(["--help"])
    assert exited.value.code == 0
    page = capsys.readouterr().out
    names = ("PORT", "HOST", "GRACEFUL_SHUTDOWN_S", "KEEP_ALIVE_S", "ROOT_PATH", "VISION_")
    assert all(name in page for name in names)


def test_preload_is_a_no_op_without_nvidia_wheels() -> None:
    if importlib.util.find_spec("nvidia") is not None:
        pytest.skip("nvidia-* wheels installed here")
    assert preload_cuda_libraries() is False
