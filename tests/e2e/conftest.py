"""Fixtures of the end-to-end tests: the tiny model, built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Built by `tokenscale-server tiny-model`, as the demo does, into this session's directory."""
    target = tmp_path_factory.mktemp("e2e-model") / "tiny"
    server = Path(sys.executable).parent / "tokenscale-server"
    subprocess.run([str(server), "tiny-model", str(target)], check=True, capture_output=True, timeout=120)
    return target
