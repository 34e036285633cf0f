"""What `pip install .` puts in site-packages: the service and its client, nothing else."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_service_and_client_but_not_the_training_code() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(ROOT), include=find["include"])
    top_level = {name.split(".")[0] for name in packages}
    # models/ needs torch and is run from a checkout; tests/ and benchmarks/ are not shipped.
    assert top_level == {"service", "client"}, top_level
    assert "service.routers" in packages and "service.feedback" in packages
