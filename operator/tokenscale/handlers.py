"""kopf wiring, nothing else: each handler reads, calls tokenscale.reconcile / tokenscale.desired,
and records (status, Events). Handlers return None: kopf would otherwise store results under
status.<handler>, which the CRD's structural status schema prunes.

The operator's Settings arrive in kopf's memo (`memo.settings`, set by `tokenscale run`),
the kubernetes client in `memo.kube` (set at startup). Three kopf indices keep the watched state
the autoscaler's fleet tick reads (slim projections, fed by kopf's watch streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from typing import Any

import kopf

from tokenscale import activation, autoscaler, reconcile
from tokenscale.api import GROUP, PLURAL, VERSION, SpecError
from tokenscale.desired import conditions
from tokenscale.desired.labels import MANAGED_BY, SERVICE_LABEL
from tokenscale.desired.pods import classify_pod
from tokenscale.kube import ApiException, Kube, api_error_message, load_configuration
from tokenscale.observability import OperatorMetrics
from tokenscale.settings import Settings

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
RETRY_DELAY = 10.0  # an API error
CONFLICT_RETRY_DELAY = 30.0  # a child's name taken by another object: waits for a person


def _settings(memo: Any) -> Settings:
    return getattr(memo, "settings", None) or Settings()  # `tokenscale run` puts them on the memo


def _kube(memo: Any) -> Kube:
    if getattr(memo, "kube", None) is None:
        memo.kube = reconcile.connect(_settings(memo))
    return memo.kube


def kopf_settings(settings: Settings) -> Any:
    """kopf's OperatorSettings for ours: annotation storage, timeouts, event identity."""
    ops = kopf.OperatorSettings()
    # The CRD's status schema is structural and would prune status.kopf: keep kopf's
    # progress and diff-base in annotations instead.
    ops.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tokenscale.io")
    ops.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="tokenscale.io", key="last-handled-configuration"
    )
    ops.persistence.finalizer = "tokenscale.io/finalizer"
    ops.watching.server_timeout = settings.watch_server_timeout
    ops.watching.client_timeout = settings.watch_client_timeout
    ops.watching.connect_timeout = settings.connect_timeout
    ops.networking.request_timeout = settings.request_timeout
    ops.networking.connect_timeout = settings.connect_timeout
    ops.posting.reporting_component = "tokenscale"
    ops.posting.reporting_instance = os.environ.get("POD_NAME", "tokenscale")
    ops.posting.event_name_prefix = "tokenscale-"
    ops.peering.priority = settings.priority
    # Only the Deployments and Services tokenscale manages: filtered by the API server, so a big
    # cluster's other workloads never reach the operator.
    managed = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    ops.watching.label_selectors["apps", "v1", "deployments"] = managed
    ops.watching.label_selectors["v1", "services"] = managed
    # Serving pods only (the autoscaler's index keeps those that cannot start or be scheduled).
    ops.watching.label_selectors["v1", "pods"] = SERVICE_LABEL
    # The reconcile handlers are synchronous: enough threads that 1,000 new services' children are
    # created in parallel against an API server that answers in tens of milliseconds.
    ops.execution.max_workers = max(8, settings.write_concurrency)
    return ops


