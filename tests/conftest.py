"""Shared test configuration: where the repository and the optional traces are."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO.parent / "shared" / "traces"


def pytest_collection_modifyitems(config, items):
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    skip = pytest.mark.skip(reason="needs Debian's prometheus and promtool (make test installs them as root)")
    for item in items:
        if "prometheus" in item.keywords:
            item.add_marker(skip)
