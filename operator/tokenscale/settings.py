"""The operator's configuration: one frozen dataclass, filled from `tokenscale run`'s flags.

Handlers and the autoscaler read it through `get()`; `tokenscale run` (or a test harness)
calls `configure()` once before the operator starts. Pure: no kopf, no kubernetes client.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from tokenscale import __version__

DEFAULT_SERVER_IMAGE = f"ghcr.io/tokenscale/server:{__version__}"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
DEFAULT_METRICS_ADDRESS = "0.0.0.0:8081"


@dataclass(frozen=True)
class Settings:
    # --- Kubernetes -----------------------------------------------------------------------
    kubeconfig: str | None = None  # None: $KUBECONFIG, ~/.kube/config, or in-cluster
    context: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all namespaces (cluster-wide)
    peering: str | None = None  # a name: mandatory peering (HA); None: kopf's auto-detection
    standalone: bool = False  # no peering at all (a single replica)
    priority: int = 0  # peering priority of this instance
    liveness: str | None = DEFAULT_LIVENESS  # kopf's liveness endpoint; None disables it
    # The operator's own /metrics (HOST:PORT). None here, so harnesses running several operators in
    # one process do not collide; `tokenscale run` defaults it to DEFAULT_METRICS_ADDRESS.
    metrics_address: str | None = None
    watch_server_timeout: int = 300  # seconds the API server keeps one watch request open
    watch_client_timeout: float = 330.0  # seconds the client waits for a watch to end
    request_timeout: float = 30.0  # seconds for one ordinary API request
    connect_timeout: float = 10.0
    cluster_domain: str = "cluster.local"  # for the endpoint URL in status
    # --- Logging ----------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: str = "json"  # json | plain
    # --- Serving ----------------------------------------------------------------------------
    default_server_image: str = DEFAULT_SERVER_IMAGE  # the builtin engine's image
    # --- Autoscaling: Prometheus ------------------------------------------------------------
    prometheus_url: str | None = None  # None: autoscaling reports MetricsAvailable=False
    tick_seconds: float = 15.0
    # Status is written on a material change, and at least every heartbeat_ticks ticks.
    heartbeat_ticks: int = 4
    signal_band: float = 0.1  # relative movement of a signal that is a material change
    write_concurrency: int = 16  # API writes in flight at once during a tick (and kopf's handler threads)
    prometheus_bearer_token_file: str | None = None
    prometheus_username: str | None = None
    prometheus_password_file: str | None = None
    prometheus_ca_file: str | None = None
    prometheus_insecure: bool = False
    prometheus_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    prometheus_timeout: float = 10.0
    service_label: str = "tokenscale_io_service"  # the Prometheus label carrying the service name
    namespace_label: str = "namespace"  # the Prometheus label carrying the namespace
    rate_window: str = "1m"  # rate() window of the short signals; must hold >= 2 scrapes
    long_rate_window: str = "5m"  # rate() window of the long signals

    @property
    def instance(self) -> str:
        """This replica's name in the Events it posts (the pod's name in a cluster)."""
        return os.environ.get("POD_NAME", "tokenscale")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_current: Settings | None = None


def configure(settings: Settings) -> Settings:
    """Install the settings the operator runs with (once, before it starts)."""
    global _current
    _current = settings
    return settings


def get() -> Settings:
    """The installed settings, or the defaults when nothing was configured (unit tests)."""
    return _current if _current is not None else Settings()
