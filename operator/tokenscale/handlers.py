"""kopf wiring, nothing else: each handler reads, calls tokenscale.reconcile / tokenscale.build,
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
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes

from tokenscale import activation, autoscaler, reconcile
from tokenscale import settings as settings_module
from tokenscale.api import GROUP, PLURAL, VERSION, SpecError
from tokenscale.build import conditions
from tokenscale.build.labels import MANAGED_BY, SERVICE_LABEL
from tokenscale.build.pods import PodHealth, classify_pod
from tokenscale.observability import OperatorMetrics
from tokenscale.settings import Settings

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
RETRY_DELAY = 10.0  # an API error
CONFLICT_RETRY_DELAY = 30.0  # a child's name taken by another object: waits for a person


def _settings(memo: Any) -> Settings:
    return getattr(memo, "settings", None) or settings_module.get()


def _kube(memo: Any) -> reconcile.Kube:
    if getattr(memo, "kube", None) is None:
        memo.kube = reconcile.Kube.connect(_settings(memo))
    return memo.kube


# --- operator lifecycle -----------------------------------------------------------------------


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf talks to the same API server, with the same credentials, as the kubernetes client."""
    configuration = reconcile.load_configuration(_settings(memo))
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
    memo.kube = reconcile.Kube.connect(_settings(memo))


