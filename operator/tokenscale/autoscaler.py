"""The autoscaler's I/O glue: one shared Prometheus snapshot per tick, decide, act, explain.

Every InferenceService gets a tick (handlers.py calls `Autoscaler.tick` every
Settings.tick_seconds). A tick reads the service's signals from a snapshot shared by all
services (`SignalSnapshots`: one batched Prometheus read per tick, whatever the number of
services), calls the pure `tokenscale.policy.decide`, scales the Deployment only when the
decision changes it (never in DryRun), and writes status: desired/recommended replicas,
signals, the last 10 decisions, the policy's history (so a restarted operator resumes),
conditions MetricsAvailable / ScalingActive / ScalingLimited, and the cost per million tokens.
Manual mode (autoscaling off) is applied by the reconcile handlers; here it only reports.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from tokenscale import reconcile
from tokenscale.api import AutoscalingMode, InferenceServiceSpec, SpecError, parse_spec, parse_status
from tokenscale.api.models import DecisionRecord, SignalsStatus
from tokenscale.build import conditions
from tokenscale.build.labels import SERVICE_LABEL
from tokenscale.metrics.promql import Grouping, Windows
from tokenscale.metrics.source import (
    MetricsUnavailable,
    PrometheusConfig,
    PrometheusSource,
    ServiceKey,
    ServiceRef,
)
from tokenscale.observability import OperatorMetrics
from tokenscale.policy import Decision, ReplicaState, Signals, decide, history_from_status, history_to_status
from tokenscale.settings import Settings

log = logging.getLogger("tokenscale.autoscaler")

METRICS_AVAILABLE = "MetricsAvailable"
SCALING_ACTIVE = "ScalingActive"
SCALING_LIMITED = "ScalingLimited"
DECISIONS_KEPT = 10
MERGE_PATCH = "application/merge-patch+json"

Announce = Callable[[str, str, str], None]  # (type Normal/Warning, reason, message) -> an Event


def source_config(settings: Settings) -> PrometheusConfig | None:
    """The Prometheus client configuration from the operator's settings (None: no Prometheus)."""
    if not settings.prometheus_url:
        return None
    return PrometheusConfig(
        url=settings.prometheus_url,
        bearer_token_file=settings.prometheus_bearer_token_file,
        username=settings.prometheus_username,
        password_file=settings.prometheus_password_file,
        ca_file=settings.prometheus_ca_file,
        insecure=settings.prometheus_insecure,
        headers=tuple(settings.prometheus_headers),
        timeout_seconds=settings.prometheus_timeout,
        grouping=Grouping(namespace_label=settings.namespace_label, service_label=settings.service_label),
        windows=Windows(short=settings.rate_window, long=settings.long_rate_window),
    )


# --- the shared snapshot ----------------------------------------------------------------------


@dataclass
class _Snapshot:
    taken_at: float
    covers: frozenset[ServiceRef]
    signals: dict[ServiceKey, Signals] = field(default_factory=dict)
    error: str | None = None


