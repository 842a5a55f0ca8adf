"""The activator's proxy: hold each request until its service has a ready replica, then forward it.

Requests reach the activator while their InferenceService has no ready replica (the operator
points the service's traffic here, docs/scale-to-zero.md). For each request it:

- finds the service (Host header, else the model; hosts.py) and, when a replica is ready
  already, forwards at once;
- otherwise holds it, and on the service's first held request asks the cluster to wake it
  (`Cluster.request_activation`; repeated every `refresh_seconds` while requests wait);
- while a streaming request waits, sends an SSE comment (`: keep-alive`) every
  `heartbeat_seconds`, so clients and load balancers keep the connection;
- forwards it unchanged to a ready replica (chunk by chunk: streams keep their timing) as soon
  as one is, straight to the pod, not back through the Service;
- past `max_held_requests` held for one service, or after `hold_timeout_seconds`, answers 503
  with Retry-After in the OpenAI error shape (inside the stream, as an error event, when a
  heartbeat has already committed it). A client that leaves stops being held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tokenscale.activator.hosts import KnownService, ServiceKey, Unresolved, resolve
from tokenscale.desired.routing import ACTIVATION_REFRESH_SECONDS

log = logging.getLogger("tokenscale.activator")

# Headers of one hop, not of the message (RFC 9110 7.6.1), and the ones aiohttp sets itself.
_HOP_HEADERS = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Content-Length"))
HEARTBEAT = b": keep-alive\n\n"


class ClusterUnavailable(RuntimeError):
    """The Kubernetes API could not answer."""


class Cluster(Protocol):
    """What the activator needs from the cluster (kube.py: the Kubernetes API; tests: a fake)."""

    async def services(self) -> list[KnownService]: ...  # the services routed through the activator

    async def ready_endpoints(self, key: ServiceKey) -> list[str]: ...  # base URLs of ready replicas

    async def request_activation(self, key: ServiceKey) -> None: ...  # wake the service now


@dataclass(frozen=True)
class ActivatorConfig:
    max_held_requests: int = 100  # per service
    hold_timeout_seconds: float = 600.0
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 0.5  # how often a held service's readiness is read
    refresh_seconds: float = ACTIVATION_REFRESH_SECONDS  # the wake-up is repeated while requests wait
    retry_after_seconds: int = 10
    services_cache_seconds: float = 5.0


@dataclass
class _Service:
    """One service's held requests and what the activator knows of its replicas."""

    held: int = 0
    endpoints: list[str] = field(default_factory=list)
    checked_at: float = float("-inf")
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task | None = None
    turn: int = 0