# --- watched state: kopf's indices, fed by its watch streams ------------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
async def tokenscale_services(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    """Every InferenceService, as the slim view the tick needs."""
    return {(namespace, name): autoscaler.service_view(body)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
async def tokenscale_deployments(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                                 **_: Any) -> dict[Any, Any]:
    """Every serving Deployment: replicas, readiness, rollout, owner."""
    service = labels.get(SERVICE_LABEL)
    return {(namespace, service): autoscaler.deployment_view(body)} if service else {}


@kopf.index("v1", "services", labels=MANAGED)
async def tokenscale_network_services(namespace: str, labels: Mapping[str, str], **_: Any) -> dict[Any, Any]:
    """Which serving Services exist (from the watch the drift handler needs anyway)."""
    service = labels.get(SERVICE_LABEL)
    return {(namespace, service): True} if service else {}


@kopf.index("v1", "pods", labels={SERVICE_LABEL: kopf.PRESENT})
async def tokenscale_pod_problems(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                                  **_: Any) -> dict[Any, Any]:
    """Only the serving pods that cannot start or cannot be scheduled (ready and loading pods: nothing)."""
    problem = classify_pod(body)
    return {(namespace, labels[SERVICE_LABEL]): problem} if problem is not None else {}


def _pod_health(index: Any, namespace: str, name: str) -> PodHealth:
    return PodHealth.of(list(index.get((namespace, name), ()))) if index is not None else PodHealth()


def _watched_owner(index: Any, namespace: str, name: str) -> dict[str, Any] | None:
    views = list(index.get((namespace, name), ())) if index is not None else []
    return views[0].owner() if views else None


# --- InferenceServices ------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def serve(body: kopf.Body, reason: str, memo: Any, tokenscale_pod_problems: Any = None,
          tokenscale_deployments: Any = None, tokenscale_network_services: Any = None, **_: Any) -> None:
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
        seen = list(tokenscale_deployments.get(key, ())) if tokenscale_deployments is not None else None
        # On a resume of a spec handled before whose Deployment and Service exist, the watch's
        # ADDED events check those two for drift without a request.
        handled = (owner.get("status") or {}).get("observedGeneration") == meta.get("generation")
        watched = seen[0] if reason == "resume" and seen and handled and tokenscale_network_services is not None \
            and tokenscale_network_services.get(key) else None
        outcome = reconcile.realise(kube, settings, owner, spec, new=reason == "create" or seen == [],
                                    watched=watched)
    except reconcile.ForeignObjectError as error:
        _degrade(kube, body, owner, "NameConflict", str(error))
        raise kopf.TemporaryError(str(error), delay=CONFLICT_RETRY_DELAY) from None
    except kubernetes.client.ApiException as error:
        # The API server's own words: its message and the field of each cause.
        message = f"applying the serving workload failed: {reconcile.api_error_message(error)}"
        _degrade(kube, body, owner, "ApplyFailed", message)
        raise kopf.TemporaryError(message, delay=RETRY_DELAY) from None
    health = _pod_health(tokenscale_pod_problems, meta["namespace"], meta["name"])
    reconcile.write_status(kube, owner, reconcile.observed_status(settings, owner, spec, outcome.deployment, health),
                           trust_owner=True)
    _announce(body, outcome, verb={"create": "Created", "update": "Updated"}.get(reason, "Reconciled"))


def _degrade(kube: reconcile.Kube, body: kopf.Body, owner: dict[str, Any], reason: str, message: str) -> None:
    """Degraded=True with the reason; the Warning event only when that is news (retries stay quiet)."""
    current = (owner.get("status") or {}).get("conditions")
    news = not conditions.condition_is(current, conditions.DEGRADED, True, reason, message)
    status = conditions.degraded_status(current, reason=reason, message=message,
                                        generation=owner["metadata"].get("generation"))
    reconcile.write_status(kube, owner, status, trust_owner=True)
    if news:
        kopf.warn(body, reason=reason, message=message)


def _announce(body: Any, outcome: reconcile.Outcome, verb: str) -> None:
    """One Event for all the children that changed (an Event is a request: one, not four)."""
    changed = [f"{kind} {action}" for kind, action in outcome.actions.items() if action != "unchanged"]
    if changed:
        kopf.info(body, reason=verb, message=", ".join(changed))
    for warning in outcome.warnings:
        kopf.warn(body, reason="MonitoringUnavailable", message=warning)


# --- drift: the children ------------------------------------------------------------------------


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(event: dict[str, Any], body: kopf.Body, memo: Any, tokenscale_services: Any = None,
                       tokenscale_pod_problems: Any = None, **_: Any) -> None:
    """A serving Deployment changed (rollout progress, hand edits, deletion): repair, report."""
    _child_changed(event, body, memo, tokenscale_services, tokenscale_pod_problems)


@kopf.on.event("v1", "services", labels=MANAGED)
def service_changed(event: dict[str, Any], body: kopf.Body, memo: Any, tokenscale_services: Any = None,
                    **_: Any) -> None:
    _child_changed(event, body, memo, tokenscale_services, None)


def _child_changed(event: dict[str, Any], body: kopf.Body, memo: Any, services: Any, problems: Any) -> None:
    """Compare the watched child with what its owner wants (no request); repair only on drift."""
    name, namespace = body.metadata.labels.get(SERVICE_LABEL), body.metadata.namespace
    if not name or not namespace:
        return
    settings, kube = _settings(memo), _kube(memo)
    owner = _watched_owner(services, namespace, name)
    if owner is None:  # not in the index yet (start-up): ask the API server
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
    live = copy.deepcopy(dict(body))
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
        health = _pod_health(problems, namespace, name)
        reconcile.write_status(kube, owner, reconcile.observed_status(settings, owner, spec, deployment, health),
                               trust_owner=True)


# --- autoscaling: one loop for the fleet ----------------------------------------------------------


@kopf.on.startup()
async def start_autoscaler(memo: Any, tokenscale_services: Any, tokenscale_deployments: Any,
                           tokenscale_pod_problems: Any, **_: Any) -> None:
    """One Autoscaler and one tick loop for all objects, reading kopf's live indices. (kopf gives each
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
    indices = (tokenscale_services, tokenscale_deployments, tokenscale_pod_problems)
    memo.autoscaler, memo.autoscaler_stopped = scaler, stopped
    # Created from this handler, the task keeps kopf's context (its Event poster is found there).
    memo.autoscaler_task = asyncio.create_task(autoscaler.run(scaler, lambda: indices, stopped),
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
