"""The skip guard in a pytest run of its own (a subprocess, as CI runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.strict_skips import FAIL_ON_SKIP_ENV

ROOT = Path(__file__).resolve().parents[1]

DEMO = """
import pytest

def test_passes():
    assert True

def test_gpu_only():
    pytest.skip("a working GPU is present")
{extra}
"""

MISSING_BROWSER = """
def test_browser():
    pytest.skip("chromium not installed")
"""


def run_demo(tmp_path: Path, extra: str, strict: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_demo.py").write_text(DEMO.format(extra=extra))
    env = os.environ | {FAIL_ON_SKIP_ENV: "1" if strict else "0"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.strict_skips",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_demo.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("extra", "strict", "returncode"),
    [
        (MISSING_BROWSER, True, 1),  # a skip CI must not accept
        (MISSING_BROWSER, False, 0),  # a developer's machine may lack the browser
        ("", True, 0),  # a GPU skip is expected on CI
    ],
)
def test_skip_guard(tmp_path: Path, extra: str, strict: bool, returncode: int) -> None:
    result = run_demo(tmp_path, extra, strict)
    assert result.returncode == returncode, result.stdout + result.stderr
    if returncode:
        assert "test_demo.py::test_browser: chromium not installed" in result.stdout
        assert "test_gpu_only" not in result.stdout.split("these skips fail the run")[1]
