"""The client needs httpx, numpy and pydantic, not the server's stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What the server needs and a client machine should not: importing any of these from
# ``import client`` would make the client install (and its import time) the server's.
SERVER_ONLY = (
    "fastapi",
    "starlette",
    "onnxruntime",
    "PIL",
    "psycopg",
    "prometheus_client",
    "pydantic_settings",
    "uvicorn",
    "multipart",
)

BLOCKER = f"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError("server-only module imported: " + name)
        return None

sys.meta_path.insert(0, Block())
import client
print(sorted(name for name in client.__all__))
"""


def test_client_imports_without_the_server_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "VisionClient" in result.stdout
