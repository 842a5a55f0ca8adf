"""`tokenscale run`: the operator (kopf) against the current kubeconfig.

Every flag can also come from an environment variable TOKENSCALE_<FLAG> (upper case,
dashes as underscores), which is how the Helm chart configures it; a flag on the command
line wins. Repeatable flags take a comma-separated list from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any

from tokenscale import settings as settings_module
from tokenscale.settings import DEFAULT_LIVENESS, DEFAULT_METRICS_ADDRESS, DEFAULT_SERVER_IMAGE, Settings

ENV_PREFIX = "TOKENSCALE_"
_TRUE = {"1", "true", "yes", "on"}


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _add(parser: argparse.ArgumentParser, flag: str, help: str, *, kind: Callable[[str], Any] = str,
         default: Any = None, repeat: bool = False, switch: bool = False, metavar: str | None = None) -> None:
    """One flag whose default comes from TOKENSCALE_<FLAG>; the help names the variable."""
    env = _env_name(flag)
    raw = os.environ.get(env)
    shown = f"{help} (env {env}"
    if switch:
        value = raw.strip().lower() in _TRUE if raw is not None else default
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=shown + ")")
        return
    if repeat:
        value = [item.strip() for item in raw.split(",") if item.strip()] if raw else list(default or [])
        parser.add_argument(flag, action="append", type=kind, default=None, metavar=metavar,
                            help=shown + ", comma-separated; repeat the flag for several)")
        parser.set_defaults(**{flag.lstrip("-").replace("-", "_") + "_env": value})
        return
    value = kind(raw) if raw is not None else default
    suffix = f"; default {default})" if default not in (None, "") else ")"
    parser.add_argument(flag, type=kind, default=value, metavar=metavar, help=shown + suffix)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_argument_group("Kubernetes")
    _add(cluster, "--kubeconfig", "kubeconfig file; default $KUBECONFIG, ~/.kube/config, or in-cluster",
         metavar="FILE")
    _add(cluster, "--context", "kubeconfig context to use; default the current one", metavar="NAME")
    _add(cluster, "--namespace", "serve InferenceServices in this namespace only; without it, all namespaces",
         repeat=True, metavar="NS")
    _add(cluster, "--peering", "join this kopf peering (high availability: one active replica); "
         "needs the KopfPeering CRD", metavar="NAME")
    _add(cluster, "--standalone", "run without peering (a single replica)", switch=True, default=False)
    _add(cluster, "--priority", "peering priority of this instance; default random with --peering (kopf "
         "pauses every replica that shares a priority), else 0", kind=int, metavar="N")
    _add(cluster, "--liveness", "liveness endpoint to serve ('' disables it)", default=DEFAULT_LIVENESS,
         metavar="URL")
    _add(cluster, "--metrics-address", "HOST:PORT of the operator's own Prometheus metrics ('' disables them)",
         default=DEFAULT_METRICS_ADDRESS, metavar="ADDR")
    _add(cluster, "--watch-server-timeout", "seconds the API server keeps one watch open", kind=int,
         default=300, metavar="S")
    _add(cluster, "--watch-client-timeout", "seconds the client waits for a watch to end", kind=float,
         default=330.0, metavar="S")
    _add(cluster, "--request-timeout", "seconds for one API request", kind=float, default=30.0, metavar="S")
    _add(cluster, "--connect-timeout", "seconds to connect to the API server", kind=float, default=10.0,
         metavar="S")
    _add(cluster, "--cluster-domain", "cluster DNS domain, for the endpoint URL in status",
         default="cluster.local", metavar="DOMAIN")

    logs = parser.add_argument_group("Logging")
    _add(logs, "--log-level", "DEBUG, INFO, WARNING or ERROR", default="INFO", metavar="LEVEL")
    _add(logs, "--log-format", "json (one object per line) or plain", default="json", metavar="FORMAT")

    serving = parser.add_argument_group("Serving")
    _add(serving, "--default-server-image", "image of the builtin batching server",
         default=DEFAULT_SERVER_IMAGE, metavar="IMAGE")

    prom = parser.add_argument_group("Autoscaling (Prometheus)")
    _add(prom, "--prometheus-url", "Prometheus base URL the autoscaler queries, e.g. "
         "http://prometheus-operated.monitoring:9090", metavar="URL")
    _add(prom, "--tick-seconds", "seconds between autoscaling decisions", kind=float, default=15.0,
         metavar="S")
    _add(prom, "--heartbeat-ticks", "status is written on a material change and at least every N ticks "
         "(status.signals.heartbeatSeconds says how often)", kind=int, default=4, metavar="N")
    _add(prom, "--signal-band", "relative change of a signal that is worth a status write", kind=float,
         default=0.1, metavar="FRACTION")
    _add(prom, "--write-concurrency", "Kubernetes writes in flight at once during a tick", kind=int, default=16,
         metavar="N")
    _add(prom, "--prometheus-bearer-token-file", "file holding a bearer token for Prometheus", metavar="FILE")
    _add(prom, "--prometheus-username", "basic-auth user for Prometheus", metavar="USER")
    _add(prom, "--prometheus-password-file", "file holding the basic-auth password", metavar="FILE")
    _add(prom, "--prometheus-ca-file", "CA bundle to verify Prometheus' TLS certificate", metavar="FILE")
    _add(prom, "--prometheus-insecure", "skip TLS verification for Prometheus", switch=True, default=False)
    _add(prom, "--prometheus-header", "extra HTTP header for Prometheus queries, e.g. X-Scope-OrgID=team-a",
         repeat=True, metavar="NAME=VALUE")
    _add(prom, "--prometheus-timeout", "seconds for one Prometheus query", kind=float, default=10.0,
         metavar="S")
    _add(prom, "--service-label", "Prometheus label holding the InferenceService name",
         default="tokenscale_io_service", metavar="LABEL")
    _add(prom, "--namespace-label", "Prometheus label holding the namespace", default="namespace",
         metavar="LABEL")
    _add(prom, "--rate-window", "rate() window of tokens/s and the other short signals (>= 2 scrapes)",
         default="1m", metavar="DURATION")
    _add(prom, "--long-rate-window", "rate() window of the long tokens/s signal", default="5m",
         metavar="DURATION")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--prometheus-header wants NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _window(text: str, flag: str) -> str:
    from tokenscale.metrics.promql import PromQLError, duration

    try:
        return duration(text)
    except PromQLError:
        raise ValueError(f"{flag} wants a Prometheus duration such as 30s or 2m, got {text!r}") from None


def _priority(args: argparse.Namespace) -> int:
    """Replicas started from one Deployment get no distinct setting: under peering, draw one."""
    if args.priority is not None:
        return args.priority
    return random.SystemRandom().randint(1, 2**31 - 1) if args.peering else 0


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The frozen Settings from parsed flags (flags win over TOKENSCALE_* variables)."""
    namespaces = args.namespace if args.namespace is not None else args.namespace_env
    headers = args.prometheus_header if args.prometheus_header is not None else args.prometheus_header_env
    level = args.log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {args.log_level!r}")
    if args.log_format not in ("json", "plain"):
        raise ValueError(f"--log-format must be json or plain, got {args.log_format!r}")
    if args.peering and args.standalone:
        raise ValueError("--peering and --standalone exclude each other")
    if args.metrics_address:
        from tokenscale.observability import parse_address

        parse_address(args.metrics_address)  # a ValueError names the flag
    if args.tick_seconds <= 0:
        raise ValueError("--tick-seconds must be positive")
    if args.heartbeat_ticks < 1:
        raise ValueError("--heartbeat-ticks must be at least 1")
    if not 0 <= args.signal_band < 1:
        raise ValueError("--signal-band must be in [0, 1)")
    if args.write_concurrency < 1:
        raise ValueError("--write-concurrency must be at least 1")
    return Settings(
        kubeconfig=args.kubeconfig or None,
        context=args.context or None,
        namespaces=tuple(dict.fromkeys(namespaces)),
        peering=args.peering or None,
        standalone=bool(args.standalone),
        priority=_priority(args),
        liveness=args.liveness or None,
        metrics_address=args.metrics_address or None,
        watch_server_timeout=args.watch_server_timeout,
        watch_client_timeout=args.watch_client_timeout,
        request_timeout=args.request_timeout,
        connect_timeout=args.connect_timeout,
        cluster_domain=args.cluster_domain,
        log_level=level,
        log_format=args.log_format,
        default_server_image=args.default_server_image,
        prometheus_url=args.prometheus_url or None,
        tick_seconds=args.tick_seconds,
        heartbeat_ticks=args.heartbeat_ticks,
        signal_band=args.signal_band,
        write_concurrency=args.write_concurrency,
        prometheus_bearer_token_file=args.prometheus_bearer_token_file or None,
        prometheus_username=args.prometheus_username or None,
        prometheus_password_file=args.prometheus_password_file or None,
        prometheus_ca_file=args.prometheus_ca_file or None,
        prometheus_insecure=bool(args.prometheus_insecure),
        prometheus_headers=tuple(_header(h) for h in headers),
        prometheus_timeout=args.prometheus_timeout,
        service_label=args.service_label,
        namespace_label=args.namespace_label,
        rate_window=_window(args.rate_window, "--rate-window"),
        long_rate_window=_window(args.long_rate_window, "--long-rate-window"),
    )


