"""An in-process Kubernetes API for tests and the local closed loop.

kmock's KubernetesEmulator gives the HTTP surface (request parsing, discovery, an object store
with history); this subclass serves the resource verbs itself so that they behave like a real
API server where the operator can tell the difference:

- POST answers 201; objects get uid, resourceVersion (one counter, bumped on every write),
  generation (bumped when anything outside metadata/status changes) and creationTimestamp;
  `generateName` works; a no-op patch changes nothing and wakes no watcher.
- status and scale subresources: writes to the main resource ignore `status`, writes to
  `/status` change only `status`; `/scale` reads and writes an autoscaling/v1 Scale.
- merge, strategic-merge (treated as a merge: lists are replaced) and JSON patches; PUT with
  resourceVersion preconditions (409 on a stale one); finalizers and deletionTimestamp;
  ownerReference garbage collection when an owner is gone.
- lists carry kind/apiVersion and the current resourceVersion; watches replay from a
  resourceVersion, honour timeoutSeconds, and both honour label and field selectors.
- /api/v1 reports groupVersion "v1"; namespaces can be listed, read and created.
- every request is recorded (`request_log`) with its RBAC verb, for permission tests.

Not emulated: schema validation and defaulting (beyond Deployment replicas), controllers
(no pods; whoever plays the kubelet writes Deployment status), admission, RBAC enforcement.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import json
import random
import re
import string
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

from tokenscale.api import GROUP, KIND, PLURAL, SHORT_NAMES, VERSION
from tokenscale.api.wire import rfc3339

CONTROL_PATH = "/tokenscale-emulator"  # the harness's endpoints: latency, request counts
HISTORY_PER_OBJECT = 20  # versions kept per object (kmock keeps all; a long demo would grow)
EVENT_HISTORY = 5000  # watch events kept for resuming watches from a resourceVersion
# A long demo makes hundreds of thousands of requests: keep the most recent ones only.
REQUESTS_KEPT = 2000  # kmock's parsed requests (with bodies)
REQUEST_LOG_KEPT = 100_000  # RequestRecords (small)
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?/?")
_NAMESPACES = kmock.resource("", "v1", "namespaces")


class ApiError(Exception):
    """A Kubernetes `Status` failure."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                  "code": self.code, "reason": self.reason, "message": self.message}
        if self.details:
            status["details"] = self.details
        return status

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.status(), status=self.code)


@dataclass(frozen=True)
class RequestRecord:
    """One request as RBAC sees it: verb on group/resource[/subresource] in a namespace."""

    method: str
    path: str
    verb: str | None  # get, list, watch, create, update, patch, delete, deletecollection
    group: str | None
    version: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int
    user_agent: str = ""  # tells the operator's requests from a test's own


@dataclass
class _Watcher:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    labels: list[tuple[str, str, set[str]]]
    fields: list[tuple[str, str, str]]
    queue: asyncio.Queue[dict[str, Any]]


# --- selectors ------------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for index, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            yield text[start:index]
            start = index + 1
    yield text[start:]


