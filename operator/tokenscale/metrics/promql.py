"""PromQL for the canonical signals of ALL services at once (pure functions).

Each query selects every serving series (`<service label>!=""`) and groups by namespace and
service label, so a tick costs one query per signal whatever the number of services. Only
validated identifiers reach the query text: metric and label names must match Prometheus'
grammar, label values must be Kubernetes names and windows Prometheus durations, so nothing
can be injected through a name, a label or a setting.

A metric may be stored under two spellings (`vllm:x` and `vllm_x`, see
tokenscale.engines.metric_names). Each spelling is aggregated per pod first, the spellings are
then combined per pod with `max` (a pod seen under both is counted once), and only then
summed per service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenscale.engines.metric_names import EngineMetricNames
from tokenscale.settings import DEFAULT_LONG_RATE_WINDOW, DEFAULT_RATE_WINDOW, DEFAULT_SERVICE_LABEL

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Kubernetes object names: DNS-1123 subdomains (namespaces and services are also labels).
_KUBERNETES_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# A label added while spellings are combined; dropped again by the per-pod `max`.
_SPELLING_LABEL = "tokenscale_spelling"


class PromQLError(ValueError):
    """A name, label or window that may not reach PromQL."""


def metric_name(name: str) -> str:
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise PromQLError(f"not a Prometheus metric name: {name!r}")
    return name


def label_name(name: str) -> str:
    if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
        raise PromQLError(f"not a Prometheus label name: {name!r}")
    return name


def kubernetes_name(value: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _KUBERNETES_NAME.fullmatch(value):
        raise PromQLError(f"not a Kubernetes name: {value!r}")
    return value


def duration(window: str) -> str:
    if not isinstance(window, str) or not _DURATION.fullmatch(window):
        raise PromQLError(f"not a Prometheus duration (e.g. 30s, 2m): {window!r}")
    return window


@dataclass(frozen=True)
class Grouping:
    """The labels that name a service's series in Prometheus.

    Defaults: `namespace`, and `tokenscale_io_service`, the name the Prometheus Operator's
    podTargetLabels gives the pod label `tokenscale.io/service`; `instance` tells pods apart
    (one scrape target per pod).
    """

    namespace_label: str = "namespace"
    service_label: str = DEFAULT_SERVICE_LABEL
    pod_label: str = "instance"

    def __post_init__(self) -> None:
        labels = (self.namespace_label, self.service_label, self.pod_label)
        for label in labels:
            label_name(label)
        if len(set(labels)) != 3:
            raise PromQLError(f"namespace, service and pod labels must differ: {labels}")

    @property
    def service(self) -> str:
        return f"{self.namespace_label}, {self.service_label}"

    @property
    def pod(self) -> str:
        return f"{self.service}, {self.pod_label}"

    def serving(self, name: str) -> str:
        """Every serving series of one metric: the selector all batched queries start from."""
        return f'{metric_name(name)}{{{self.service_label}!=""}}'

    def one_service(self, namespace: str, name: str) -> str:
        """Matchers for one service, e.g. to compose a per-service query from a batched one."""
        return (
            f'{self.namespace_label}="{kubernetes_name(namespace)}", '
            f'{self.service_label}="{kubernetes_name(name)}"'
        )


def _combine_spellings(parts: list[str], by: str) -> str:
    """Per-pod expressions, one per spelling, combined per pod with max (never added)."""
    if not parts:
        raise PromQLError("no metric names given")
    if len(parts) == 1:
        return parts[0]
    tagged = [f'label_replace({part}, "{_SPELLING_LABEL}", "{i}", "", "")' for i, part in enumerate(parts)]
    return f"max by ({by}) ({' or '.join(tagged)})"


def counter_rate(names: tuple[str, ...], window: str, grouping: Grouping) -> str:
    """Per-second rate of a counter, summed over each service's pods."""
    window = duration(window)
    per_pod = [f"sum by ({grouping.pod}) (rate({grouping.serving(name)}[{window}]))" for name in names]
    inner = _combine_spellings(per_pod, grouping.pod)
    return f"sum by ({grouping.service}) ({inner})"


def counter_ratio(
    numerator: tuple[str, ...], denominator: tuple[str, ...], window: str, grouping: Grouping
) -> str:
    """One counter's rate over another's, per service (e.g. generated tokens per finished request)."""
    return f"{counter_rate(numerator, window, grouping)} / {counter_rate(denominator, window, grouping)}"


