"""Every test of the training code needs the training extra (torch): marked ``train`` here
once instead of file by file (three files had it, the rest did not)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/models/" in item.nodeid:
            item.add_marker(pytest.mark.train)