def run_operator(settings: Settings, *, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator until stopped (blocks). A harness passes a threading.Event as stop_flag."""
    import kopf

    settings_module.configure(settings)
    import tokenscale.activation  # noqa: F401  (scale from zero with the activator)
    from tokenscale.handlers import kopf_settings  # (registers the handlers in kopf's default registry)

    standalone = True if settings.standalone else None

    async def operate() -> None:
        try:
            await kopf.operator(
                settings=kopf_settings(settings),
                standalone=standalone,
                peering_name=settings.peering,
                priority=settings.priority,
                clusterwide=settings.clusterwide,
                namespaces=list(settings.namespaces),
                liveness_endpoint=settings.liveness,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
                memo=kopf.Memo(settings=settings),
            )
        finally:
            # kopf waits on a threading.Event flag in an executor thread: release it however the
            # operator ended, or asyncio.run() would wait for that thread forever.
            if isinstance(stop_flag, threading.Event):
                stop_flag.set()

    asyncio.run(operate())


def _configure_logging(settings: Settings) -> None:
    import kopf

    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=settings.log_level == "DEBUG", log_format=log_format, log_refkey="object")
    logging.getLogger().setLevel(settings.log_level)
    # The kubernetes client logs every request at DEBUG; keep it at WARNING unless asked.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"tokenscale run: {error}")
        return 2
    _configure_logging(settings)
    run_operator(settings)  # in the main thread kopf stops on SIGTERM / SIGINT by itself
    return 0