def gauge_sum(names: tuple[str, ...], grouping: Grouping) -> str:
    """A gauge summed over each service's pods (queue depth, running requests)."""
    per_pod = [f"sum by ({grouping.pod}) ({grouping.serving(name)})" for name in names]
    inner = _combine_spellings(per_pod, grouping.pod)
    return f"sum by ({grouping.service}) ({inner})"


def gauge_mean(names: tuple[str, ...], grouping: Grouping) -> str:
    """A gauge averaged over each service's pods (KV-cache use 0..1)."""
    per_pod = [f"avg by ({grouping.pod}) ({grouping.serving(name)})" for name in names]
    inner = _combine_spellings(per_pod, grouping.pod)
    return f"avg by ({grouping.service}) ({inner})"


def histogram_quantile(quantile: float, names: tuple[str, ...], window: str, grouping: Grouping) -> str:
    """A quantile of a histogram (base names) over each service's pods, from bucket rates."""
    if not 0.0 <= float(quantile) <= 1.0:
        raise PromQLError(f"quantile must lie in [0, 1]: {quantile!r}")
    window = duration(window)
    by = f"{grouping.pod}, le"
    per_pod = [f"sum by ({by}) (rate({grouping.serving(name + '_bucket')}[{window}]))" for name in names]
    inner = _combine_spellings(per_pod, by)
    return f"histogram_quantile({float(quantile)!r}, sum by ({grouping.service}, le) ({inner}))"


def newest_sample_age(names: tuple[str, ...], grouping: Grouping) -> str:
    """Seconds since each service's newest sample of a gauge every pod exports."""
    per_pod = [f"max by ({grouping.pod}) (timestamp({grouping.serving(name)}))" for name in names]
    inner = _combine_spellings(per_pod, grouping.pod)
    return f"time() - max by ({grouping.service}) ({inner})"


def pods_reporting(names: tuple[str, ...], grouping: Grouping) -> str:
    """How many pods of each service export a gauge."""
    per_pod = [f"count by ({grouping.pod}) ({grouping.serving(name)})" for name in names]
    inner = _combine_spellings(per_pod, grouping.pod)
    return f"count by ({grouping.service}) ({inner})"


@dataclass(frozen=True)
class Windows:
    """Rate windows. Each must hold at least two scrapes: 4x the scrape interval is safe."""

    short: str = DEFAULT_RATE_WINDOW
    long: str = DEFAULT_LONG_RATE_WINDOW

    def __post_init__(self) -> None:
        duration(self.short)
        duration(self.long)


TTFT_QUANTILE = 0.9
TTFT_SLO_QUANTILE = 0.99  # for SLOs above the 90th percentile (the capacity learner)


def signal_queries(names: EngineMetricNames, windows: Windows, grouping: Grouping) -> dict[str, str]:
    """One engine family's batched queries, keyed by the tokenscale.policy.types.Signals field
    they fill. Signals the engine does not export are left out."""
    queries = {
        "tokens_per_second": counter_rate(names.generated_tokens, windows.short, grouping),
        "tokens_per_second_long": counter_rate(names.generated_tokens, windows.long, grouping),
        "prompt_tokens_per_second": counter_rate(names.prompt_tokens, windows.short, grouping),
        "queue_depth": gauge_sum(names.queue_depth, grouping),
        "running_requests": gauge_sum(names.running_requests, grouping),
        "sample_age_seconds": newest_sample_age(names.queue_depth, grouping),
        "ready_pods_reporting": pods_reporting(names.queue_depth, grouping),
    }
    if names.finished_requests:
        queries["mean_output_tokens"] = counter_ratio(
            names.generated_tokens, names.finished_requests, windows.long, grouping
        )
    if names.kv_cache_usage:
        queries["kv_cache_usage"] = gauge_mean(names.kv_cache_usage, grouping)
    if names.ttft_histogram:
        queries["ttft_p90_seconds"] = histogram_quantile(
            TTFT_QUANTILE, names.ttft_histogram, windows.short, grouping
        )
        queries["ttft_p99_seconds"] = histogram_quantile(
            TTFT_SLO_QUANTILE, names.ttft_histogram, windows.short, grouping
        )
    return queries