class Activator:
    def __init__(self, cluster: Cluster, config: ActivatorConfig | None = None) -> None:
        self.cluster = cluster
        self.config = config or ActivatorConfig()
        self.registry = CollectorRegistry()
        self.held_gauge = Gauge("tokenscale_activator_held_requests", "Requests the activator holds now",
                                ["namespace", "service"], registry=self.registry)
        self.requests = Counter("tokenscale_activator_requests", "Requests by outcome: forwarded (held or "
                                "not), rejected_full, timed_out, client_gone, unresolved",
                                ["namespace", "service", "outcome"], registry=self.registry)
        self.held_max = 0  # the most requests held at once, all services (the demo reports it)
        self._services: dict[ServiceKey, _Service] = {}
        self._known: list[KnownService] = []
        self._known_at = float("-inf")
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.api_ok = False  # the last call to the cluster succeeded (readiness)
        self.draining = False  # stopping: not ready, held requests may still be forwarded
        self.url = ""
        self.admin_url = ""

    # --- life cycle ------------------------------------------------------------------------

    def proxy_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, admin_port: int | None = 0) -> str:
        """Serve the proxy (and, unless admin_port is None, /metrics, /healthz, /readyz on another port)."""
        await self._client()
        apps = [(self.proxy_app(), port)] + ([(self.admin_app(), admin_port)] if admin_port is not None else [])
        urls = []
        for app, bind in apps:
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
            await runner.setup()
            await web.TCPSite(runner, host, bind).start()
            self._runners.append(runner)
            address = runner.addresses[0]
            urls.append(f"http://{'[' + address[0] + ']' if ':' in address[0] else address[0]}:{address[1]}")
        self.url = urls[0]
        self.admin_url = urls[1] if len(urls) > 1 else ""
        return self.url

    async def drain(self, seconds: float) -> None:
        """On SIGTERM: report not ready, and give held requests up to `seconds` to be forwarded."""
        self.draining = True
        deadline = time.monotonic() + seconds
        while any(s.held for s in self._services.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for state in self._services.values():
            if state.watcher is not None:
                state.watcher.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,
            )
        return self._session

    # --- admin endpoints ---------------------------------------------------------------------

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        if not self.api_ok:
            with contextlib.suppress(ClusterUnavailable):
                await self._known_services()
        return web.Response(text="ok\n") if self.api_ok else web.Response(
            status=503, text="the Kubernetes API has not answered yet\n")

    # --- the proxy ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            service = resolve(request.host, body, await self._known_services())
        except Unresolved as error:
            self.requests.labels("", "", "unresolved").inc()
            kind = "not_found_error" if error.status == 404 else "invalid_request_error"
            return error_response(error.status, str(error), kind, "unknown_service")
        except ClusterUnavailable as error:
            return error_response(503, f"the activator cannot reach the Kubernetes API: {error}",
                                  "service_unavailable", "activator_unavailable", self.config.retry_after_seconds)
        return await self._serve(request, body, service)

    async def _serve(self, request: web.Request, body: bytes, service: KnownService) -> web.StreamResponse:
        config = self.config
        state = self._services.setdefault(service.key, _Service())
        stream = wants_stream(body)
        deadline = time.monotonic() + config.hold_timeout_seconds
        committed: web.StreamResponse | None = None  # an SSE response a heartbeat has started
        while True:
            endpoints = await self._endpoints(service.key, state)
            if endpoints:
                answer = await self._forward(request, body, service, state, endpoints, committed)
                if answer is not None:
                    return answer
                # Every replica refused (draining, or not serving yet though listed ready): read them
                # again after a pause, within the same deadline.
                state.checked_at = float("-inf")
                if time.monotonic() < deadline:
                    await asyncio.sleep(config.poll_seconds)
                    continue
                outcome = "timeout"
            else:
                outcome, committed = await self._hold(request, service, state, stream, deadline, committed)
                if outcome == "ready":
                    continue
            if outcome == "client_gone":
                self.requests.labels(*service.key, "client_gone").inc()
                return committed or web.Response(status=499)
            if outcome == "full":
                self.requests.labels(*service.key, "rejected_full").inc()
                return error_response(
                    503, f"the activator already holds {config.max_held_requests} requests for "
                    f"{service.namespace}/{service.name} while it starts; retry later",
                    "service_unavailable", "activator_full", config.retry_after_seconds)
            self.requests.labels(*service.key, "timed_out").inc()
            message = (f"{service.namespace}/{service.name} had no ready replica within "
                       f"{config.hold_timeout_seconds:g} s; retry later")
            if committed is not None:
                await _end_stream_with_error(committed, 503, message, "activator_timeout")
                return committed
            return error_response(503, message, "service_unavailable", "activator_timeout",
                                  config.retry_after_seconds)

    async def _hold(self, request: web.Request, service: KnownService, state: _Service, stream: bool,
                    deadline: float, committed: web.StreamResponse | None,
                    ) -> tuple[str, web.StreamResponse | None]:
        """Wait for a ready replica: 'ready', 'full', 'timeout' or 'client_gone'."""
        config = self.config
        if state.held >= config.max_held_requests:
            return "full", committed
        state.held += 1
        self._count(service.key, state)
        self._watch(service, state)
        next_beat = time.monotonic() + config.heartbeat_seconds
        try:
            while not state.endpoints:
                now = time.monotonic()
                if now >= deadline:
                    return "timeout", committed
                if _gone(request):
                    return "client_gone", committed
                wait = min(deadline, next_beat if stream else deadline, now + 1.0) - now
                changed = state.changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.0))
                if stream and time.monotonic() >= next_beat and not state.endpoints:
                    next_beat = time.monotonic() + config.heartbeat_seconds
                    try:
                        if committed is None:
                            committed = await _start_stream(request)
                        await committed.write(HEARTBEAT)
                    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                        return "client_gone", committed
            return "ready", committed
        finally:
            state.held -= 1
            self._count(service.key, state)

    def _count(self, key: ServiceKey, state: _Service) -> None:
        self.held_gauge.labels(*key).set(state.held)
        self.held_max = max(self.held_max, sum(s.held for s in self._services.values()))

    def _watch(self, service: KnownService, state: _Service) -> None:
        if state.watcher is None or state.watcher.done():
            state.watcher = asyncio.create_task(self._watch_service(service, state))

    async def _watch_service(self, service: KnownService, state: _Service) -> None:
        """While requests are held: wake the service (now, then every refresh) and read its readiness."""
        config = self.config
        woke_at = float("-inf")
        while state.held > 0:
            now = time.monotonic()
            if now - woke_at >= config.refresh_seconds:
                try:
                    await self.cluster.request_activation(service.key)
                    woke_at = now
                    log.info("asked %s/%s to wake (%d request(s) held)", *service.key, state.held)
                except Exception as error:  # noqa: BLE001 - logged; retried within a second
                    log.warning("cannot wake %s/%s: %s", *service.key, error)
                    woke_at = now - config.refresh_seconds + 1.0
            await self._refresh(service.key, state)
            if state.endpoints:
                return
            await asyncio.sleep(config.poll_seconds)

    async def _endpoints(self, key: ServiceKey, state: _Service) -> list[str]:
        if time.monotonic() - state.checked_at > self.config.poll_seconds:
            await self._refresh(key, state)
        return state.endpoints

    async def _refresh(self, key: ServiceKey, state: _Service) -> None:
        try:
            endpoints = await self.cluster.ready_endpoints(key)
            self.api_ok = True
        except Exception as error:  # noqa: BLE001 - an API hiccup: keep holding, read again soon
            log.warning("cannot read the endpoints of %s/%s: %s", *key, error)
            return
        state.checked_at = time.monotonic()
        if endpoints != state.endpoints:
            state.endpoints = endpoints
            if endpoints:
                state.changed.set()
                state.changed = asyncio.Event()

    async def _known_services(self) -> list[KnownService]:
        if time.monotonic() - self._known_at > self.config.services_cache_seconds:
            try:
                self._known = await self.cluster.services()
            except ClusterUnavailable:
                self.api_ok = False
                raise
            self._known_at = time.monotonic()
            self.api_ok = True
        return self._known

    async def _forward(self, request: web.Request, body: bytes, service: KnownService, state: _Service,
                       endpoints: list[str], committed: web.StreamResponse | None) -> web.StreamResponse | None:
        """Send the request to a ready replica; None when every replica refused before answering."""
        session = await self._client()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        state.turn += 1
        order = endpoints[state.turn % len(endpoints):] + endpoints[: state.turn % len(endpoints)]
        for base in order:
            response: web.StreamResponse | None = committed
            try:
                async with session.request(request.method, base + request.path_qs, data=body,
                                           headers=headers) as upstream:
                    if upstream.status == 503:
                        continue  # draining or not ready after all: another one, or hold again
                    self.requests.labels(*service.key, "forwarded").inc()
                    if committed is not None:
                        await _relay_into_stream(committed, upstream)
                        return committed
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers={
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS})
                    await response.prepare(request)
                    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                        async for chunk in upstream.content.iter_any():
                            await response.write(chunk)
                        await response.write_eof()
                    return response
            except aiohttp.ClientConnectionError:
                if response is not None and response is not committed:
                    raise  # mid-answer: the client holds part of it, it cannot be replayed
                continue
        return None


