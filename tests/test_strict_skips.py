"""The skip guard in a pytest run of its own (a subprocess, as CI runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.strict_skips import FAIL_ON_SKIP_ENV

ROOT = Path(__file__).resolve().parents[1]

PASSING = """
import pytest

def test_passes():
    assert True

def test_gpu_only():
    pytest.skip("a working GPU is present")
"""

MISSING_BROWSER = """
import pytest

def test_browser():
    pytest.skip("chromium not installed")
"""

# A module-level skip is a collection report, not a test's: the guard must see it too.
MISSING_MODULE = """
import pytest

pytest.importorskip("no_such_module_for_the_skip_guard")
"""


# A skip in a test whose fixtures clear VISION_* first, as tests/service/conftest.py's
# autouse fixture does: the guard used to read its flag at each report and so let it pass.
MISSING_BROWSER_AFTER_ENV_CLEARED = """
import os

import pytest


@pytest.fixture(autouse=True)
def _no_vision_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("VISION_"):
            monkeypatch.delenv(key)


def test_browser():
    pytest.skip("chromium not installed")
"""


def run_demo(tmp_path: Path, extra: str, strict: bool) -> subprocess.CompletedProcess[str]:
    """pytest on two files: PASSING and ``extra``."""
    (tmp_path / "test_passing.py").write_text(PASSING)
    (tmp_path / "test_extra.py").write_text(extra)
    env = os.environ | {FAIL_ON_SKIP_ENV: "1" if strict else "0"}
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.strict_skips"),
            *("-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(tmp_path)),
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
        (MISSING_BROWSER_AFTER_ENV_CLEARED, True, 1),
        (MISSING_MODULE, True, 1),
        (MISSING_MODULE, False, 0),
        ("", True, 0),  # a GPU skip is expected on CI
    ],
    ids=[
        "test-skip-ci",
        "test-skip-local",
        "env-cleared-skip-ci",
        "module-skip-ci",
        "module-skip-local",
        "gpu-skip-ci",
    ],
)
def test_skip_guard(tmp_path: Path, extra: str, strict: bool, returncode: int) -> None:
    result = run_demo(tmp_path, extra, strict)
    assert result.returncode == returncode, result.stdout + result.stderr
    if returncode:
        listed = result.stdout.split("these skips fail the run")[1]
        expected = "no_such_module" if extra == MISSING_MODULE else "chromium not installed"
        assert "test_extra.py" in listed and expected in listed
        assert "test_gpu_only" not in listed
