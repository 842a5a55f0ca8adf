"""The `tokenscale` command. Each subcommand lives in its own module and is imported only
when it runs, so `tokenscale crd` never pays for kopf or torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module defines `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("tokenscale.commands.crd", "print the InferenceService CRD generated from the API models"),
    "run": ("tokenscale.commands.run", "run the operator against the current kubeconfig"),
    "render": ("tokenscale.commands.render", "print the objects the operator would create for InferenceServices"),
    "simulate": ("tokenscale.commands.simulate", "replay a trace through the policy in the simulator"),
    "bench": ("tokenscale.commands.bench", "benchmarks (autoscaling: policies vs. baselines on traces)"),
    "demo": ("tokenscale.commands.demo", "the local closed loop: operator, servers, Prometheus, load"),
    "activator": ("tokenscale.commands.activator",
                  "the proxy that holds requests for services at zero replicas until one is ready"),
    "render-install": (
        "tokenscale.commands.render_install",
        "render manifests/install.yaml from the Helm chart with default values",
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenscale", description="Throughput-based autoscaling of GPU LLM inference on Kubernetes."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(command)
    return parser


def _version() -> str:
    from tokenscale import __version__

    return f"tokenscale {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
