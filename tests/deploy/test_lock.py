"""docker/lock.py's command line: ``--help`` (and a mistyped option) must answer without
running pip's resolver or rewriting docker/constraints.txt, which the plain command does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import pytest

from tests.deploy.dockerfile import ROOT

LOCK = ROOT / "docker" / "lock.py"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"


def load_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_lock", LOCK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("args", "status"), [(["--help"], 0), (["-h"], 0), (["--bogus"], 2)])
def test_command_line_leaves_constraints_alone(args: list[str], status: int) -> None:
    before = CONSTRAINTS.stat().st_mtime_ns, CONSTRAINTS.read_bytes()
    done = subprocess.run(
        [sys.executable, str(LOCK), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == status, done.stderr
    assert "usage: python docker/lock.py" in done.stdout + done.stderr
    assert "packages in" not in done.stdout  # what a real run prints last
    assert (CONSTRAINTS.stat().st_mtime_ns, CONSTRAINTS.read_bytes()) == before


def test_help_resolves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    lock = load_lock()

    def no_resolve(*args: object, **kwargs: object) -> None:
        raise AssertionError("--help ran the resolver")

    monkeypatch.setattr(lock, "resolve", no_resolve)
    monkeypatch.setattr(lock.subprocess, "run", no_resolve)
    with pytest.raises(SystemExit) as exited:
        lock.main(["--help"])
    assert exited.value.code == 0


def test_plain_command_still_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No arguments keeps the default behaviour: resolve both images, write the file."""
    lock = load_lock()
    calls: list[tuple[str, str]] = []

    def fake_resolve(onnxruntime: str, work: object, constraints: str = "") -> dict[str, str]:
        calls.append((onnxruntime, constraints))
        return (
            {"onnxruntime-gpu": "1.2.3", "fastapi": "0.1"}
            if "gpu" in onnxruntime
            else {"onnxruntime": "1.2.3"}
        )

    monkeypatch.setattr(lock, "resolve", fake_resolve)
    monkeypatch.setattr(lock, "HERE", tmp_path)
    lock.main([])
    assert calls == [
        (lock.ONNXRUNTIME["gpu"], ""),
        (lock.ONNXRUNTIME["cpu"], "onnxruntime==1.2.3\n"),
    ]
    written = (tmp_path / "constraints.txt").read_text().splitlines()
    assert [line for line in written if not line.startswith("#")] == [
        "fastapi==0.1",
        "onnxruntime==1.2.3",
        "onnxruntime-gpu==1.2.3",
    ]