# --- operator lifecycle -----------------------------------------------------------------------


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf talks to the same API server, with the same credentials, as the kubernetes client."""
    settings = _settings(memo)
    configuration = load_configuration(settings.kubeconfig, settings.context)
    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization") or "")
    scheme, _, token = header.partition(" ") if " " in header else (None, "", header or None)
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        username=configuration.username or None, password=configuration.password or None,
        scheme=scheme, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file,
    )


@kopf.on.startup()
def startup(memo: Any, **_: Any) -> None:
    memo.kube = reconcile.connect(_settings(memo))
    memo.watched = autoscaler.WatchedState()  # on the operator's memo: every handler's copy shares it


# --- watched state: an informer-style cache fed by kopf's watch streams ---------------------------
# (kopf's own @kopf.index would do, but kopf 1.45 makes every object of the initial listing wait for
# all others with a toggle each: quadratic at start-up, minutes at 10,000 objects.)


def _watched(memo: Any) -> autoscaler.WatchedState:
    if getattr(memo, "watched", None) is None:
        memo.watched = autoscaler.WatchedState()
    return memo.watched


@kopf.on.event(GROUP, VERSION, PLURAL)
async def watch_services(event: dict[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    """Every InferenceService, as the slim view the tick needs."""
    _watched(memo).service_event(event.get("type"), body)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, id="watch_deployments")
async def watch_deployments(event: dict[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    """Every serving Deployment: replicas, readiness, rollout, owner."""
    _watched(memo).deployment_event(event.get("type"), body)


@kopf.on.event("v1", "services", labels=MANAGED, id="watch_network_services")
async def watch_network_services(event: dict[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    """Which serving Services exist."""
    _watched(memo).network_service_event(event.get("type"), body)


@kopf.on.event("v1", "pods", labels={SERVICE_LABEL: kopf.PRESENT})
async def watch_pods(event: dict[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    """Only the serving pods that cannot start or cannot be scheduled are kept."""
    _watched(memo).pod_event(event.get("type"), body, classify_pod(body))


# --- InferenceServices ------------------------------------------------------------------------


# id="serve": the handler's id in kopf's progress annotations, kept from its earlier name so an
# upgrade finds the records of objects handled before it.
@kopf.on.resume(GROUP, VERSION, PLURAL, id="serve")
@kopf.on.create(GROUP, VERSION, PLURAL, id="serve")
@kopf.on.update(GROUP, VERSION, PLURAL, id="serve")
def reconcile_service(body: kopf.Body, reason: str, memo: Any, **_: Any) -> None:
    """Create or update the serving workload of an InferenceService."""
    owner = copy.deepcopy(dict(body))
    settings, kube = _settings(memo), _kube(memo)
    try:
        spec = reconcile.parse(owner)
    except SpecError as error:
        _degrade(kube, body, owner, "InvalidSpec", str(error))
        raise kopf.PermanentError(f"invalid spec: {error}") from None  # no retry until the spec changes
    try:
        # A new object's children are created at once, read only on a 409 (one request each). kopf
        # fills its indices before any handler runs: no Deployment there means none exists yet.
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        watched_state = _watched(memo)
        # On a resume of a spec handled before whose Deployment and Service are watched, the
        # watch's events check those two for drift without a request.
        handled = (owner.get("status") or {}).get("observedGeneration") == meta.get("generation")
        deployment = watched_state.deployments.get(key)
        watched = deployment if reason == "resume" and handled and deployment is not None \
            and key in watched_state.network_services and key not in watched_state.unchecked else None
        outcome = reconcile.realise(kube, settings, owner, spec, new=reason == "create", watched=watched)
        watched_state.unchecked.discard(key)
    except reconcile.ForeignObjectError as error:
        _degrade(kube, body, owner, "NameConflict", str(error))
        raise kopf.TemporaryError(str(error), delay=CONFLICT_RETRY_DELAY) from None
    except ApiException as error:
        # The API server's own words: its message and the field of each cause.
        message = f"applying the serving workload failed: {api_error_message(error)}"
        _degrade(kube, body, owner, "ApplyFailed", message)
        raise kopf.TemporaryError(message, delay=RETRY_DELAY) from None
    health = watched_state.pod_health(key)
    reconcile.write_status(kube, owner, reconcile.observed_status(settings, owner, spec, outcome.deployment, health),
                           trust_owner=True)
    _announce(body, outcome, verb={"create": "Created", "update": "Updated"}.get(reason, "Reconciled"))


def _degrade(kube: Kube, body: kopf.Body, owner: dict[str, Any], reason: str, message: str) -> None:
    """Degraded=True with the reason; the Warning event only when that is news (retries stay quiet)."""
    current = (owner.get("status") or {}).get("conditions")
    news = not conditions.condition_is(current, conditions.DEGRADED, True, reason, message)
    status = conditions.degraded_status(current, reason=reason, message=message,
                                        generation=owner["metadata"].get("generation"))
    reconcile.write_status(kube, owner, status, trust_owner=True)
    if news:
        kopf.warn(body, reason=reason, message=message)


def _announce(body: Any, outcome: reconcile.Applied, verb: str) -> None:
    """One Event for all the children that changed (an Event is a request: one, not four)."""
    changed = [f"{kind} {action}" for kind, action in outcome.actions.items() if action != "unchanged"]
    if changed:
        kopf.info(body, reason=verb, message=", ".join(changed))
    for warning in outcome.warnings:
        kopf.warn(body, reason="MonitoringUnavailable", message=warning)


# --- drift: the children ------------------------------------------------------------------------


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(event: dict[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    """A serving Deployment changed (rollout progress, hand edits, deletion): repair, report."""
    _child_changed(event, body, memo)


@kopf.on.event("v1", "services", labels=MANAGED)
def service_changed(event: dict[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(event, body, memo)


def _child_changed(event: dict[str, Any], body: kopf.Body, memo: Any) -> None:
    """Compare the watched child with what its owner wants (no request); repair only on drift."""
    name, namespace = body.metadata.labels.get(SERVICE_LABEL), body.metadata.namespace
    if not name or not namespace:
        return
    settings, kube = _settings(memo), _kube(memo)
    watched_state = _watched(memo)
    view = watched_state.services.get((namespace, name))
    owner = view.owner() if view is not None else None
    if owner is None:
        if event.get("type") != "DELETED":
            # Start-up: the owner is not in the cache yet. Its resume handler reads and repairs
            # the children itself (no watched shortcut for it), so no read here.
            watched_state.unchecked.add((namespace, name))
            return
        owner = reconcile.read_service(kube, namespace, name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return  # the service is going away; garbage collection takes the children
    owners = body.metadata.get("ownerReferences") or []
    if owners and not any(ref.get("uid") == owner["metadata"]["uid"] for ref in owners):
        return  # a namesake left by an older object: not ours to touch
    try:
        spec = reconcile.parse(owner)
    except SpecError:
        return  # reported as Degraded by `serve`, which retries
    deleted = event.get("type") == "DELETED"
    kind = body.get("kind", "")
    live = dict(body)  # read only
    replicas = (live.get("spec") or {}).get("replicas") if kind == "Deployment" else None
    wanted = reconcile.desired_children(settings, owner, spec, replicas)
    desired = wanted.deployment if kind == "Deployment" else wanted.service
    deployment: dict[str, Any] | None = live if kind == "Deployment" and not deleted else None
    if deleted or reconcile.drifted(owner, desired, live):
        try:
            outcome = reconcile.realise(kube, settings, owner, spec)
        except reconcile.ForeignObjectError:
            return  # reported as Degraded by `serve`, which retries
        deployment = outcome.deployment
        if (owner.get("status") or {}).get("observedGeneration") != owner["metadata"].get("generation") \
                and not deleted:
            # This event came first with a spec change `serve` had not handled yet: it was applied here.
            _announce(owner, outcome, verb="Updated")
        elif any(action in ("created", "updated") for action in outcome.actions.values()):
            change = "deleted" if deleted else "changed"
            kopf.info(owner, reason="Repaired",
                      message=f"{kind or 'child'} {body.metadata.name} was {change} outside tokenscale; restored")
    elif kind != "Deployment" or event.get("type") == "ADDED":
        return  # nothing to repair; a new Deployment's status is the tick's (or `serve`'s) to write
    if deployment is not None:
        health = watched_state.pod_health((namespace, name))
        reconcile.write_status(kube, owner, reconcile.observed_status(settings, owner, spec, deployment, health),
                               trust_owner=True)


# --- autoscaling: one loop for the fleet ----------------------------------------------------------


@kopf.on.startup()
async def start_autoscaler(memo: Any, **_: Any) -> None:
    """One Autoscaler and one tick loop for all objects, reading the watched state. (kopf gives each
    handler a shallow copy of this memo: what is set here is shared, what a handler sets is not.)"""
    settings = _settings(memo)
    metrics = OperatorMetrics()
    metrics.tick_seconds_setting.set(settings.tick_seconds)
    if settings.metrics_address:
        bound = metrics.serve_or_retry(settings.metrics_address)
        if bound:
            autoscaler.log.info("serving the operator's metrics on http://%s:%d/metrics", *bound)
    scaler = autoscaler.Autoscaler(_kube(memo), settings, metrics=metrics)
    scaler.routes = activation.routes(memo)  # the activator's slice precedes a scale to zero
    stopped = asyncio.Event()
    memo.autoscaler, memo.autoscaler_stopped = scaler, stopped
    memo.autoscaler_task = asyncio.create_task(autoscaler.run(scaler, _watched(memo), stopped),
                                               name="tokenscale autoscaler")


@kopf.on.cleanup()
async def stop_autoscaler(memo: Any, **_: Any) -> None:
    scaler = getattr(memo, "autoscaler", None)
    if scaler is None:
        return
    memo.autoscaler_stopped.set()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(memo.autoscaler_task, timeout=5.0)
    scaler.close()
    scaler.metrics.close()