# --- helpers -----------------------------------------------------------------------------------


def wants_stream(body: bytes) -> bool:
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("stream") is True


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def error_body(message: str, kind: str, code: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(status: int, message: str, kind: str, code: str, retry_after: int | None = None) -> web.Response:
    """An OpenAI-style error; with Retry-After when the client should come back."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(error_body(message, kind, code), status=status, headers=headers)


async def _start_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


async def _end_stream_with_error(response: web.StreamResponse, status: int, message: str, code: str) -> None:
    """The stream is committed (200 and heartbeats sent): the error travels as an SSE event."""
    payload = error_body(message, "service_unavailable" if status == 503 else "upstream_error", code)
    payload["error"]["status"] = status
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write(b"data: " + json.dumps(payload).encode() + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()


async def _relay_into_stream(committed: web.StreamResponse, upstream: aiohttp.ClientResponse) -> None:
    """The replica's answer into a stream the heartbeats already started."""
    if upstream.status != 200:
        text = (await upstream.read()).decode(errors="replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        await _end_stream_with_error(committed, upstream.status, message, "upstream_error")
        return
    try:
        async for chunk in upstream.content.iter_any():
            await committed.write(chunk)
        await committed.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # the client left
    except aiohttp.ClientError as error:  # the replica failed mid-answer: say so in the stream
        await _end_stream_with_error(committed, 502, f"the replica failed mid-answer: {error}", "upstream_error")
