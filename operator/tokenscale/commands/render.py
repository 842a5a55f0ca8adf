"""`tokenscale render -f FILE`: the objects the operator would create, as YAML, with no cluster.

It parses each InferenceService as the operator does (the same SpecError text) and builds its
children with the reconciler's own call, `desired.operator_children`, so a change can be
reviewed before it is applied. Exit status 2 when the input is not valid: nothing is printed
then, so a pipeline never applies half of a file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from tokenscale import desired
from tokenscale.api import API_VERSION, KIND, SpecError, parse_spec
from tokenscale.settings import Settings


class RenderError(Exception):
    """Input that cannot be rendered; the message names the document and the field."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("-f", "--filename", required=True, metavar="FILE",
                        help="YAML with one or more InferenceServices ('-' reads standard input); "
                             "documents of other kinds are skipped")
    parser.add_argument("-n", "--namespace", default="default",
                        help="namespace of an InferenceService that names none (default: default)")
    parser.add_argument("--current-replicas", type=_count, default=None, metavar="N",
                        help="replicas of the live Deployment, which an autoscaled service keeps "
                             "(default: none, as for a new service)")
    parser.add_argument("--default-server-image", default=defaults.default_server_image, metavar="IMAGE",
                        help=f"image of the builtin engine, as `tokenscale run` has it "
                             f"(default: {defaults.default_server_image})")
    parser.add_argument("--service-label", default=defaults.service_label, metavar="LABEL",
                        help=f"Prometheus label holding the service name, for the PodMonitor "
                             f"(default: {defaults.service_label})")
    parser.add_argument("--namespace-label", default=defaults.namespace_label, metavar="LABEL",
                        help=f"Prometheus label holding the namespace, for the PodMonitor "
                             f"(default: {defaults.namespace_label})")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a replica count")
    return value


def _read(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        with open(filename) as source:
            return source.read()
    except OSError as error:
        raise RenderError(f"{filename}: {error.strerror}") from None


def _documents(text: str, filename: str) -> list[Any]:
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise RenderError(f"{filename}: not YAML: {error}") from None


def _is_inference_service(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == KIND and doc.get("apiVersion") == API_VERSION


def render_one(doc: dict[str, Any], settings: Settings, *, namespace: str,
               current_replicas: int | None = None) -> list[dict[str, Any]]:
    """The children of one InferenceService, in the order the operator applies them."""
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise RenderError("metadata.name: required")
    namespace = metadata.get("namespace") or namespace
    try:
        spec = parse_spec(doc.get("spec"), name=name)  # as the operator parses it, the name included
    except SpecError as error:
        raise RenderError(f"{namespace}/{name}: {error}") from None
    children = desired.operator_children(name, namespace, spec, settings, current_replicas=current_replicas)
    objects = [children.deployment, children.service, children.pod_disruption_budget, children.pod_monitor]
    return [obj for obj in objects if obj is not None]


def render(text: str, settings: Settings, *, filename: str = "-", namespace: str = "default",
           current_replicas: int | None = None) -> list[dict[str, Any]]:
    """Every InferenceService's children; RenderError listing every bad document when any is bad."""
    docs = [doc for doc in _documents(text, filename) if _is_inference_service(doc)]
    if not docs:
        raise RenderError(f"{filename}: no {API_VERSION} {KIND} in it")
    objects: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, doc in enumerate(docs):
        try:
            objects += render_one(doc, settings, namespace=namespace, current_replicas=current_replicas)
        except RenderError as error:
            problems.append(f"{filename}: {KIND} #{index + 1}: {error}")
    if problems:
        raise RenderError("\n".join(problems))
    return objects


def run(args: argparse.Namespace) -> int:
    settings = Settings(default_server_image=args.default_server_image, service_label=args.service_label,
                        namespace_label=args.namespace_label)
    try:
        objects = render(_read(args.filename), settings, filename=args.filename, namespace=args.namespace,
                         current_replicas=args.current_replicas)
    except RenderError as error:
        print(f"tokenscale render: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=120))
    return 0
