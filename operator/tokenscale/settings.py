"""The operator's configuration: one frozen dataclass, and the one definition of each setting.

Each field carries, as metadata (`option`), its `tokenscale run` flag, help text and group; the
TOKENSCALE_<FLAG> environment variable is derived from the flag. `commands/run.py` builds its
parser from these fields, so a default, a name or a help text lives here only. The settings
travel on kopf's memo (`memo.settings`). Pure: no kopf, no kubernetes client.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from tokenscale import __version__
from tokenscale.api.labels import PROMETHEUS_SERVICE_LABEL

DEFAULT_SERVER_IMAGE = f"ghcr.io/tokenscale/server:{__version__}"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
DEFAULT_METRICS_ADDRESS = "0.0.0.0:8081"
DEFAULT_SERVICE_LABEL = PROMETHEUS_SERVICE_LABEL
DEFAULT_RATE_WINDOW = "1m"
DEFAULT_LONG_RATE_WINDOW = "5m"
DEFAULT_TICK_SECONDS = 15.0
ENV_PREFIX = "TOKENSCALE_"

FIELD_DEFAULT: Any = object()  # an Option's flag_default when the flag's default is the field's
KUBERNETES, LOGGING, SERVING, PROMETHEUS = "Kubernetes", "Logging", "Serving", "Autoscaling (Prometheus)"


def env_name(flag: str) -> str:
    """The environment variable a flag reads: TOKENSCALE_<FLAG>, dashes as underscores."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


@dataclass(frozen=True)
class Option:
    """How one setting appears on `tokenscale run`'s command line."""

    group: str
    help: str
    metavar: str | None = None
    flag: str | None = None  # default: the field name with dashes
    kind: str = "value"  # value | switch (--x / --no-x) | repeat (the flag again, or a comma-separated env)
    flag_default: Any = FIELD_DEFAULT  # the flag's default where it differs from the dataclass'

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any, group: str, help: str, **details: Any) -> Any:
    """A Settings field with its flag: `default` is the dataclass default."""
    meta = {"option": Option(group, help, **details)}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    # --- Kubernetes -----------------------------------------------------------------------
    kubeconfig: str | None = option(None, KUBERNETES, "kubeconfig file; default $KUBECONFIG, ~/.kube/config, "
                                    "or in-cluster", metavar="FILE")
    context: str | None = option(None, KUBERNETES, "kubeconfig context to use; default the current one",
                                 metavar="NAME")
    namespaces: tuple[str, ...] = option((), KUBERNETES, "serve InferenceServices in this namespace only; "
                                         "without it, all namespaces", metavar="NS", flag="--namespace",
                                         kind="repeat")
    peering: str | None = option(None, KUBERNETES, "join this kopf peering (high availability: one active "
                                 "replica); needs the KopfPeering CRD", metavar="NAME")
    standalone: bool = option(False, KUBERNETES, "run without peering (a single replica)", kind="switch")
    # None on the command line: random under --peering (kopf pauses replicas sharing a priority), else 0.
    priority: int = option(0, KUBERNETES, "peering priority of this instance; default random with --peering "
                           "(kopf pauses every replica that shares a priority), else 0", metavar="N",
                           flag_default=None)
    liveness: str | None = option(DEFAULT_LIVENESS, KUBERNETES, "liveness endpoint to serve ('' disables it)",
                                  metavar="URL")
    # None in the dataclass, so harnesses running several operators in one process do not collide;
    # `tokenscale run` serves it by default.
    metrics_address: str | None = option(None, KUBERNETES, "HOST:PORT of the operator's own Prometheus metrics "
                                         "('' disables them)", metavar="ADDR", flag_default=DEFAULT_METRICS_ADDRESS)
    watch_server_timeout: int = option(300, KUBERNETES, "seconds the API server keeps one watch open", metavar="S")
    watch_client_timeout: float = option(330.0, KUBERNETES, "seconds the client waits for a watch to end",
                                         metavar="S")
    request_timeout: float = option(30.0, KUBERNETES, "seconds for one API request", metavar="S")
    connect_timeout: float = option(10.0, KUBERNETES, "seconds to connect to the API server", metavar="S")
    cluster_domain: str = option("cluster.local", KUBERNETES, "cluster DNS domain, for the endpoint URL in status",
                                 metavar="DOMAIN")
    # --- Logging ----------------------------------------------------------------------------
    log_level: str = option("INFO", LOGGING, "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL")
    log_format: str = option("json", LOGGING, "json (one object per line) or plain", metavar="FORMAT")
    # --- Serving ----------------------------------------------------------------------------
    default_server_image: str = option(DEFAULT_SERVER_IMAGE, SERVING, "image of the builtin batching server",
                                       metavar="IMAGE")
    # --- Autoscaling: Prometheus ------------------------------------------------------------
    prometheus_url: str | None = option(None, PROMETHEUS, "Prometheus base URL the autoscaler queries, e.g. "
                                        "http://prometheus-operated.monitoring:9090", metavar="URL")
    tick_seconds: float = option(DEFAULT_TICK_SECONDS, PROMETHEUS, "seconds between autoscaling decisions",
                                 metavar="S")
    heartbeat_ticks: int = option(4, PROMETHEUS, "status is written on a material change and at least every N "
                                  "ticks (status.signals.heartbeatSeconds says how often)", metavar="N")
    signal_band: float = option(0.1, PROMETHEUS, "relative change of a signal that is worth a status write",
                                metavar="FRACTION")
    write_concurrency: int = option(16, PROMETHEUS, "Kubernetes writes in flight at once during a tick",
                                    metavar="N")
    prometheus_bearer_token_file: str | None = option(None, PROMETHEUS, "file holding a bearer token for "
                                                      "Prometheus", metavar="FILE")
    prometheus_username: str | None = option(None, PROMETHEUS, "basic-auth user for Prometheus", metavar="USER")
    prometheus_password_file: str | None = option(None, PROMETHEUS, "file holding the basic-auth password",
                                                  metavar="FILE")
    prometheus_ca_file: str | None = option(None, PROMETHEUS, "CA bundle to verify Prometheus' TLS certificate",
                                            metavar="FILE")
    prometheus_insecure: bool = option(False, PROMETHEUS, "skip TLS verification for Prometheus", kind="switch")
    prometheus_headers: tuple[tuple[str, str], ...] = option(
        (), PROMETHEUS, "extra HTTP header for Prometheus queries, e.g. X-Scope-OrgID=team-a",
        metavar="NAME=VALUE", flag="--prometheus-header", kind="repeat")
    prometheus_timeout: float = option(10.0, PROMETHEUS, "seconds for one Prometheus query", metavar="S")
    service_label: str = option(DEFAULT_SERVICE_LABEL, PROMETHEUS, "Prometheus label holding the "
                                "InferenceService name", metavar="LABEL")
    namespace_label: str = option("namespace", PROMETHEUS, "Prometheus label holding the namespace",
                                  metavar="LABEL")
    rate_window: str = option(DEFAULT_RATE_WINDOW, PROMETHEUS, "rate() window of tokens/s and the other short "
                              "signals (>= 2 scrapes)", metavar="DURATION")
    long_rate_window: str = option(DEFAULT_LONG_RATE_WINDOW, PROMETHEUS, "rate() window of the long tokens/s "
                                   "signal", metavar="DURATION")

    @property
    def instance(self) -> str:
        """This replica's name in the Events it posts (the pod's name in a cluster)."""
        return os.environ.get("POD_NAME", "tokenscale")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]



def options() -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every setting with its command-line option, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(Settings)]
