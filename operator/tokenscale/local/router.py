"""The router: an OpenAI-compatible reverse proxy in front of the ready replicas.

It stands in for the Kubernetes Service of the demo. Each request goes to the ready replica
with the fewest requests outstanding through this router. A replica that answers 503 (it is
draining after SIGTERM) or refuses the connection (it just exited) is skipped and the request is
retried on another, since nothing has reached the client yet; a 429 (the replica's queue is
full) is the server's explicit answer and passes through. Responses stream through chunk by
chunk, so server-sent events keep their timing.

With a `fallback` (the activator, in the scale-from-zero scenario) a request that finds no ready
replica goes there at once instead of waiting: it stands in for the EndpointSlice that points a
Service at the activator while the service has no ready replica. The request then carries the
Host `fallback_host` (the Service's in-cluster name), as a client of the Service would send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus the ones aiohttp sets.
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


@dataclass
class Backend:
    name: str
    url: str
    outstanding: int = 0
    served: int = 0


class Router:
    """Least-outstanding-requests proxy. `set_backends` is called whenever readiness changes."""

    def __init__(self, wait_for_backend_seconds: float = 60.0, max_attempts: int = 8,
                 fallback: str | None = None, fallback_host: str | None = None) -> None:
        self.wait_for_backend_seconds = wait_for_backend_seconds
        self.max_attempts = max_attempts
        self.fallback = Backend("fallback", fallback) if fallback else None
        self.fallback_host = fallback_host
        self.sent_to_fallback = 0
        self._backends: dict[str, Backend] = {}
        self._changed = asyncio.Event()
        self._tiebreak = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.retries = 0
        self.url = ""

    # --- membership -------------------------------------------------------------------------

    def set_backends(self, ready: dict[str, str]) -> None:
        """Replace the pool with `ready` (name -> base URL); counts of kept backends survive."""
        kept = {name: b for name, b in self._backends.items() if name in ready and b.url == ready[name]}
        for name, url in ready.items():
            kept.setdefault(name, Backend(name, url))
        self._backends = kept
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    async def _pick(self, excluded: set[str], deadline: float) -> Backend | None:
        while True:
            candidates = [b for b in self._backends.values() if b.name not in excluded]
            if not candidates and self.fallback is not None:
                return self.fallback
            if candidates:
                turn = next(self._tiebreak)
                n = len(candidates)
                return min(
                    enumerate(candidates), key=lambda ib: (ib[1].outstanding, (ib[0] - turn) % n)
                )[1]
            if excluded:  # every replica refused once: try them again (a new one may be ready)
                excluded.clear()
                await asyncio.sleep(0.2)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))

    # --- serving ----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        deadline = time.monotonic() + self.wait_for_backend_seconds
        excluded: set[str] = set()
        for attempt in range(self.max_attempts):
            backend = await self._pick(excluded, deadline)
            if backend is None:
                return _error(503, "no ready replica behind the router")
            backend.outstanding += 1
            response: web.StreamResponse | None = None
            sent = headers
            if backend is self.fallback:
                self.sent_to_fallback += 1
                sent = {**headers, "Host": self.fallback_host} if self.fallback_host else headers
            try:
                async with self._session.request(
                    request.method, backend.url + request.path_qs, data=body, headers=sent
                ) as upstream:
                    if upstream.status == 503 and backend is not self.fallback and attempt + 1 < self.max_attempts:
                        excluded.add(backend.name)  # draining: another replica takes it
                        self.retries += 1
                        continue
                    response = web.StreamResponse(
                        status=upstream.status,
                        reason=upstream.reason,
                        headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS},
                    )
                    await response.prepare(request)
                    try:
                        async for chunk in upstream.content.iter_any():
                            await response.write(chunk)
                        await response.write_eof()
                    except ConnectionResetError:
                        pass  # the client went away; leaving the block closes the upstream request too
                    backend.served += 1
                    return response
            except aiohttp.ClientConnectionError:  # refused, reset while sending the request, disconnected
                if response is not None:
                    raise  # mid-stream: the client holds part of an answer, it cannot be replayed
                excluded.add(backend.name)  # the replica is exiting or gone: another one takes it
                self.retries += 1
            finally:
                backend.outstanding -= 1
        return _error(503, f"no replica accepted the request after {self.max_attempts} attempts")


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "service_unavailable", "code": status}}, status=status
    )
