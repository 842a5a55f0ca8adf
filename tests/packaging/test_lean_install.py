"""`pip install tokenscale`, no extras, into a fresh virtual environment: it is the operator.

This is what the operator image installs. It downloads the base dependencies (pip's cache and the
machine's pip configuration apply, as for any install) and is skipped only when no package index
answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tokenscale.cli import COMMANDS, EXTRA_MODULES

# 1.5 to 3 minutes on a shared 2-core machine, mostly unpacking the kubernetes client.
pytestmark = pytest.mark.timeout(900)

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "operator", "server")


def run(*args: str | Path, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lean")
    source = root / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    env = root / "venv"
    created = run(sys.executable, "-m", "venv", env)
    assert created.returncode == 0, created.stderr
    probe = run(env / "bin" / "pip", "download", "--no-deps", "--dest", root / "probe", "kopf", timeout=60)
    if probe.returncode != 0:
        errors = [line for line in probe.stderr.splitlines() if line.startswith("ERROR")]
        pytest.skip(f"no package index answers: pip download kopf said {' '.join(errors)[-300:]!r}")
    installed = run(env / "bin" / "pip", "install", source, timeout=800)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-4000:]
    return env


def test_the_install_holds_no_extra(venv):
    modules = sorted({m for modules in EXTRA_MODULES.values() for m in modules})
    found = run(venv / "bin" / "python", "-c",
                f"import importlib.util; print([m for m in {modules!r} if importlib.util.find_spec(m)])")
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_run_help_and_every_command_without_an_extra(venv):
    for name, command in COMMANDS.items():
        if command.extra is None:
            shown = run(venv / "bin" / "tokenscale", name, "--help", cwd=venv)
            assert shown.returncode == 0, f"tokenscale {name} --help: {shown.stderr}"
    assert "--prometheus-url" in run(venv / "bin" / "tokenscale", "run", "--help", cwd=venv).stdout


def test_the_operator_imports_from_the_install(venv):
    # The modules `tokenscale run` loads, from the installed wheel (package data included).
    code = "import tokenscale.handlers, tokenscale.desired.workload, tokenscale.metrics.source, tokenscale; " \
           "print(tokenscale.__file__)"
    imported = run(venv / "bin" / "python", "-c", code, cwd=venv)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(str(venv)), imported.stdout


def test_crd_is_the_committed_crd(venv):
    printed = run(venv / "bin" / "tokenscale", "crd", cwd=venv)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (REPO / "crds" / "tokenscale.io_inferenceservices.yaml").read_text()


def test_render_prints_the_children(venv):
    example = REPO / "manifests" / "examples" / "llama-3.1-8b-vllm.yaml"
    printed = run(venv / "bin" / "tokenscale", "render", "-f", example, cwd=venv)
    assert printed.returncode == 0, printed.stderr
    assert "kind: Deployment" in printed.stdout and "kind: Service" in printed.stdout


def test_a_command_with_an_extra_says_which_to_install(venv):
    simulated = run(venv / "bin" / "tokenscale", "simulate", "--generate", "poisson", cwd=venv)
    assert simulated.returncode == 2
    assert simulated.stderr.strip().endswith("pip install 'tokenscale[sim]'"), simulated.stderr
    demo = run(venv / "bin" / "tokenscale", "demo", cwd=venv)
    assert demo.returncode == 2
    assert demo.stderr.strip().endswith("pip install 'tokenscale[demo]'"), demo.stderr


def test_the_distribution_carries_its_license(venv):
    code = ("import importlib.metadata as m; d = m.distribution('tokenscale'); "
            "print(d.metadata.get('License-Expression') or d.metadata.get('License'), "
            "any(f.name == 'LICENSE' for f in d.files))")
    shown = run(venv / "bin" / "python", "-c", code, cwd=venv)
    assert shown.stdout.split() == ["Apache-2.0", "True"], shown.stdout + shown.stderr