class SignalSnapshots:
    """One Prometheus read per tick for every service; each service's tick takes its share.

    The first service to tick after the snapshot is a tick old (or that the snapshot does not
    cover: a new service, a changed engine or activation query) refreshes it for all known
    services; the others reuse it. A failed read is shared too: an outage costs one request
    per tick, not one per service. Services unseen for three ticks are forgotten.
    """

    def __init__(self, source: PrometheusSource | None, tick_seconds: float, clock: Callable[[], float] = time.time,
                 missing_reason: str = "no Prometheus configured (--prometheus-url)",
                 metrics: OperatorMetrics | None = None):
        self.source = source
        self.metrics = metrics
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.missing_reason = missing_reason
        self._lock = threading.Lock()
        self._seen: dict[ServiceKey, tuple[ServiceRef, float]] = {}
        self._snapshot: _Snapshot | None = None
        self.reads = 0

    def get(self, ref: ServiceRef) -> tuple[Signals, str | None]:
        """This service's signals and, when Prometheus could not be read, why."""
        if self.source is None:
            return Signals(), self.missing_reason
        with self._lock:
            now = self.clock()
            self._seen[ref.key] = (ref, now)
            for key, (_, seen) in list(self._seen.items()):
                if now - seen > 3 * self.tick_seconds:
                    del self._seen[key]
            snapshot = self._snapshot
            stale = snapshot is None or now - snapshot.taken_at >= self.tick_seconds * 0.95
            if stale or ref not in snapshot.covers:
                snapshot = self._snapshot = self._read(now)
        if snapshot.error is not None:
            return Signals(), snapshot.error
        return snapshot.signals.get(ref.key, Signals()), None

    def _read(self, now: float) -> _Snapshot:
        refs = frozenset(ref for ref, _ in self._seen.values())
        self.reads += 1
        assert self.source is not None
        sent_before = getattr(self.source, "queries_sent", 0)
        try:
            return _Snapshot(now, refs, self.source.read(refs, at=now))
        except MetricsUnavailable as error:
            log.warning("signals unavailable for %d service(s): %s", len(refs), error)
            if self.metrics is not None:
                self.metrics.read_failed()
            return _Snapshot(now, refs, error=str(error))
        finally:
            if self.metrics is not None:
                self.metrics.queries_sent(getattr(self.source, "queries_sent", 0) - sent_before)


# --- one service's tick -----------------------------------------------------------------------


