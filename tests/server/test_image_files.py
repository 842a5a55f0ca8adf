"""The image build files agree with each other and with the code: the build context holds what the
Dockerfiles copy and not a checkout's virtual environment; the driver floors the docs, the
Dockerfile and the chart state are the ones the server's refusal message names.
(`make image-check` builds and runs the images themselves.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenscale_server.device import MIN_DRIVER

REPO = Path(__file__).resolve().parents[2]
IGNORE_FILES = [".dockerignore", "server/Dockerfile.dockerignore", "operator/Dockerfile.dockerignore"]
DOCKERFILES = ["server/Dockerfile", "operator/Dockerfile"]


def patterns(path: str) -> list[str]:
    lines = (REPO / path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out + r"\Z")


def sent(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for rule in rules:
        negated = rule.startswith("!")
        regex = _regex(rule.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            keep = negated
    return keep


@pytest.mark.parametrize("path", IGNORE_FILES[1:])
def test_the_three_ignore_files_send_the_same_context(path):
    assert patterns(path) == patterns(".dockerignore")


def test_the_context_holds_what_the_dockerfiles_copy_and_no_virtual_environment():
    rules = patterns(".dockerignore")
    for dockerfile in DOCKERFILES:
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert sent(source.rstrip("/"), rules), f"{dockerfile} copies {source}, which is not sent"
    for path in ("operator/tokenscale/cli.py", "server/tokenscale_server/cli.py", "pyproject.toml"):
        assert sent(path, rules)
    for path in (".venv/lib/python3.11/site-packages/torch/__init__.py", "server/.venv/x", "tests/unit/test_api.py",
                 "operator/tokenscale/__pycache__/cli.cpython-311.pyc", ".git/HEAD", "docs/server.md"):
        assert not sent(path, rules), path


def test_the_stated_driver_floors_are_the_ones_the_server_names():
    dockerfile = (REPO / "server/Dockerfile").read_text()
    docs = (REPO / "docs/server.md").read_text()
    values = (REPO / "charts/tokenscale/values.yaml").read_text()
    for cuda, driver in MIN_DRIVER.items():
        flavour = "cu" + cuda.replace(".", "")
        assert re.search(rf"{flavour} .*>= {re.escape(driver)} \(CUDA {cuda}\)", dockerfile), flavour
        assert re.search(rf"`{flavour}`.*>= {re.escape(driver)} \(CUDA {cuda}\)", docs), flavour
    assert f">= {MIN_DRIVER['13.0']} (CUDA 13.0)" in values  # the default image's flavour
    assert "ARG BASE_IMAGE=nvidia/cuda:13.0" in dockerfile and "ARG TORCH_FLAVOUR=cu130" in dockerfile
