"""The autoscaler: one tick for the whole fleet — observe, decide, plan, act.

- observe: every InferenceService, its Deployment and its pods that cannot start, from watched
  state (`WatchedState`, an informer-style cache fed by kopf's watch streams), and one
  Prometheus snapshot for all services (one query per signal). No per-tick GETs.
- decide: `policy.decide` per service (pure).
- plan: `desired.tickplan.plan_tick` per service (pure): the status patch (only on a material
  change or the heartbeat), the scale, the conditions, the Events.
- act: only what the plans say, with bounded concurrency (the kubernetes client is synchronous:
  its calls run on a bounded thread pool, each with a timeout), every write at the
  resourceVersion that was observed, so a stale view meets a 409 and waits for the next tick
  instead of acting on it. One failing or slow service delays no other: errors are caught and
  reported per service, and a service whose last writes are still in flight is skipped.

The policy's memory lives in status.autoscaler (written with every material change) and, between
writes, in this process; a restarted operator resumes from the status (docs/operator.md says
what is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tokenscale import reconcile
from tokenscale.api import (
    API_VERSION,
    KIND,
    InferenceServiceSpec,
    SpecError,
    parse_spec,
    parse_status,
)
from tokenscale.desired import selector_string
from tokenscale.desired.pods import PodHealth, PodProblem
from tokenscale.desired.routing import with_activation
from tokenscale.desired.tickplan import (
    PlanSettings,
    TickInput,
    TickPlan,
    condition_reason,
    cost_per_million_tokens,
    plan_tick,
    signals_status,
)
from tokenscale.kube import MERGE_PATCH, ApiException
from tokenscale.metrics.promql import Grouping, Windows
from tokenscale.metrics.source import (
    MetricsUnavailable,
    PrometheusConfig,
    PrometheusSource,
    ServiceKey,
    ServiceRef,
)
from tokenscale.observability import OperatorMetrics
from tokenscale.policy import Decision, History, ReplicaState, Signals, decide, history_from_status
from tokenscale.settings import Settings
from tokenscale.watched import DeploymentView, ServiceView, WatchedState, deployment_view, service_view

log = logging.getLogger("tokenscale.autoscaler")

_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
PostEvent = Callable[[dict[str, Any], str, str, str], None]  # (object, type, reason, message)

__all__ = ["Autoscaler", "DeploymentView", "ServiceView", "WatchedState", "condition_reason", "cost_per_million_tokens",
           "deployment_view", "seconds_to_next_tick", "service_view", "signals_status", "source_config"]


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


def seconds_to_next_tick(now: float, tick_seconds: float) -> float:
    """Time to the next multiple of the tick on the wall clock. Ticks on a fixed grid do not drift
    by their own duration (a tick every `tick + duration` would add to the reaction time)."""
    return tick_seconds - (now % tick_seconds)


# --- the tick -----------------------------------------------------------------------------------


@dataclass
class _Memory:
    """What this process remembers of a service between status writes."""

    uid: str
    history: History | None = None
    last_write: float | None = None  # when the signals were last written
    decided_at: float | None = None  # the last tick that decided for it
    busy: bool = False  # its writes from an earlier tick are still in flight


@dataclass
class TickReport:
    """What one tick did: for the operator's metrics and the benchmark."""

    started: float
    services: int = 0
    decided: int = 0
    planned_writes: int = 0
    status_writes: int = 0
    scales: int = 0
    events: int = 0
    errors: int = 0
    skipped_busy: int = 0
    requests: Counter = field(default_factory=Counter)  # verb -> API requests the act step made
    seconds: float = 0.0


@dataclass(eq=False)
class _Job:
    view: ServiceView
    plan: TickPlan
    decision: Decision | None
    memory: _Memory
    deployment_version: str = ""  # the Deployment's resourceVersion the decision saw
    spec: InferenceServiceSpec | None = None


