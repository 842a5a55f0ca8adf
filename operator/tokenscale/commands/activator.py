"""`tokenscale activator`: the proxy that holds requests for services at zero replicas.

Every flag can also come from TOKENSCALE_ACTIVATOR_<FLAG> (upper case, dashes as underscores),
which is how the Helm chart configures it; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

ENV_PREFIX = "TOKENSCALE_ACTIVATOR_"


def _add(parser: argparse.ArgumentParser, flag: str, help: str, *, kind: Callable[[str], Any] = str,
         default: Any = None, metavar: str | None = None) -> None:
    env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    raw = os.environ.get(env)
    value = kind(raw) if raw not in (None, "") else default
    suffix = f"; default {default})" if default not in (None, "") else ")"
    parser.add_argument(flag, type=kind, default=value, metavar=metavar, help=f"{help} (env {env}{suffix}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenscale.activator import ActivatorConfig

    d = ActivatorConfig()
    _add(parser, "--kubeconfig", "kubeconfig file; default in-cluster, else $KUBECONFIG or ~/.kube/config",
         metavar="FILE")
    _add(parser, "--context", "kubeconfig context", metavar="NAME")
    _add(parser, "--namespace", "serve InferenceServices of these namespaces only (comma-separated); "
         "default all", default="", metavar="NS")
    _add(parser, "--host", "address to listen on", default="0.0.0.0", metavar="HOST")
    _add(parser, "--port", "the proxy's port (the serving Services' traffic arrives here)", kind=int,
         default=8080, metavar="PORT")
    _add(parser, "--admin-port", "port of /metrics, /healthz and /readyz", kind=int, default=9090,
         metavar="PORT")
    _add(parser, "--max-held-requests", "requests held per service; past it 503 + Retry-After", kind=int,
         default=d.max_held_requests, metavar="N")
    _add(parser, "--hold-timeout-seconds", "longest a request is held; then 503 + Retry-After", kind=float,
         default=d.hold_timeout_seconds, metavar="S")
    _add(parser, "--heartbeat-seconds", "SSE keep-alive comments this often on held streams", kind=float,
         default=d.heartbeat_seconds, metavar="S")
    _add(parser, "--retry-after-seconds", "the Retry-After of a 503", kind=int, default=d.retry_after_seconds,
         metavar="S")
    _add(parser, "--poll-seconds", "how often a held service's readiness is read", kind=float,
         default=d.poll_seconds, metavar="S")
    _add(parser, "--drain-seconds", "after SIGTERM, how long held requests may still be forwarded",
         kind=float, default=25.0, metavar="S")
    _add(parser, "--log-level", "DEBUG, INFO, WARNING or ERROR", default="INFO", metavar="LEVEL")


def config_from_args(args: argparse.Namespace):
    from tokenscale.activator import ActivatorConfig

    if args.max_held_requests < 1:
        raise ValueError("--max-held-requests must be at least 1")
    if args.hold_timeout_seconds <= 0 or args.heartbeat_seconds <= 0 or args.poll_seconds <= 0:
        raise ValueError("--hold-timeout-seconds, --heartbeat-seconds and --poll-seconds must be positive")
    if args.retry_after_seconds < 0:
        raise ValueError("--retry-after-seconds must not be negative")
    return ActivatorConfig(max_held_requests=args.max_held_requests, hold_timeout_seconds=args.hold_timeout_seconds,
                           heartbeat_seconds=args.heartbeat_seconds, poll_seconds=args.poll_seconds,
                           retry_after_seconds=args.retry_after_seconds)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"tokenscale activator: {error}")
        return 2
    level = args.log_level.upper()
    logging.basicConfig(level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    namespaces = tuple(ns.strip() for ns in args.namespace.split(",") if ns.strip())
    return asyncio.run(_serve(args, config, namespaces))


async def _serve(args: argparse.Namespace, config, namespaces: tuple[str, ...]) -> int:
    from tokenscale.activator import Activator
    from tokenscale.activator.kube import KubeCluster

    cluster = KubeCluster(kubeconfig=args.kubeconfig, context=args.context, namespaces=namespaces)
    activator = Activator(cluster, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await activator.start(args.host, args.port, args.admin_port)
        logging.getLogger("tokenscale.activator").info(
            "activator on %s (metrics, health on %s)", activator.url, activator.admin_url)
        await stop.wait()
        await activator.drain(args.drain_seconds)
    finally:
        await activator.stop()
        await cluster.close()
    return 0
