"""`tokenscale run`: the operator (kopf) against the current kubeconfig.

The flags are generated from tokenscale.settings (one field, one flag). Every flag can also come
from an environment variable TOKENSCALE_<FLAG> (upper case, dashes as underscores), which is how
the Helm chart configures it; a flag on the command line wins. Repeatable flags take a
comma-separated list from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any

from tokenscale.settings import FIELD_DEFAULT, Option, Settings, env_name, options

_TRUE = {"1", "true", "yes", "on"}
_CONVERT: dict[str, Callable[[str], Any]] = {"int": int, "float": float}


def _add(parser: argparse.ArgumentParser, name: str, type_name: str, default: Any, opt: Option) -> None:
    """One flag whose default comes from TOKENSCALE_<FLAG>; the help names the variable."""
    flag = opt.flag_for(name)
    env = env_name(flag)
    raw = os.environ.get(env)
    shown = f"{opt.help} (env {env}"
    if opt.flag_default is not FIELD_DEFAULT:
        default = opt.flag_default
    if opt.kind == "switch":
        value = raw.strip().lower() in _TRUE if raw is not None else default
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=value, help=shown + ")")
        return
    if opt.kind == "repeat":
        value = [item.strip() for item in raw.split(",") if item.strip()] if raw else list(default or [])
        parser.add_argument(flag, dest=name, action="append", default=None, metavar=opt.metavar,
                            help=shown + ", comma-separated; repeat the flag for several)")
        parser.set_defaults(**{name + "_env": value})
        return
    kind = _CONVERT.get(type_name.split(" ")[0], str)
    value = kind(raw) if raw is not None else default
    suffix = f"; default {default})" if default not in (None, "") else ")"
    parser.add_argument(flag, dest=name, type=kind, default=value, metavar=opt.metavar, help=shown + suffix)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, one per Settings field, grouped and documented as settings.py declares them."""
    groups: dict[str, Any] = {}
    for f, opt in options():
        group = groups.get(opt.group) or groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        _add(group, f.name, str(f.type), default, opt)


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
    values = {f.name: getattr(args, f.name) for f, _ in options()}
    for f, opt in options():
        if opt.kind == "repeat":
            given = values[f.name]
            values[f.name] = given if given is not None else getattr(args, f.name + "_env")
        elif opt.kind == "switch":
            values[f.name] = bool(values[f.name])
        elif f.type.startswith("str | None"):
            values[f.name] = values[f.name] or None  # '' from the environment switches it off
    values["log_level"] = values["log_level"].upper()
    if values["log_level"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {args.log_level!r}")
    if values["log_format"] not in ("json", "plain"):
        raise ValueError(f"--log-format must be json or plain, got {args.log_format!r}")
    if values["peering"] and values["standalone"]:
        raise ValueError("--peering and --standalone exclude each other")
    if values["metrics_address"]:
        from tokenscale.observability import parse_address

        parse_address(values["metrics_address"])  # a ValueError names the flag
    if values["tick_seconds"] <= 0:
        raise ValueError("--tick-seconds must be positive")
    if values["heartbeat_ticks"] < 1:
        raise ValueError("--heartbeat-ticks must be at least 1")
    if not 0 <= values["signal_band"] < 1:
        raise ValueError("--signal-band must be in [0, 1)")
    if values["write_concurrency"] < 1:
        raise ValueError("--write-concurrency must be at least 1")
    values["namespaces"] = tuple(dict.fromkeys(values["namespaces"]))
    values["prometheus_headers"] = tuple(_header(h) for h in values["prometheus_headers"])
    values["priority"] = _priority(args)
    values["rate_window"] = _window(values["rate_window"], "--rate-window")
    values["long_rate_window"] = _window(values["long_rate_window"], "--long-rate-window")
    return Settings(**values)


def run_operator(settings: Settings, *, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator until stopped (blocks). A harness passes a threading.Event as stop_flag."""
    import kopf

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
