"""The `tokenscale` command. Each subcommand lives in its own module and is imported only
when it runs, so `tokenscale crd` never pays for kopf or torch.

`pip install tokenscale` is the operator alone; the other commands need an extra (pyproject.toml's
optional dependencies). A command whose extra is missing says which one to install and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # defines `add_arguments(parser)` and `run(args) -> int`
    help: str  # one line
    extra: str | None = None  # the extra it needs beyond the operator: pip install 'tokenscale[EXTRA]'


COMMANDS: dict[str, Command] = {
    "crd": Command("tokenscale.commands.crd", "print the InferenceService CRD generated from the API models"),
    "run": Command("tokenscale.commands.run", "run the operator against the current kubeconfig"),
    "render": Command(
        "tokenscale.commands.render", "print the objects the operator would create for InferenceServices"
    ),
    "simulate": Command(
        "tokenscale.commands.simulate", "replay a trace through the policy in the simulator", extra="sim"
    ),
    "bench": Command(
        "tokenscale.commands.bench", "benchmarks (autoscaling: policies vs. baselines on traces)", extra="sim"
    ),
    "calibrate": Command(
        "tokenscale.commands.calibrate",
        "measure the tokens/s one replica serves within a latency target (open-loop load)",
    ),
    "demo": Command(
        "tokenscale.commands.demo", "the local closed loop: operator, servers, Prometheus, load", extra="demo"
    ),
    "activator": Command(
        "tokenscale.commands.activator",
        "the proxy that holds requests for services at zero replicas until one is ready",
    ),
    "render-install": Command(
        "tokenscale.commands.render_install",
        "render manifests/install.yaml from the Helm chart with default values",
        extra="dev",
    ),
}

# The top-level modules each extra provides. A command whose extra lacks one of them, or fails to
# import one, says to install the extra. tests/unit/test_cli_extras.py checks these against
# pyproject.toml's optional dependencies.
_SIM = ("numpy", "matplotlib", "rich")
_SERVER = ("torch", "transformers", "tokenizers", "fastapi", "uvicorn")
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "sim": _SIM,
    "server": _SERVER,
    "demo": (*_SIM, *_SERVER, "kmock"),
    "dev": ("helm_python",),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenscale", description="Throughput-based autoscaling of GPU LLM inference on Kubernetes."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = sub.add_parser(name, help=command.help, description=command.help)
        if name == selected:  # only the chosen command's module is imported
            importlib.import_module(command.module).add_arguments(subparser)
    return parser


def _version() -> str:
    from tokenscale import __version__

    return f"tokenscale {__version__}"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _extra_missing(command: str, modules: str) -> int:
    extra = COMMANDS[command].extra
    print(f"tokenscale {command} needs the '{extra}' extra (cannot import {modules}): "
          f"pip install 'tokenscale[{extra}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    selected = selected if selected in COMMANDS else None
    extra = COMMANDS[selected].extra if selected else None
    missing = [m for m in EXTRA_MODULES[extra] if not _installed(m)] if extra else []
    if missing:  # checked before the command starts: it fails at once, not after minutes of work
        return _extra_missing(selected, ", ".join(missing))
    try:
        parser = build_parser(selected)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(importlib.import_module(COMMANDS[args.command].module).run(args) or 0)
    except ImportError as error:  # one of the extra's modules is there but does not import
        if extra is None or (error.name or "").partition(".")[0] not in EXTRA_MODULES[extra]:
            raise
        return _extra_missing(selected, error.name)


if __name__ == "__main__":
    sys.exit(main())