class Autoscaler:
    """The fleet's ticks: shares the snapshot, the clients, the clock, and the memory."""

    def __init__(self, kube: reconcile.Kube | None, settings: Settings, *, clock: Callable[[], float] = time.time,
                 source: PrometheusSource | None = None, metrics: OperatorMetrics | None = None,
                 post_event: PostEvent | None = None):
        self.kube = kube
        self.settings = settings
        self.clock = clock
        config = source_config(settings)
        if source is None and config is not None:
            source = PrometheusSource(config)
        self.source = source
        self.metrics = metrics or OperatorMetrics()
        self.post_event = post_event
        self.memory: dict[ServiceKey, _Memory] = {}
        self.plan_settings = PlanSettings(signal_band=settings.signal_band,
                                          heartbeat_seconds=settings.heartbeat_ticks * settings.tick_seconds,
                                          slack_seconds=settings.tick_seconds / 2)
        self.concurrency = max(1, settings.write_concurrency)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="autoscale")
        self._specs: dict[tuple[str, int | None], InferenceServiceSpec | None] = {}
        self._parsed: dict[int, tuple[Mapping[str, Any], InferenceServiceSpec | None]] = {}  # id(its dict) -> (dict, model)
        self._outage: str | None = None
        self._pending: set[asyncio.Task] = set()
        self.last_report: TickReport | None = None
        self.routes: Any = None  # activation.Routes: set by the operator's startup (scale from zero)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.source is not None:
            self.source.close()

    # --- observe ---------------------------------------------------------------------------------

    def _spec(self, view: ServiceView) -> InferenceServiceSpec | None:
        key = (view.uid, view.generation)
        if key not in self._specs:
            # Services with the same spec share its dict (WatchedState) and here its parsed model
            # (about 7 kB each: 70 MB at 10,000 services if every service had its own).
            shared = self._parsed.get(id(view.spec))
            if shared is None or shared[0] is not view.spec:
                try:
                    parsed = parse_spec(dict(view.spec))
                except SpecError:
                    parsed = None  # reported as Degraded by the reconcile handler
                shared = self._parsed[id(view.spec)] = (view.spec, parsed)
            self._specs[key] = shared[1]
        return self._specs[key]

    def _endpoint(self, view: ServiceView, spec: InferenceServiceSpec) -> str:
        return reconcile.endpoint(self.settings, {"metadata": {"name": view.name, "namespace": view.namespace}}, spec)

    def read_signals(self, refs: Iterable[ServiceRef], now: float) -> tuple[dict[ServiceKey, Signals], str | None]:
        """One Prometheus read for every service; an outage is logged when it starts and ends."""
        if self.source is None:
            return {}, "no Prometheus configured (--prometheus-url)"
        refs = list(refs)
        if not refs:
            return {}, None
        sent_before = self.source.queries_sent
        try:
            signals = self.source.read(refs, at=now)
        except MetricsUnavailable as error:
            self.metrics.read_failed()
            if self._outage is None:
                log.warning("Prometheus unavailable: %s; holding every service's replica count until it returns",
                            error)
            self._outage = str(error)
            return {}, str(error)
        finally:
            self.metrics.queries_sent(self.source.queries_sent - sent_before)
        if self._outage is not None:
            log.warning("Prometheus is back (signals read for %d service(s))", len(refs))
            self._outage = None
        return signals, None

    # --- decide and plan (pure work, on a worker thread) ------------------------------------------

    def plan_all(self, services: list[ServiceView], deployments: Mapping[ServiceKey, DeploymentView],
                 problems: Mapping[ServiceKey, list[PodProblem]], now: float) -> list[_Job]:
        """Read the signals once, then decide and plan every service."""
        live = {(v.namespace, v.name) for v in services}
        for key in [k for k in self.memory if k not in live]:
            del self.memory[key]
            self.metrics.forget(*key)
        if len(self._specs) > 2 * len(services) + 100:
            self._specs.clear()
            self._parsed.clear()
        candidates = []
        for view in services:
            key = (view.namespace, view.name)
            deployment = deployments.get(key)
            if view.deleting or deployment is None or (deployment["metadata"]["owners"]
                                                       and view.uid not in deployment["metadata"]["owners"]):
                continue  # going away, or its Deployment is not created yet (the reconcile handler's job)
            spec = self._spec(view)
            if spec is None:
                continue
            candidates.append((view, spec, deployment))
        refs = []
        for view, spec, _ in candidates:
            scaling = spec.autoscaling
            if scaling.enabled:
                activation = scaling.activation.query if scaling.activation and scaling.min_replicas == 0 else None
                refs.append(ServiceRef(view.namespace, view.name, spec.engine.type, activation))
        signals, unavailable = self.read_signals(refs, now)
        jobs = []
        for view, spec, deployment in candidates:
            key = (view.namespace, view.name)
            memory = self.memory.get(key)
            if memory is None or memory.uid != view.uid:
                memory = self.memory[key] = _Memory(uid=view.uid)
            if memory.busy:
                continue
            jobs.append(self._plan_one(view, spec, deployment, problems.get(key, []), signals.get(key, Signals()),
                                       unavailable, memory, now))
        return jobs

    def _plan_one(self, view: ServiceView, spec: InferenceServiceSpec, deployment: DeploymentView,
                  problems: list[PodProblem], signals: Signals, unavailable: str | None, memory: _Memory,
                  now: float) -> _Job:
        current = int(deployment["spec"].get("replicas", 1) or 0)
        ready = int(deployment["status"].get("readyReplicas") or 0)
        health = PodHealth.of(problems)
        replicas = ReplicaState(current=current, ready=min(ready, current), unschedulable=len(health.unschedulable),
                                failing=min(len(health.failing), max(0, current - ready)),
                                failing_reason=health.reason)
        decision = None
        if spec.autoscaling.enabled:
            history = memory.history
            if history is None:
                history = history_from_status(parse_status(view.full_status()).autoscaler)
            observed = with_activation(signals if unavailable is None else Signals(), spec,
                                       view.activation_requested_at, now)
            decision = decide(observed, spec.autoscaling, replicas, history, now)
        plan = plan_tick(TickInput(
            name=view.name, namespace=view.namespace, generation=view.generation, spec=spec, status=view.status,
            decision=decision, signals=signals, unavailable=unavailable, no_prometheus=self.source is None,
            replicas=replicas, pods=health, deployment=deployment,
            endpoint=self._endpoint(view, spec), selector=selector_string(view.name),
            now=now, last_write=memory.last_write, settings=self.plan_settings))
        if decision is not None:
            self.metrics.record(
                view.namespace, view.name, desired=decision.desired if plan.scale_to is not None else decision.current,
                recommended=decision.desired, ready=replicas.ready,
                metrics_available=decision.metrics_available and unavailable is None,
                scaling_limited=decision.scaling_limited, tokens_per_second=signals.tokens_per_second,
                queue_depth=signals.queue_depth, limited_by=decision.limited_by, scaled=None)
        else:
            self.metrics.forget(view.namespace, view.name)
        return _Job(view=view, plan=plan, decision=decision, memory=memory, spec=spec,
                    deployment_version=deployment["metadata"]["resourceVersion"])

    # --- act --------------------------------------------------------------------------------------

    async def _request(self, report: TickReport, method: str, path: str, body: Any,
                       content_type: str = MERGE_PATCH) -> dict[str, Any]:
        """One API request on the bounded pool, with the request timeout."""
        assert self.kube is not None
        report.requests[_VERBS[method]] += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: self.kube.request(
            method, path, body, content_type=content_type, timeout=self.settings.request_timeout))

    async def _act(self, job: _Job, report: TickReport, now: float) -> None:
        view, plan, memory = job.view, job.plan, job.memory
        assert self.kube is not None
        try:
            scaled = False
            if plan.scale_to is not None and await self._may_scale(job):
                scaled = await self._scale(job, report)
            patch = plan.status_patch
            if patch is not None and plan.scale_to is not None and not scaled:
                patch = {k: v for k, v in patch.items() if k not in ("lastScaleTime", "decisions", "desiredReplicas")}
            wrote = False
            if patch:
                wrote = await self._write_status(view, patch, report)
                report.status_writes += int(wrote)
                if wrote and "signals" in patch:
                    memory.last_write = now
            if job.decision is not None and (scaled or plan.scale_to is None):
                memory.history = job.decision.history
            for event in plan.events:
                if event.after_scale and not scaled:
                    continue
                await self._post(view, event.type, event.reason, event.message, report, now)
            if scaled and job.decision is not None:
                self.metrics.scaled(view.namespace, view.name,
                                    "up" if job.decision.desired > job.decision.current else "down")
        except Exception as error:  # one service's failure is reported on it alone
            report.errors += 1
            self.metrics.tick_error()
            log.warning("autoscaling %s/%s failed: %s", view.namespace, view.name, reconcile.api_error_message(error))
        finally:
            memory.busy = False

    async def _post(self, view: ServiceView, kind: str, reason: str, message: str, report: TickReport,
                    now: float) -> None:
        """A core/v1 Event on the InferenceService, as kopf posts them (from the tick's own pool)."""
        if self.post_event is not None:  # tests
            self.post_event(view.owner(), kind, reason, message)
            return
        assert self.kube is not None
        stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": "tokenscale-", "namespace": view.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": view.name,
                               "namespace": view.namespace, "uid": view.uid},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": "tokenscale"}, "reportingComponent": "tokenscale",
            "reportingInstance": self.settings.instance, "firstTimestamp": stamp, "lastTimestamp": stamp,
            "count": 1,
        }
        await self._request(report, "POST", f"/api/v1/namespaces/{view.namespace}/events", body,
                            content_type="application/json")
        report.events += 1

    async def _may_scale(self, job: _Job) -> bool:
        """Before the last replica is asked to stop, the service's traffic is routed to the activator
        (activation.Routes); when that cannot be done it stays at one replica this tick."""
        if job.plan.scale_to != 0 or self.routes is None or job.spec is None:
            return True
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(self.pool, self.routes.before_scale_to_zero, job.view.owner(), job.spec)
        if not ready:
            log.warning("not scaling %s/%s to zero: no ready activator pod to route its requests to",
                        job.view.namespace, job.view.name)
        return ready

    async def _scale(self, job: _Job, report: TickReport) -> bool:
        """Set the Deployment's replicas at the resourceVersion the decision saw (409: it moved on)."""
        assert self.kube is not None and job.plan.scale_to is not None
        view = job.view
        body = {"spec": {"replicas": job.plan.scale_to}}
        if job.deployment_version:
            body["metadata"] = {"resourceVersion": job.deployment_version}
        try:
            await self._request(report, "PATCH", f"/apis/apps/v1/namespaces/{view.namespace}/deployments/{view.name}",
                                body)
        except ApiException as error:
            if error.status in (404, 409):
                log.info("not scaling %s/%s this tick: its Deployment changed since it was observed",
                         view.namespace, view.name)
                return False
            raise
        report.scales += 1
        return True

    async def _write_status(self, view: ServiceView, patch: dict[str, Any], report: TickReport) -> bool:
        """Patch status at the observed resourceVersion; on a 409, merge onto a fresh read."""
        assert self.kube is not None
        body = {"metadata": {"resourceVersion": view.resource_version}, "status": patch}
        try:
            await self._request(report, "PATCH", reconcile.service_path(view.namespace, view.name, "status"), body)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            if error.status != 409:
                raise
        report.requests["get"] += 1
        report.requests["patch"] += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, reconcile.write_status, self.kube, view.owner(), patch)

    # --- one tick -----------------------------------------------------------------------------------

    async def tick(self, services: list[ServiceView], deployments: Mapping[ServiceKey, DeploymentView],
                   problems: Mapping[ServiceKey, list[PodProblem]]) -> TickReport:
        """Observe (already done by the caller from watched state), decide, plan, act."""
        now = self.clock()
        started = time.perf_counter()
        report = TickReport(started=now, services=len(services))
        jobs = await asyncio.get_running_loop().run_in_executor(
            None, self.plan_all, services, deployments, problems, now)
        report.decided = len(jobs)
        for job in jobs:
            job.memory.decided_at = now
        work = [job for job in jobs if job.plan.status_patch is not None or job.plan.scale_to is not None
                or job.plan.events]
        report.planned_writes = sum(1 for job in work if job.plan.status_patch is not None)
        # Jobs without writes only move the in-memory history on.
        acting = {id(job) for job in work}
        for job in jobs:
            if id(job) not in acting and job.decision is not None:
                job.memory.history = job.decision.history
        semaphore = asyncio.Semaphore(self.concurrency)

        async def bounded(job: _Job) -> None:
            async with semaphore:
                await self._act(job, report, now)

        tasks = []
        for job in work:
            job.memory.busy = True
            task = asyncio.ensure_future(bounded(job))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            tasks.append(task)
        if tasks:
            # A slow API server delays the next tick at most to its grid point; writes still in flight
            # then keep their services out of that tick (counted as behind), never the others.
            budget = max(0.5, self.settings.tick_seconds * 0.9 - (time.perf_counter() - started))
            await asyncio.wait(tasks, timeout=budget)
        report.seconds = time.perf_counter() - started
        report.skipped_busy = sum(1 for m in self.memory.values() if m.busy)
        self._observe(report, now)
        self.last_report = report
        return report

    def _observe(self, report: TickReport, now: float) -> None:
        decided = [m.decided_at for m in self.memory.values() if m.decided_at is not None]
        oldest = now - min(decided) if decided else 0.0
        behind = sum(1 for m in self.memory.values()
                     if m.decided_at is None or now - m.decided_at > 2 * self.settings.tick_seconds or m.busy)
        self.metrics.tick_done(seconds=report.seconds, requests=dict(report.requests), writes=report.status_writes,
                               oldest_decision_age=oldest, behind=behind, services=len(self.memory))

    async def drain(self) -> None:
        """Wait for writes still in flight (tests, shutdown)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self.settings.request_timeout)


# --- the loop -------------------------------------------------------------------------------------


class PeeringGate:
    """Under --peering, act only while this replica is the one kopf lets run (the highest priority
    of the live peers, alone at it: kopf's own rule); one GET of the peering object per tick."""

    def __init__(self, kube: reconcile.Kube | None, settings: Settings):
        self.kube, self.settings = kube, settings
        self.active_since: float | None = None

    def active(self, now: float) -> bool:
        if not self.settings.peering or self.kube is None:
            return True
        selector = f"metadata.name={self.settings.peering}"  # a list: the role grants list, not get
        try:
            if self.settings.clusterwide:
                found = self.kube.custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                                    field_selector=selector)
            else:
                found = self.kube.custom.list_namespaced_custom_object(
                    "kopf.dev", "v1", self.settings.namespaces[0], "kopfpeerings", field_selector=selector)
        except ApiException as error:
            log.warning("cannot read the peering object %s: %s", self.settings.peering, error.reason)
            return False
        peering = next(iter(found.get("items") or []), {})
        mine = self.settings.priority
        alive = 0
        for peer in ((peering.get("status") or {}).values()):
            if not isinstance(peer, dict):
                continue
            seen = peer.get("lastseen") or ""
            lifetime = float(peer.get("lifetime") or 60)
            try:
                stamp = datetime.datetime.fromisoformat(seen.replace("Z", "+00:00"))
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=datetime.UTC)
                fresh = now - stamp.timestamp() <= lifetime
            except ValueError:
                fresh = True
            if fresh and int(peer.get("priority") or 0) >= mine:
                alive += 1
        leading = alive == 1
        if not leading:
            self.active_since = None
            return False
        if self.active_since is None:
            self.active_since = now  # the watch streams resume now: let them refill the indices first
            return False
        return True


async def run(scaler: Autoscaler, watched: WatchedState, stopped: asyncio.Event) -> None:
    """Tick on the wall-clock grid until `stopped` is set."""
    gate = PeeringGate(scaler.kube, scaler.settings)
    loop = asyncio.get_running_loop()
    while not stopped.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), seconds_to_next_tick(scaler.clock(), scaler.settings.tick_seconds))
        if stopped.is_set():
            break
        try:
            if not await loop.run_in_executor(scaler.pool, gate.active, scaler.clock()):
                continue
            services, deployments, problems = watched.snapshot()
            report = await scaler.tick(services, deployments, problems)
            log.debug("tick: %d service(s), %d decided, %d status write(s), %d scale(s), %.2f s",
                      report.services, report.decided, report.status_writes, report.scales, report.seconds)
        except Exception:  # a failed tick must not end the loop: log it, tick again
            log.exception("autoscaling tick failed")
    await scaler.drain()
