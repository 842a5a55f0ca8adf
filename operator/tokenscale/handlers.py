"""kopf wiring, nothing else: each handler reads, calls tokenscale.reconcile / tokenscale.build,
and records (status, Events). Handlers return None: kopf would otherwise store results under
status.<handler>, which the CRD's structural status schema prunes.

The operator's Settings arrive in kopf's memo (`memo.settings`, set by `tokenscale run`),
the kubernetes client in `memo.kube` (set at startup).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import kopf
import kubernetes

from tokenscale import autoscaler, reconcile
from tokenscale import settings as settings_module
from tokenscale.api import GROUP, PLURAL, VERSION, SpecError
from tokenscale.build import conditions
from tokenscale.build.labels import MANAGED_BY, SERVICE_LABEL
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


# --- InferenceServices ------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def serve(body: kopf.Body, reason: str, memo: Any, **_: Any) -> None:
    """Create or update the serving workload of an InferenceService."""
    owner = copy.deepcopy(dict(body))
    settings, kube = _settings(memo), _kube(memo)
    try:
        spec = reconcile.parse(owner)
    except SpecError as error:
        _degrade(kube, body, owner, "InvalidSpec", str(error))
        raise kopf.PermanentError(f"invalid spec: {error}") from None  # no retry until the spec changes
    try:
        outcome = reconcile.realise(kube, settings, owner, spec)
    except reconcile.ForeignObjectError as error:
        _degrade(kube, body, owner, "NameConflict", str(error))
        raise kopf.TemporaryError(str(error), delay=CONFLICT_RETRY_DELAY) from None
    except kubernetes.client.ApiException as error:
        message = f"applying the serving workload failed: {error.status} {error.reason}"
        _degrade(kube, body, owner, "ApplyFailed", message)
        raise kopf.TemporaryError(message, delay=RETRY_DELAY) from None
    reconcile.write_status(kube, owner, reconcile.observed_status(settings, owner, spec, outcome.deployment))
    _announce(body, outcome, verb={"create": "Created", "update": "Updated"}.get(reason, "Reconciled"))


def _degrade(kube: reconcile.Kube, body: kopf.Body, owner: dict[str, Any], reason: str, message: str) -> None:
    """Degraded=True with the reason; the Warning event only when that is news (retries stay quiet)."""
    current = (owner.get("status") or {}).get("conditions")
    news = not conditions.condition_is(current, conditions.DEGRADED, True, reason, message)
    status = conditions.degraded_status(current, reason=reason, message=message,
                                        generation=owner["metadata"].get("generation"))
    reconcile.write_status(kube, owner, status)
    if news:
        kopf.warn(body, reason=reason, message=message)


def _announce(body: Any, outcome: reconcile.Outcome, verb: str) -> None:
    for kind, action in outcome.actions.items():
        if action != "unchanged":
            kopf.info(body, reason=f"{verb}", message=f"{kind} {action}")
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
    name, namespace = body.metadata.labels.get(SERVICE_LABEL), body.metadata.namespace
    if not name or not namespace:
        return
    settings, kube = _settings(memo), _kube(memo)
    owner = reconcile.read_service(kube, namespace, name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return  # the service is going away; garbage collection takes the children
    owners = body.metadata.get("ownerReferences") or []
    if owners and not any(ref.get("uid") == owner["metadata"]["uid"] for ref in owners):
        return  # a namesake left by an older object: not ours to touch
    try:
        spec = reconcile.parse(owner)
        outcome = reconcile.realise(kube, settings, owner, spec)
    except (SpecError, reconcile.ForeignObjectError):
        return  # reported as Degraded by `serve`, which retries
    reconcile.write_status(kube, owner, reconcile.observed_status(settings, owner, spec, outcome.deployment))
    deleted = event.get("type") == "DELETED"
    if not deleted and (owner.get("status") or {}).get("observedGeneration") != owner["metadata"].get("generation"):
        # This event came first with a spec change `serve` had not handled yet: it was applied here.
        _announce(owner, outcome, verb="Updated")
    elif any(action in ("created", "updated") for action in outcome.actions.values()):
        change = "deleted" if deleted else "changed"
        kopf.info(owner, reason="Repaired",
                  message=f"{body.get('kind', 'child')} {body.metadata.name} was {change} outside tokenscale; restored")


# --- autoscaling ------------------------------------------------------------------------------------


@kopf.on.startup()
def start_autoscaler(memo: Any, **_: Any) -> None:
    """One Autoscaler (one shared signal snapshot) for all objects: kopf gives each object a
    shallow copy of this memo, so what is set here is shared and what a handler sets is not."""
    memo.autoscaler = autoscaler.Autoscaler(_kube(memo), _settings(memo))


@kopf.on.cleanup()
def stop_autoscaler(memo: Any, **_: Any) -> None:
    if getattr(memo, "autoscaler", None) is not None:
        memo.autoscaler.close()


def _autoscaler(memo: Any) -> autoscaler.Autoscaler:
    if getattr(memo, "autoscaler", None) is None:  # only when started without the startup handler
        memo.autoscaler = autoscaler.Autoscaler(_kube(memo), _settings(memo))
    return memo.autoscaler


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def autoscale(body: kopf.Body, stopped: kopf.DaemonStopped, memo: Any, logger: Any, **_: Any) -> None:
    """The autoscaling timer: on every multiple of tick_seconds (read each round, so a reconfigured
    operator or a test harness needs no re-import), decide from the shared signal snapshot and act."""
    scaler = _autoscaler(memo)
    while not stopped:
        try:
            await scaler.tick_async(copy.deepcopy(dict(body)),
                                    lambda kind, reason, message: kopf.event(body, type=kind, reason=reason,
                                                                             message=message))
        except Exception as error:  # a failed tick must not end the timer: log it, try next tick
            logger.warning(f"autoscaling tick failed: {type(error).__name__}: {error}")
        await stopped.wait(autoscaler.seconds_to_next_tick(time.time(), _settings(memo).tick_seconds))
    scaler.forget(body.metadata.namespace, body.metadata.name)  # deleted, or this replica paused