def _rfc3339(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reason(rule: str) -> str:
    """A condition reason (CamelCase) from a policy rule name such as hold:metricsUnavailable."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", rule) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) or "Unknown"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def signals_status(signals: Signals, at: float) -> dict[str, Any]:
    values = {name: _finite(getattr(signals, name)) for name in (
        "tokens_per_second", "tokens_per_second_long", "prompt_tokens_per_second", "queue_depth",
        "running_requests", "kv_cache_usage", "ttft_p90_seconds", "activation", "sample_age_seconds")}
    rounded = {k: (round(v, 3) if v is not None else None) for k, v in values.items()}
    return SignalsStatus(**rounded, sampled_at=_rfc3339(at)).model_dump(by_alias=True, exclude_none=True, mode="json")


def cost_per_million_tokens(spec: InferenceServiceSpec, replicas: int, tokens_per_second: float | None) -> float | None:
    """GPU cost of the replicas running now, per million generated tokens at the current rate."""
    if spec.cost_per_gpu_hour is None or tokens_per_second is None or not math.isfinite(tokens_per_second):
        return None
    if tokens_per_second <= 0:
        return None
    dollars_per_second = replicas * spec.resources.gpus * spec.cost_per_gpu_hour / 3600.0
    return round(dollars_per_second / tokens_per_second * 1e6, 4)


def seconds_to_next_tick(now: float, tick_seconds: float) -> float:
    """Time to the next multiple of the tick on the wall clock. Ticks on a fixed grid do not drift
    by their own duration (a tick every `tick + duration` would add to the reaction time), and the
    services of one operator tick together, so they share one snapshot of the signals."""
    return tick_seconds - (now % tick_seconds)


class Autoscaler:
    """Ticks of all services of one operator: shares the snapshot, the clients, the clock."""

    def __init__(self, kube: reconcile.Kube, settings: Settings, *, clock: Callable[[], float] = time.time,
                 source: PrometheusSource | None = None):
        self.kube = kube
        self.settings = settings
        self.clock = clock
        config = source_config(settings)
        if source is None and config is not None:
            source = PrometheusSource(config)
        self.metrics = OperatorMetrics()
        if settings.metrics_address:
            host, port = self.metrics.serve(settings.metrics_address)
            log.info("serving the operator's metrics on http://%s:%d/metrics", host, port)
        self.snapshots = SignalSnapshots(source, settings.tick_seconds, clock, metrics=self.metrics)
        # Ticks run on their own threads: while one waits on a slow Prometheus (the others wait
        # for its snapshot), kopf's default executor stays free for the reconcile handlers.
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="autoscale")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
        if self.snapshots.source is not None:
            self.snapshots.source.close()

    async def tick_async(self, owner: dict[str, Any], announce: Announce | None = None) -> Decision | None:
        """`tick` on the autoscaler's threads, keeping the caller's context (kopf posts Events from it)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, context.run, self.tick, owner, announce)

    def tick(self, owner: dict[str, Any], announce: Announce | None = None) -> Decision | None:
        """Decide for one InferenceService and act. None: nothing to decide.

        `owner` names the object; its current state is read again, because the policy's history
        and the decisions live in status and a watch event may not have arrived since the last tick.
        """
        meta = owner.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        if not namespace or not name:
            return None
        started = time.perf_counter()
        decision = self._tick(namespace, name, announce)
        if decision is None:
            self.metrics.forget(namespace, name)  # deleted, invalid or not autoscaled: no series
        self.metrics.tick_duration.observe(time.perf_counter() - started)
        return decision

    def forget(self, namespace: str, name: str) -> None:
        """The service is gone from this operator (deleted, or its daemon stopped): drop its series."""
        self.metrics.forget(namespace, name)

    def _tick(self, namespace: str, name: str, announce: Announce | None) -> Decision | None:
        owner = reconcile.read_service(self.kube, namespace, name) or {}
        if not owner or (owner.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            spec = parse_spec(owner.get("spec"))
        except SpecError:
            return None  # reported as Degraded by the reconcile handler
        deployment = reconcile.Children(self.kube, "Deployment").read(namespace, name)
        if deployment is None:
            return None  # the reconcile handler creates it
        scaling = spec.autoscaling
        current = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        status = owner.get("status") or {}
        if not scaling.enabled:
            self._write_manual(owner, status)
            return None

        unschedulable = self._unschedulable(namespace, name) if ready < current else 0
        replicas = ReplicaState(current=current, ready=min(ready, current), unschedulable=unschedulable)
        activation = scaling.activation.query if scaling.activation and scaling.min_replicas == 0 else None
        ref = ServiceRef(namespace, name, spec.engine.type, activation)
        signals, unavailable = self.snapshots.get(ref)
        now = self.clock()
        history = history_from_status(parse_status(status).autoscaler)
        decision = decide(signals, scaling, replicas, history, now)

        acts = scaling.mode == AutoscalingMode.Active
        scaled = False
        if acts and decision.changed:
            scaled = self._scale(namespace, name, decision.desired)
            if scaled and announce is not None:
                verb = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
                announce("Normal", verb, decision.reason)
        self._write(owner, status, spec, decision, signals, unavailable, now, scaled, acts, unschedulable)
        self.metrics.record(
            namespace, name, desired=decision.desired if acts else decision.current,
            recommended=decision.desired, ready=replicas.ready,
            metrics_available=decision.metrics_available and unavailable is None,
            scaling_limited=decision.scaling_limited, tokens_per_second=signals.tokens_per_second,
            queue_depth=signals.queue_depth, limited_by=decision.limited_by,
            scaled=("up" if decision.desired > decision.current else "down") if scaled else None)
        return decision

    # --- cluster I/O ----------------------------------------------------------------------------

    def _unschedulable(self, namespace: str, name: str) -> int:
        """Pods of this service that the scheduler could not place (e.g. no free GPU)."""
        try:
            pods = self.kube.core.list_namespaced_pod(namespace, label_selector=f"{SERVICE_LABEL}={name}").items
        except kubernetes.client.ApiException as error:
            log.warning("cannot list pods of %s/%s: %s", namespace, name, error.reason)
            return 0
        count = 0
        for pod in pods:
            if (pod.metadata.labels or {}).get(SERVICE_LABEL) != name or pod.metadata.deletion_timestamp:
                continue
            for condition in (pod.status.conditions if pod.status else None) or []:
                if condition.type == "PodScheduled" and condition.status == "False" \
                        and condition.reason == "Unschedulable":
                    count += 1
        return count

    def _scale(self, namespace: str, name: str, replicas: int) -> bool:
        try:
            self.kube.apps.patch_namespaced_deployment(
                name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def _write(self, owner: dict[str, Any], status: dict[str, Any], spec: InferenceServiceSpec, decision: Decision,
               signals: Signals, unavailable: str | None, now: float, scaled: bool, acts: bool,
               unschedulable: int) -> None:
        generation = (owner.get("metadata") or {}).get("generation")
        stamp = _rfc3339(now)
        patch: dict[str, Any] = {
            "desiredReplicas": decision.desired if acts else decision.current,
            "recommendedReplicas": decision.desired,
            "autoscaler": history_to_status(decision.history).model_dump(by_alias=True, mode="json"),
            "costPerMillionTokens": cost_per_million_tokens(
                spec, decision.desired if scaled else decision.current, _finite(signals.tokens_per_second)),
        }
        if unavailable is None:
            patch["signals"] = signals_status(signals, now)
        if scaled:
            patch["lastScaleTime"] = stamp
        decisions = list(status.get("decisions") or [])
        last = decisions[-1] if decisions else None
        news = last is None or (last.get("toReplicas"), last.get("limitedBy")) != (decision.desired, decision.limited_by)
        if news or (scaled and decision.changed):
            record = DecisionRecord(time=stamp, from_replicas=decision.current, to_replicas=decision.desired,
                                    recommendations=decision.recommendations, limited_by=decision.limited_by,
                                    reason=decision.reason)
            decisions = (decisions + [record.model_dump(by_alias=True, mode="json")])[-DECISIONS_KEPT:]
            patch["decisions"] = decisions

        found = decision.metrics_available and unavailable is None
        if unavailable is not None:
            cause = "NoPrometheus" if self.snapshots.source is None else "PrometheusUnavailable"
            metrics = (False, cause, unavailable)
        elif not decision.metrics_available:
            metrics = (False, "MetricsMissing", decision.reason)
        else:
            metrics = (True, "SignalsRead", "signals read from Prometheus")
        if not acts:
            active = (False, "DryRun", f"DryRun: recommends {decision.desired} replica(s), never acts")
        elif not found:
            active = (False, "MetricsUnavailable", "holding the replica count until metrics return")
        else:
            active = (True, "Active", "scaling on throughput (status.decisions explains each step)")
        if decision.scaling_limited:
            rule = "unschedulable" if unschedulable else decision.limited_by or "limited"
            limited = (True, _reason(rule), decision.scaling_limited_reason or decision.reason)
        else:
            limited = (False, "WithinLimits", "")
        for key in ("costPerMillionTokens",):  # null removes a stale value; absent stays absent
            if patch[key] is None and key not in status:
                del patch[key]
        wanted = ((METRICS_AVAILABLE, metrics), (SCALING_ACTIVE, active), (SCALING_LIMITED, limited))
        if not all(conditions.condition_is(status.get("conditions"), kind, *value) for kind, value in wanted):
            # conditions is one list shared with the reconcile handler and a merge patch replaces
            # it whole: write it only when ours change, on the freshest copy.
            fresh = reconcile.read_service(self.kube, owner["metadata"]["namespace"], owner["metadata"]["name"])
            if fresh is None:
                return
            items = (fresh.get("status") or {}).get("conditions")
            for kind, (state, reason, message) in wanted:
                items = conditions.set_condition(items, kind, state, reason, message,
                                                 observed_generation=generation, at=stamp)
            patch["conditions"] = items
            owner = fresh
        reconcile.write_status(self.kube, owner, patch)

    def _write_manual(self, owner: dict[str, Any], status: dict[str, Any]) -> None:
        wanted = (False, "AutoscalingDisabled", "autoscaling.enabled is false: spec.replicas is applied "
                  "(kubectl scale works)")
        if conditions.condition_is(status.get("conditions"), SCALING_ACTIVE, *wanted):
            return
        items = conditions.set_condition(status.get("conditions"), SCALING_ACTIVE, *wanted,
                                         observed_generation=(owner.get("metadata") or {}).get("generation"))
        reconcile.write_status(self.kube, owner, {"conditions": items})