def parse_label_selector(text: str | None) -> list[tuple[str, str, set[str]]]:
    """`a=b,c!=d,e,!f,g in (x,y),h notin (z)` -> [(key, op, values)]; raises ApiError on junk."""
    requirements: list[tuple[str, str, set[str]]] = []
    for part in _split_selector(text or ""):
        part = part.strip()
        if not part:
            continue
        if match := _SET_REQUIREMENT.match(part):
            values = {v.strip() for v in match.group(3).split(",") if v.strip()}
            requirements.append((match.group(1), match.group(2), values))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append((key.strip(), "!=", {value.strip()}))
        elif "=" in part:
            key, value = part.replace("==", "=").split("=", 1)
            requirements.append((key.strip(), "=", {value.strip()}))
        elif part.startswith("!"):
            requirements.append((part[1:].strip(), "!", set()))
        elif re.fullmatch(r"[A-Za-z0-9_./-]+", part):
            requirements.append((part, "exists", set()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return requirements


def labels_match(labels: dict[str, str], requirements: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        if op == "=" and labels.get(key) not in values:
            return False
        if op == "!=" and present and labels[key] in values:
            return False
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


def parse_field_selector(text: str | None) -> list[tuple[str, str, str]]:
    requirements = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        op = "!=" if "!=" in part else "="
        path, value = part.replace("==", "=").split(op, 1)
        requirements.append((path.strip(), op, value.strip()))
    return requirements


def fields_match(obj: dict[str, Any], requirements: list[tuple[str, str, str]]) -> bool:
    for path, op, expected in requirements:
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        actual = "" if value is None else str(value)
        if (actual == expected) != (op == "="):
            return False
    return True


# --- what kube-apiserver validates on the built-in kinds ------------------------------------
# The real server checks names and label values of Deployments, Services, PDBs (not of a custom
# resource, whose schema is the CRD's) and refuses with 422 and details.causes: the operator must
# carry those words to the user. The messages below are the API server's own.

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_VALIDATED = {("apps", "deployments"): ("Deployment.apps", "subdomain"), ("", "services"): ("Service", "dns1035"),
              ("policy", "poddisruptionbudgets"): ("PodDisruptionBudget.policy", "subdomain")}


def _label_causes(labels: Any, field: str) -> list[dict[str, str]]:
    causes = []
    for value in (labels or {}).values() if isinstance(labels, dict) else ():
        text = str(value)
        if len(text) > 63:
            causes.append({"reason": "FieldValueInvalid", "field": field,
                           "message": f'Invalid value: "{text}": must be no more than 63 characters'})
        elif not _LABEL_VALUE.match(text):
            causes.append({"reason": "FieldValueInvalid", "field": field, "message": (
                f'Invalid value: "{text}": a valid label must be an empty string or consist of alphanumeric '
                "characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
                "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")})
    return causes


def _name_causes(name: str, rule: str) -> list[dict[str, str]]:
    if rule == "dns1035":
        if len(name) > 63:
            return [{"reason": "FieldValueInvalid", "field": "metadata.name",
                     "message": f'Invalid value: "{name}": must be no more than 63 characters'}]
        if not _DNS_1035_LABEL.match(name):
            return [{"reason": "FieldValueInvalid", "field": "metadata.name", "message": (
                f'Invalid value: "{name}": a DNS-1035 label must consist of lower case alphanumeric characters '
                "or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. "
                "'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")}]
        return []
    if len(name) > 253 or not _DNS_1123_SUBDOMAIN.match(name):
        return [{"reason": "FieldValueInvalid", "field": "metadata.name", "message": (
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
            "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")}]
    return []


def validate_builtin(resource: kmock.resource, obj: dict[str, Any]) -> None:
    """Raise the 422 kube-apiserver would for a bad name or label value on a built-in kind."""
    known = _VALIDATED.get((resource.group or "", resource.plural or ""))
    if known is None:
        return
    kind, rule = known
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    name = str(meta.get("name") or "")
    causes = _name_causes(name, rule) + _label_causes(meta.get("labels"), "metadata.labels")
    if resource.plural == "deployments":
        causes += _label_causes((spec.get("selector") or {}).get("matchLabels"), "spec.selector.matchLabels")
        causes += _label_causes(((spec.get("template") or {}).get("metadata") or {}).get("labels"),
                                "spec.template.labels")
    elif resource.plural == "services":
        causes += _label_causes(spec.get("selector"), "spec.selector")
    elif resource.plural == "poddisruptionbudgets":
        causes += _label_causes((spec.get("selector") or {}).get("matchLabels"), "spec.selector.matchLabels")
    if not causes:
        return
    words = [f"{c['field']}: {c['message']}" for c in causes]
    listed = words[0] if len(words) == 1 else "[" + ", ".join(words) + "]"
    raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {listed}', details={
        "name": name, "group": resource.group or "", "kind": kind.split(".")[0], "causes": causes})


@dataclass(frozen=True)
class Fault:
    """A refusal the next matching requests get (e.g. an exhausted Service IP range: 500)."""

    code: int
    reason: str
    message: str
    times: int = 1_000_000
    details: dict[str, Any] | None = None  # a Status' details, e.g. a 422's causes


# --- the emulator ---------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the resource verbs served as a real API server would."""

    _revision: int = attrs.field(default=0, init=False)
    _watchers: list[_Watcher] = attrs.field(factory=list, init=False)
    _events: collections.deque[tuple[int, kmock.resource, dict[str, Any]]] = attrs.field(
        factory=lambda: collections.deque(maxlen=EVENT_HISTORY), init=False
    )
    _log: list[RequestRecord] = attrs.field(factory=list, init=False)
    # A real API server answers in tens of milliseconds: each request (a watch: its start) waits
    # latency + uniform(0, jitter) seconds. 0 for tests; the benchmark sets 20 ms.
    _served: int = attrs.field(default=0, init=False)  # requests recorded, ever (the log is trimmed)
    _tally: collections.Counter = attrs.field(factory=collections.Counter, init=False)  # never trimmed
    latency: float = attrs.field(default=0.0)
    jitter: float = attrs.field(default=0.0)
    # (verb, plural) -> the refusal those requests get, e.g. ("create", "services").
    faults: dict[tuple[str, str], Fault] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
            kind=KIND, singular=KIND.lower(), shortnames=set(SHORT_NAMES), categories={"tokenscale", "all"},
            namespaced=True, subresources={"status", "scale"},
            verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
        )
        self.resources["monitoring.coreos.com/v1/podmonitors"] = kmock.ResourceInfo(
            kind="PodMonitor", singular="podmonitor", namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
        )
        for name in ("default", "kube-system"):
            self._ensure_namespace(name)

    # --- public helpers -----------------------------------------------------------------

    @property
    def request_log(self) -> list[RequestRecord]:
        """Every request served so far (a copy; safe to read from another thread)."""
        return list(self._log)

    def live_objects(self, group: str, version: str, plural: str, namespace: str | None = None,
                     ) -> list[dict[str, Any]]:
        """A snapshot of the stored objects of a resource (for assertions; read-only copies)."""
        wanted = kmock.resource(group, version, plural)
        return [copy.deepcopy(obj.raw) for (res, ns, _), obj in list(self.objects.items())
                if res == wanted and not obj.deleted and (namespace is None or ns == namespace)]

    # --- dispatch -------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.startswith(CONTROL_PATH):
            return await self._control(raw_request)
        if self.latency or self.jitter:
            await asyncio.sleep(self.latency + random.uniform(0.0, self.jitter))
        # kmock cannot parse /api/v1/namespaces[/NAME] (it answers 500): build the request here.
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        method = raw_request.method.upper()
        action = (kmock.action.WATCH if method == "GET" and raw_request.query.get("watch") in ("true", "1")
                  else {"GET": kmock.action.FETCH if match.group(1) else kmock.action.LIST,
                        "POST": kmock.action.CREATE, "PATCH": kmock.action.UPDATE,
                        "DELETE": kmock.action.DELETE}.get(method))
        request = kmock.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=method,
            params=dict(raw_request.query), headers=dict(raw_request.headers), data=data, body=body,
            text=body.decode(errors="replace"), action=action, resource=_NAMESPACES, name=match.group(1),
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as error:  # as kmock does: report, do not crash the server
            return await self._render_error(error)

    async def _control(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The harness's own endpoints (no Kubernetes API has them): set the latency; count requests."""
        if raw_request.path == f"{CONTROL_PATH}/latency" and raw_request.method == "PUT":
            wanted = await raw_request.json()
            self.latency, self.jitter = float(wanted.get("latency", 0.0)), float(wanted.get("jitter", 0.0))
            return aiohttp.web.json_response({"latency": self.latency, "jitter": self.jitter})
        if raw_request.path == f"{CONTROL_PATH}/requests":
            counts: collections.Counter[str] = collections.Counter()
            for (method, plural, sub, named), count in self._tally.items():
                verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
                    method, "get" if named else "list")
                counts[f"{verb} {plural}{'/' + sub if sub else ''}"] += count
            return aiohttp.web.json_response({"total": self._served, "counts": dict(counts)})
        return aiohttp.web.json_response({"message": "not found"}, status=404)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is not None and not resource.plural and resource.version and request.url.path.endswith("/"):
            response = aiohttp.web.json_response(await self._serve_version(request))  # /api/v1/
        elif resource is None or not resource.plural:  # discovery and non-API paths: kmock's own
            response = await super(kmock.KubernetesEmulator, self)._handle(request)
        elif request.params.get("watch") in ("true", "1"):
            self._record(request, 200)  # at the start: a watch lasts until the client leaves
            try:
                return await self._serve_resource(request)
            except ApiError as error:
                return error.response()
        else:
            try:
                response = await self._serve_resource(request)
            except ApiError as error:
                response = error.response()
        self._record(request, response.status)
        return response

    def _record(self, request: kmock.Request, status: int) -> None:
        self._served += 1
        if request.resource is not None and request.resource.plural:
            self._tally[(str(request.method.value).upper(), request.resource.plural, request.subresource or "",
                         "name" if request.name else "")] += 1
        if len(self._requests) > REQUESTS_KEPT:
            del self._requests[: len(self._requests) - REQUESTS_KEPT // 2]
        if len(self._log) > REQUEST_LOG_KEPT:
            del self._log[: len(self._log) - REQUEST_LOG_KEPT // 2]
        resource = request.resource
        method = str(request.method.value).upper()
        verb = None
        if resource is not None and resource.plural:
            if method == "GET":
                verb = "watch" if request.params.get("watch") in ("true", "1") else (
                    "get" if request.name else "list")
            else:
                verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)
                if method == "DELETE":
                    verb = "delete" if request.name else "deletecollection"
        self._log.append(RequestRecord(
            method=method, path=request.url.path, verb=verb,
            group=resource.group if resource else None, version=resource.version if resource else None,
            resource=resource.plural if resource else None, subresource=request.subresource,
            namespace=request.namespace, name=request.name, status=status,
            user_agent=request.headers.get("User-Agent", ""),
        ))

    async def _serve_version(self, request: kmock.Request) -> Any:
        payload = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            payload["groupVersion"] = request.resource.version  # "v1", not "/v1"
        return payload

    async def _serve_resource(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        assert resource is not None
        info = self._info(resource)
        method = str(request.method.value).upper()
        if method == "GET" and request.params.get("watch") in ("true", "1"):
            return await self._watch(request, resource)
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method)
        fault = self.faults.get((verb or "", resource.plural or ""))
        if fault is not None and fault.times > 0:
            self.faults[(verb or "", resource.plural or "")] = dataclasses.replace(fault, times=fault.times - 1)
            raise ApiError(fault.code, fault.reason, fault.message, fault.details)
        async with self._lock:
            if method == "GET" and request.name is None:
                return aiohttp.web.json_response(self._list(request, resource, info))
            if method == "GET":
                return aiohttp.web.json_response(self._fetch(request, resource, info))
            if method == "POST" and request.name is None:
                return aiohttp.web.json_response(self._create(request, resource, info), status=201)
            if method in ("PATCH", "PUT") and request.name is not None:
                return aiohttp.web.json_response(self._update(request, resource, info, method))
            if method == "DELETE" and request.name is not None:
                return aiohttp.web.json_response(self._delete_named(resource, request.namespace, request.name))
            if method == "DELETE":
                return aiohttp.web.json_response(self._delete_collection(request, resource, info))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        for known in self.resources:
            if known == resource:
                return self.resources[known]
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")

    # --- verbs ----------------------------------------------------------------------------

    def _key(self, resource: kmock.resource, namespace: str | None, name: str) -> tuple[Any, ...]:
        return (resource, namespace, name)

    def _current(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        key = self._key(resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return self.objects[key].raw

    def _list(self, request: kmock.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        labels = parse_label_selector(request.params.get("labelSelector"))
        fields = parse_field_selector(request.params.get("fieldSelector"))
        items = [obj for obj in self._live(resource, request.namespace)
                 if labels_match(obj.get("metadata", {}).get("labels") or {}, labels) and fields_match(obj, fields)]
        return {"apiVersion": _api_version(resource), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._revision)}, "items": items}

    def _live(self, resource: kmock.resource, namespace: str | None) -> list[dict[str, Any]]:
        return [obj.raw for (res, ns, _), obj in self.objects.items()
                if res == resource and not obj.deleted and (namespace is None or ns == namespace)]

    def _fetch(self, request: kmock.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        assert request.name is not None
        obj = self._current(resource, request.namespace, request.name)
        if request.subresource == "scale" and "scale" in info.subresources:
            return _scale_of(obj, resource)
        if request.subresource not in (None, "status") or (
                request.subresource == "status" and "status" not in info.subresources):
            raise ApiError(404, "NotFound", f"no subresource {request.subresource!r} on {resource.plural}")
        return obj

    def _create(self, request: kmock.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        body = request.data
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if info.namespaced:
            if request.namespace and meta.get("namespace") not in (None, request.namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
            if not namespace:
                raise ApiError(400, "BadRequest", "a namespaced object needs a namespace")
            meta["namespace"] = namespace
            self._ensure_namespace(namespace)
        else:
            namespace = None
            meta.pop("namespace", None)
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            name = self._generate_name(resource, namespace, prefix)
            meta["name"] = name
        key = self._key(resource, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
        obj.setdefault("apiVersion", _api_version(resource))
        obj.setdefault("kind", info.kind)
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(transient, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339()
        if "spec" in obj:
            meta["generation"] = 1
        if "status" in info.subresources:
            obj.pop("status", None)
        if resource == _NAMESPACES:
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if resource == kmock.resource("apps", "v1", "deployments"):
            obj["spec"].setdefault("replicas", 1)  # the one default the operator relies on
        validate_builtin(resource, obj)
        self._store(key, obj, "ADDED")
        return obj

    def _update(self, request: kmock.Request, resource: kmock.resource, info: kmock.ResourceInfo,
                method: str) -> dict[str, Any]:
        assert request.name is not None
        key = self._key(resource, request.namespace, request.name)
        current = self._current(resource, request.namespace, request.name)
        sub = request.subresource
        if sub not in (None, "status", "scale") or (sub is not None and sub not in info.subresources):
            raise ApiError(404, "NotFound", f"no subresource {sub!r} on {resource.plural}")
        base = _scale_of(current, resource) if sub == "scale" else current
        changed = self._apply(request, base, method)
        expected_version = (changed.get("metadata") or {}).get("resourceVersion")
        if expected_version and expected_version != current["metadata"].get("resourceVersion"):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} "{request.name}": '
                           "the object has been modified; please apply your changes to the latest version")
        new = copy.deepcopy(current)
        if sub == "scale":
            replicas = (changed.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "Invalid", "spec.replicas must be a non-negative integer")
            new.setdefault("spec", {})["replicas"] = replicas
        elif sub == "status":
            if "status" in changed:
                new["status"] = changed["status"]
            else:
                new.pop("status", None)
        else:
            new = {k: v for k, v in changed.items()}
            if "status" in info.subresources:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
            meta = dict(new.get("metadata") or {})
            for fixed in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "generation"):
                if fixed in current["metadata"]:
                    meta[fixed] = current["metadata"][fixed]
                else:
                    meta.pop(fixed, None)
            new["metadata"] = meta
        new["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
        if new == current:
            return _scale_of(current, resource) if sub == "scale" else current  # a no-op writes nothing
        if sub is None:
            validate_builtin(resource, new)
        if "generation" in current["metadata"] and _essence(new) != _essence(current):
            new["metadata"]["generation"] = current["metadata"]["generation"] + 1
        self._store(key, new, "MODIFIED")
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(key)
        return _scale_of(new, resource) if sub == "scale" else new

    def _apply(self, request: kmock.Request, base: dict[str, Any], method: str) -> dict[str, Any]:
        body = request.data
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body of a replace must be a JSON object")
                return copy.deepcopy(body)
            if content_type == "application/json-patch+json" or isinstance(body, list):
                return jsonpatch.apply_patch(copy.deepcopy(base), body, in_place=False)
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of a merge patch must be a JSON object")
            return _merge(copy.deepcopy(base), body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            raise ApiError(422, "Invalid", f"the JSON patch cannot be applied: {error}") from None

    def _delete_named(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        key = self._key(resource, namespace, name)
        current = self._current(resource, namespace, name)
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return current
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            self._store(key, new, "MODIFIED")
            return new
        return self._remove(key)

    def _delete_collection(self, request: kmock.Request, resource: kmock.resource,
                           info: kmock.ResourceInfo) -> dict[str, Any]:
        listing = self._list(request, resource, info)
        for obj in listing["items"]:
            self._delete_named(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"}

    def _remove(self, key: tuple[Any, ...]) -> dict[str, Any]:
        """Delete for good, then collect the dependents whose owners are all gone."""
        final = copy.deepcopy(self.objects[key].raw)
        self._revision += 1
        final["metadata"]["resourceVersion"] = str(self._revision)
        self.objects[key].delete()
        self._emit(key[0], {"type": "DELETED", "object": final})
        self._collect_garbage()
        return final

    def _collect_garbage(self) -> None:
        alive = {obj.raw["metadata"].get("uid") for obj in self.objects.values() if not obj.deleted}
        for (resource, namespace, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if owners and not any(owner.get("uid") in alive for owner in owners):
                if not obj.raw["metadata"].get("deletionTimestamp"):
                    self._delete_named(resource, namespace, name)

    # --- storage and events -----------------------------------------------------------------

    def _store(self, key: tuple[Any, ...], obj: dict[str, Any], event_type: str) -> None:
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        if key in self.objects:
            history = self.objects[key]
            history.create(obj)
            if len(history.history) > HISTORY_PER_OBJECT:
                del history.history[:-HISTORY_PER_OBJECT]
        else:
            self.objects[key] = obj
        self._emit(key[0], {"type": event_type, "object": obj})

    def _emit(self, resource: kmock.resource, event: dict[str, Any]) -> None:
        self._events.append((self._revision, resource, event))
        for watcher in self._watchers:
            if watcher.resource == resource and self._wanted(watcher, event["object"]):
                watcher.queue.put_nowait(event)

    @staticmethod
    def _wanted(watcher: _Watcher, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return ((watcher.namespace is None or meta.get("namespace") == watcher.namespace)
                and (watcher.name is None or meta.get("name") == watcher.name)
                and labels_match(meta.get("labels") or {}, watcher.labels)
                and fields_match(obj, watcher.fields))

    def _generate_name(self, resource: kmock.resource, namespace: str | None, prefix: str) -> str:
        alphabet = string.ascii_lowercase + string.digits
        while True:
            name = prefix + "".join(random.choices(alphabet, k=5))
            key = self._key(resource, namespace, name)
            if key not in self.objects or self.objects[key].deleted:
                return name

    async def _watch(self, request: kmock.Request, resource: kmock.resource) -> aiohttp.web.StreamResponse:
        since = request.params.get("resourceVersion") or ""
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        watcher = _Watcher(resource=resource, namespace=request.namespace, name=request.name,
                           labels=parse_label_selector(request.params.get("labelSelector")),
                           fields=parse_field_selector(request.params.get("fieldSelector")),
                           queue=asyncio.Queue())
        async with self._lock:
            if since in ("", "0"):
                for obj in self._live(resource, request.namespace):
                    if self._wanted(watcher, obj):
                        watcher.queue.put_nowait({"type": "ADDED", "object": obj})
            else:
                if not since.isdigit():
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}")
                truncated = len(self._events) == self._events.maxlen
                if truncated and int(since) < self._events[0][0] - 1:
                    expired = ApiError(410, "Expired", f"too old resource version: {since}")
                    watcher.queue.put_nowait({"type": "ERROR", "object": expired.status()})
                else:
                    for revision, res, event in self._events:
                        if revision > int(since) and res == resource and self._wanted(watcher, event["object"]):
                            watcher.queue.put_nowait(event)
            self._watchers.append(watcher)
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request._raw_request)
            deadline = asyncio.get_running_loop().time() + timeout if timeout else None
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
                if event["type"] == "ERROR":
                    break
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            async with self._lock:
                self._watchers.remove(watcher)
        return response

    # --- namespaces -------------------------------------------------------------------------

    def _ensure_namespace(self, name: str) -> None:
        """Namespaces appear on first use (and can be created explicitly), as kopf expects."""
        key = self._key(_NAMESPACES, None, name)
        if key in self.objects and not self.objects[key].deleted:
            return
        self._store(key, {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(),
                         "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }, "ADDED")


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def _essence(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic-merge directives are not interpreted)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _scale_of(obj: dict[str, Any], resource: kmock.resource) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if resource.group == "apps":
        match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
    else:
        selector = status.get("selector", "")
    return {
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in meta},
        "spec": {"replicas": spec.get("replicas", 0)},
        "status": {"replicas": status.get("replicas", 0), "selector": selector},
    }


# --- running it -----------------------------------------------------------------------------


class RunningEmulator:
    """The emulator served over HTTP on 127.0.0.1 from a background thread with its own loop."""

    def __init__(self, emulator: KubernetesEmulator | None = None, host: str = "127.0.0.1", port: int = 0):
        self.emulator = emulator if emulator is not None else KubernetesEmulator()
        self.host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    def start(self) -> RunningEmulator:
        self._thread = threading.Thread(target=self._main, name="kubernetes-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(30) or self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start()
            self._error = error
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with self.emulator:
            server = aiohttp.web.Server(self.emulator)
            runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, self.host, self._port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self._port = sockets[0].getsockname()[1]
            self._started.set()
            try:
                await self._stopping.wait()
            finally:
                await runner.cleanup()

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return path


def start_emulator(emulator: KubernetesEmulator | None = None, host: str = "127.0.0.1", port: int = 0) -> RunningEmulator:
    """Start an emulator in a background thread; stop it with `.stop()` (or use it as a context)."""
    return RunningEmulator(emulator, host, port).start()


def _control_url(kubeconfig: str | Path) -> str:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    return config["clusters"][0]["cluster"]["server"] + CONTROL_PATH


def set_latency(kubeconfig: str | Path, latency: float, jitter: float = 0.0) -> None:
    """Set the per-request latency of an emulator (in this process or another) by its kubeconfig."""
    import urllib.request

    request = urllib.request.Request(f"{_control_url(kubeconfig)}/latency", method="PUT",
                                     data=json.dumps({"latency": latency, "jitter": jitter}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


def request_counts(kubeconfig: str | Path) -> dict[str, Any]:
    """{"total": requests served, "counts": {"verb resource[/sub]": n}} since the emulator started
    (a watch counts once, when it starts; "get" of a collection is a list)."""
    import urllib.request

    with urllib.request.urlopen(f"{_control_url(kubeconfig)}/requests", timeout=30) as response:
        return json.loads(response.read())
