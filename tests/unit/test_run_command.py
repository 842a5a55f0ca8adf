"""`tokenscale run`: every Settings field has a documented flag and a TOKENSCALE_* variable."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from tokenscale.cli import build_parser
from tokenscale.commands.run import settings_from_args
from tokenscale.settings import DEFAULT_METRICS_ADDRESS, Settings

# Settings fields whose flag is named differently (a repeatable flag is singular).
FLAG_FOR = {"namespaces": "--namespace", "prometheus_headers": "--prometheus-header"}


def flag_for(field: str) -> str:
    return FLAG_FOR.get(field, "--" + field.replace("_", "-"))


def parse(argv: list[str]) -> Settings:
    return settings_from_args(build_parser("run").parse_args(["run", *argv]))


def test_help_documents_every_setting_and_its_environment_variable():
    result = subprocess.run([sys.executable, "-m", "tokenscale.cli", "run", "--help"], capture_output=True,
                            text=True, check=True)
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for field in dataclasses.fields(Settings):
        flag = flag_for(field.name)
        assert flag in text, f"{flag} is not documented"
        assert "TOKENSCALE_" + flag[2:].replace("-", "_").upper() in text


def test_defaults_match_the_settings_dataclass():
    # The one exception: harnesses build Settings directly and run several operators in one process,
    # so the dataclass leaves the metrics endpoint off; `tokenscale run` serves it by default.
    assert parse([]) == Settings(metrics_address=DEFAULT_METRICS_ADDRESS)
    assert parse(["--metrics-address", ""]).metrics_address is None
    assert parse(["--metrics-address", "127.0.0.1:9100"]).metrics_address == "127.0.0.1:9100"


def test_flags_fill_the_frozen_settings():
    settings = parse(["--namespace", "a", "--namespace", "b", "--peering", "tokenscale", "--liveness", "",
                      "--prometheus-url", "http://prom:9090", "--tick-seconds", "5",
                      "--prometheus-header", "X-Scope-OrgID=team-a", "--prometheus-insecure",
                      "--service-label", "svc", "--default-server-image", "reg/server:1"])
    assert settings.namespaces == ("a", "b") and not settings.clusterwide
    assert settings.peering == "tokenscale" and settings.liveness is None
    assert settings.prometheus_url == "http://prom:9090" and settings.tick_seconds == 5.0
    assert settings.prometheus_headers == (("X-Scope-OrgID", "team-a"),)
    assert settings.prometheus_insecure is True and settings.service_label == "svc"
    assert settings.default_server_image == "reg/server:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.tick_seconds = 1.0  # type: ignore[misc]


def test_environment_variables_are_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("TOKENSCALE_PROMETHEUS_URL", "http://from-env:9090")
    monkeypatch.setenv("TOKENSCALE_NAMESPACE", "x, y")
    monkeypatch.setenv("TOKENSCALE_STANDALONE", "true")
    monkeypatch.setenv("TOKENSCALE_TICK_SECONDS", "7.5")
    settings = parse([])
    assert settings.prometheus_url == "http://from-env:9090"
    assert settings.namespaces == ("x", "y") and settings.standalone and settings.tick_seconds == 7.5
    assert parse(["--prometheus-url", "http://flag:9090", "--namespace", "z"]).namespaces == ("z",)
    assert parse(["--prometheus-url", "http://flag:9090"]).prometheus_url == "http://flag:9090"


@pytest.mark.parametrize("argv", [
    ["--peering", "p", "--standalone"],
    ["--prometheus-header", "no-equals-sign"],
    ["--log-level", "LOUD"],
    ["--log-format", "xml"],
    ["--tick-seconds", "0"],
    ["--metrics-address", "8081"],
    ["--metrics-address", "host:port"],
])
def test_invalid_combinations_are_refused(argv):
    with pytest.raises(ValueError):
        parse(argv)


def test_every_variable_the_chart_sets_is_a_setting():
    """The chart's env block names only variables `tokenscale run` reads (a typo, or a renamed
    setting, would be silently ignored by the operator otherwise)."""
    import re
    from pathlib import Path

    from tokenscale.activation import ACTIVATOR_SERVICE_ENV
    from tokenscale.settings import env_name, options

    template = Path(__file__).parents[2] / "charts" / "tokenscale" / "templates" / "deployment.yaml"
    in_chart = set(re.findall(r"-\s+name:\s+(TOKENSCALE_[A-Z0-9_]+)", template.read_text()))
    known = {env_name(opt.flag_for(f.name)) for f, opt in options()} | {ACTIVATOR_SERVICE_ENV}
    assert len(in_chart) > 10  # the pattern still finds the block
    assert in_chart <= known, f"the chart sets variables no setting reads: {sorted(in_chart - known)}"


def test_every_setting_declares_its_flag():
    from tokenscale.settings import options

    assert len(options()) == len(dataclasses.fields(Settings))
    flags = [opt.flag_for(f.name) for f, opt in options()]
    assert len(set(flags)) == len(flags)
