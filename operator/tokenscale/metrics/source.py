"""Read every service's canonical signals from Prometheus: a few batched queries per tick.

    source = PrometheusSource(PrometheusConfig(url="http://prometheus:9090"))
    signals = source.read([ServiceRef("team-a", "llama", "vllm", activation_query=None), ...])
    signals[("team-a", "llama")].tokens_per_second

One query per canonical signal and engine family present (see promql.signal_queries), all
evaluated at the same instant and sent concurrently; the activation queries of the services
that have one are the only per-service queries, run concurrently too. A Prometheus that cannot
be reached or answers with an error raises MetricsUnavailable (the caller reports
MetricsAvailable=False and holds); a service with no series gets None signals, never zeros.
"""

from __future__ import annotations

import math
import re
import threading
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from tokenscale.api.models import EngineType
from tokenscale.engines.metric_names import EngineMetricNames, metric_names
from tokenscale.policy.types import Signals

from .promql import Grouping, Windows, signal_queries

ServiceKey = tuple[str, str]  # (namespace, name)


class MetricsUnavailable(RuntimeError):
    """Prometheus could not answer; str() is a message for the MetricsAvailable condition."""


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    bearer_token_file: str | None = None  # re-read every tick: projected tokens rotate
    username: str | None = None  # basic auth
    password_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False  # skip TLS verification
    headers: tuple[tuple[str, str], ...] = ()  # e.g. (("X-Scope-OrgID", "team-a"),)
    timeout_seconds: float = 10.0
    grouping: Grouping = field(default_factory=Grouping)
    windows: Windows = field(default_factory=Windows)
    concurrency: int = 8  # queries in flight at once

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL must start with http:// or https://: {self.url!r}")
        if self.password_file and not self.username:
            raise ValueError("a Prometheus password file needs a username")


@dataclass(frozen=True)
class ServiceRef:
    """What the source needs to know about one InferenceService."""

    namespace: str
    name: str
    engine: EngineType | str = EngineType.builtin
    activation_query: str | None = None

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)


class PrometheusSource:
    """Batched signal reads from one Prometheus; thread-safe; counts the queries it sends."""

    def __init__(self, config: PrometheusConfig):
        self.config = config
        if config.insecure:  # asked for explicitly: do not warn on every query
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        session = requests.Session()
        session.verify = config.ca_file if config.ca_file and not config.insecure else not config.insecure
        # No retries: the next tick is the retry. (urllib3's retries would also log a "Retrying"
        # warning per query per tick through an outage; the autoscaler logs its start and its end.)
        retry = Retry(total=0, connect=0, read=0, status=0, redirect=0, raise_on_status=False)
        auth = None
        if config.username:
            password = Path(config.password_file).read_text().strip() if config.password_file else ""
            auth = (config.username, password)
        self._client = PrometheusConnect(
            url=config.url.rstrip("/"),
            headers=None,
            disable_ssl=config.insecure,
            retry=retry,
            auth=auth,
            session=session,
            timeout=config.timeout_seconds,
        )
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency), thread_name_prefix="promql")
        self._lock = threading.Lock()
        self.queries_sent = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # --- the tick -----------------------------------------------------------------------------

    def read(self, services: Iterable[ServiceRef], at: float | None = None) -> dict[ServiceKey, Signals]:
        """Signals of every service, all evaluated at `at` (unix seconds; default now)."""
        services = list(services)
        at = time.time() if at is None else at
        families: dict[str, EngineMetricNames] = {}
        for service in services:
            names = metric_names(service.engine)
            families[names.family] = names
        self._refresh_headers()

        batched = {
            (family, signal): self._pool.submit(self._query, query, at)
            for family, names in families.items()
            for signal, query in signal_queries(names, self.config.windows, self.config.grouping).items()
        }
        activations = {
            service.key: self._pool.submit(self._query, service.activation_query, at)
            for service in services
            if service.activation_query
        }
        values: dict[tuple[str, str], dict[ServiceKey, float]] = {}
        for (family, signal), future in batched.items():
            values[(family, signal)] = self._by_service(future.result())  # raises MetricsUnavailable
        activation_values: dict[ServiceKey, float | None] = {}
        for key, future in activations.items():
            activation_values[key] = self._activation(future)

        result: dict[ServiceKey, Signals] = {}
        for service in services:
            family = metric_names(service.engine).family
            fields = {
                signal: rows.get(service.key)
                for (row_family, signal), rows in values.items()
                if row_family == family
            }
            pods = fields.pop("ready_pods_reporting", None)
            fields["ready_pods_reporting"] = int(pods) if pods is not None and math.isfinite(pods) else None
            result[service.key] = Signals(activation=activation_values.get(service.key), **fields)
        return result

    # --- helpers ------------------------------------------------------------------------------

    def _refresh_headers(self) -> None:
        headers = dict(self.config.headers)
        if self.config.bearer_token_file:
            try:
                token = Path(self.config.bearer_token_file).read_text().strip()
            except OSError as error:
                raise MetricsUnavailable(f"cannot read the Prometheus bearer token file: {error}") from error
            headers["Authorization"] = f"Bearer {token}"
        self._client.headers = headers or None

    def _query(self, query: str, at: float) -> list[dict]:
        with self._lock:
            self.queries_sent += 1
        try:
            return self._client.custom_query(query, params={"time": f"{at:.3f}"})
        except PrometheusApiClientException as error:
            raise MetricsUnavailable(f"Prometheus at {self.config.url} answered an error: {error}") from error
        except requests.RequestException as error:
            raise MetricsUnavailable(f"Prometheus at {self.config.url} unreachable: {_cause(error)}") from error
        except ValueError as error:  # a body that is not the API's JSON
            raise MetricsUnavailable(f"Prometheus at {self.config.url} sent an unreadable answer") from error

    def _by_service(self, rows: list[dict]) -> dict[ServiceKey, float]:
        grouping = self.config.grouping
        values: dict[ServiceKey, float] = {}
        for row in rows:
            labels = row.get("metric", {})
            key = (labels.get(grouping.namespace_label, ""), labels.get(grouping.service_label, ""))
            values[key] = float(row["value"][1])  # NaN and +Inf arrive spelled so: float() reads them
        return values

    def _activation(self, future) -> float | None:
        """Sum of the activation query's values; an empty answer means no demand waits (0)."""
        try:
            rows = future.result()
        except MetricsUnavailable:
            return None  # a broken user query must not block the other services
        if len(rows) == 2 and isinstance(rows[1], str):  # a scalar: [time, "value"]
            return float(rows[1])
        return sum(float(row["value"][1]) for row in rows if isinstance(row, dict) and "value" in row)


def _cause(error: Exception) -> str:
    """The root cause in one short line (urllib3 nests it in a retry error; the URL repeats the query)."""
    inner = error.args[0] if error.args else None
    cause = getattr(inner, "reason", None) or inner if isinstance(inner, Exception) else error
    text = re.sub(r"url: /api/v1/query\S*", "url: /api/v1/query", str(cause))
    text = re.sub(r"<urllib3\.connection\.\w+ object at 0x[0-9a-f]+>: ", "", text)
    return f"{type(cause).__name__}: {text if len(text) <= 240 else text[:240] + '...'}"
