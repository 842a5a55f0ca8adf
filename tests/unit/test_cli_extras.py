"""The lean install: the operator imports none of the extras, and a command whose extra is missing
says which one to install (cli.py). The install itself is tested in tests/packaging."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

from tests.conftest import REPO
from tokenscale.cli import COMMANDS, EXTRA_MODULES

EXTRA_ONLY = ("numpy", "matplotlib", "rich", "kmock", "torch", "transformers", "helm_python")

# Makes the top-level modules in BLOCKED look not installed (as a finder that finds nothing would)
# and those in BROKEN found but failing on import (as a half-installed wheel would).
BLOCKER = """
import importlib.machinery, sys

class Broken:
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if top in BROKEN:
            return importlib.machinery.ModuleSpec(name, Broken())
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter that imports tokenscale from this checkout."""
    path = os.pathsep.join([str(REPO / "operator"), str(REPO / "server"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": path})


def cli(args: list[str], *, blocked: tuple[str, ...] = (), broken: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return python(f"BLOCKED = {set(blocked)!r}\nBROKEN = {set(broken)!r}\n{BLOCKER}\n"
                  f"from tokenscale.cli import main\nsys.exit(main({args!r}))")


def test_the_operator_imports_no_extra():
    # Every module outside sim/ and local/ (the operator, today and whatever is added later), and
    # the parsers of the commands that need no extra (run, crd, render): none of the extras loads.
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import tokenscale
        from tokenscale.cli import COMMANDS, build_parser
        with_extra = {{c.module for c in COMMANDS.values() if c.extra}}
        names = [m.name for m in pkgutil.walk_packages(tokenscale.__path__, "tokenscale.")]
        operator = [n for n in names if not n.startswith(("tokenscale.sim", "tokenscale.local"))
                    and n not in with_extra]
        for name in operator:
            importlib.import_module(name)
        for name, command in COMMANDS.items():
            if command.extra is None:
                build_parser(name)
        loaded = sorted({{m.partition(".")[0] for m in sys.modules}} & {set(EXTRA_ONLY)!r})
        print(len(operator), "modules;", "extras loaded:", loaded)
    """)
    result = python(code)
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count > 20, result.stdout  # it did walk the operator
    assert result.stdout.strip().endswith("extras loaded: []"), result.stdout


def test_the_walk_would_see_an_extra_imported_by_the_operator():
    # The check above can fail: the same probe after importing the simulator reports numpy.
    result = python("import sys, tokenscale.sim.simulator; print('numpy' in sys.modules)")
    assert result.stdout.strip() == "True", result.stderr


@pytest.mark.parametrize(
    ("args", "blocked", "extra"),
    [
        (["simulate", "--generate", "poisson", "--duration", "30"], ("numpy",), "sim"),
        (["bench", "autoscaling", "--quick"], ("rich",), "sim"),
        (["bench", "--help"], ("matplotlib",), "sim"),
        (["demo"], ("kmock",), "demo"),  # before it builds a model or starts a process
        (["demo", "--duration", "60"], ("torch", "transformers"), "demo"),
        (["render-install"], ("helm_python",), "dev"),
    ],
)
def test_a_missing_extra_names_the_extra_and_exits_2(args, blocked, extra):
    result = cli(args, blocked=blocked)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith(f"pip install 'tokenscale[{extra}]'"), result.stderr
    assert f"tokenscale {args[0]} needs the '{extra}' extra (cannot import {', '.join(blocked)})" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_extra_that_fails_on_import_names_the_extra():
    # numpy is found, so the command starts, and its import in the simulator fails.
    result = cli(["simulate", "--generate", "poisson", "--duration", "30"], broken=("numpy",))
    assert result.returncode == 2, result.stderr
    assert "tokenscale simulate needs the 'sim' extra (cannot import numpy): pip install 'tokenscale[sim]'" in (
        result.stderr)


def test_the_operator_commands_run_without_any_extra():
    blocked = tuple(m for modules in EXTRA_MODULES.values() for m in modules)
    result = cli(["crd"], blocked=blocked)
    assert result.returncode == 0, result.stderr
    assert "kind: CustomResourceDefinition" in result.stdout
    result = cli(["run", "--help"], blocked=blocked)
    assert result.returncode == 0, result.stderr
    assert "--namespace" in result.stdout
    example = str(REPO / "manifests" / "examples" / "llama-3.1-8b-vllm.yaml")
    result = cli(["render", "-f", example], blocked=blocked)
    assert result.returncode == 0, result.stderr
    assert "kind: Deployment" in result.stdout


def test_an_import_error_outside_the_extra_is_not_disguised():
    # yaml is a base dependency: its absence is a broken install, shown as the ImportError it is.
    result = cli(["simulate", "--spec", "service.yaml", "--duration", "1"], broken=("yaml",))
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'yaml'" in result.stderr
    assert "pip install" not in result.stderr


def test_the_operator_commands_need_no_extra():
    assert all(COMMANDS[name].extra is None for name in ("run", "crd", "render"))
    assert {c.extra for c in COMMANDS.values()} <= {None, *EXTRA_MODULES}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extras() -> dict[str, set[str]]:
    """pyproject.toml's extras as distribution names, tokenscale[...] references resolved."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def resolve(extra: str) -> set[str]:
        names: set[str] = set()
        for requirement in declared[extra]:
            if requirement.startswith("tokenscale["):
                for inner in requirement[len("tokenscale["):requirement.index("]")].split(","):
                    names |= resolve(inner.strip())
            else:
                names.add(_name(requirement))
        return names

    return {extra: resolve(extra) for extra in declared}


def test_extra_modules_match_pyproject():
    extras = _extras()
    distributions = importlib.metadata.packages_distributions()  # the dev environment has every extra
    for extra, modules in EXTRA_MODULES.items():
        provided = {_name(d) for m in modules for d in distributions.get(m, [])}
        assert len(provided) >= len(modules), f"{extra}: a module of {modules} is not installed"
        assert provided <= extras[extra], f"{extra}: {provided - extras[extra]} not in pyproject's [{extra}]"
        if extra != "dev":  # dev also holds the test tools, which no command imports
            assert provided == extras[extra], f"[{extra}] has {extras[extra] - provided} cli.py does not know"
    assert "kmock" not in extras["sim"] and "numpy" not in {_name(r) for r in _base()}


def _base() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_base_dependencies_are_the_operators():
    assert {_name(r) for r in _base()} == {
        "kopf", "kubernetes", "prometheus-api-client", "pydantic", "pyyaml", "aiohttp", "prometheus-client",
    }
