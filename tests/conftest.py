"""Shared test configuration: where the repository and the optional traces are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

# `make test` draws the same examples on every run: a property that fails only on some draws is
# found while developing (HYPOTHESIS_PROFILE=explore) and fixed, not met by chance in CI.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO.parent / "shared" / "traces"


def pytest_collection_modifyitems(config, items):
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    skip = pytest.mark.skip(reason="needs Debian's prometheus and promtool (make test installs them as root)")
    for item in items:
        if "prometheus" in item.keywords:
            item.add_marker(skip)
