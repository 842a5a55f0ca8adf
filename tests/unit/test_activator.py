"""The activator's proxy: holding, bounds, heartbeats and forwarding, against real HTTP servers
(aiohttp test servers as the replica and as the client) and an in-memory cluster."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tokenscale.activator import Activator, ActivatorConfig, KnownService, Unresolved, parse_host, resolve
from tokenscale.activator.hosts import HostName

SERVICE = KnownService("team-a", "llama", "llama-8b")
HOST = "llama.team-a.svc.cluster.local:8000"


class FakeCluster:
    """The cluster as the activator sees it: services, ready endpoints, wake-ups."""

    def __init__(self, services=(SERVICE,)) -> None:
        self.known = list(services)
        self.endpoints: dict[tuple[str, str], list[str]] = {}
        self.wakes: list[tuple[str, str]] = []
        self.on_wake = None

    async def services(self):
        return self.known

    async def ready_endpoints(self, key):
        return list(self.endpoints.get(key, []))

    async def request_activation(self, key):
        self.wakes.append(key)
        if self.on_wake is not None:
            self.on_wake(key)


async def replica_app() -> web.Application:
    """A stand-in replica: OpenAI completions, streamed (SSE) or not; echoes what it received."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for token in ("a", "b", "c"):
                chunk = {"choices": [{"text": token}], "model": body["model"]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.json_response({"choices": [{"text": "abc"}], "model": body["model"],
                                  "host": request.headers.get("Host"), "x": request.headers.get("X-Custom")},
                                 headers={"X-Replica": "1"})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


@pytest_asyncio.fixture
async def replica():
    from aiohttp.test_utils import TestServer

    server = TestServer(await replica_app())
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def start(cluster: FakeCluster, **config) -> Activator:
    activator = Activator(cluster, ActivatorConfig(poll_seconds=0.05, **config))
    await activator.start("127.0.0.1", 0, 0)
    return activator


def body(stream: bool = False) -> dict:
    return {"model": "llama-8b", "prompt": "hi", "max_tokens": 3, "stream": stream}


async def post(session: aiohttp.ClientSession, activator: Activator, stream: bool = False, host: str = HOST):
    return await session.post(f"{activator.url}/v1/completions", json=body(stream),
                              headers={"Host": host, "X-Custom": "kept"})


@pytest.mark.asyncio
async def test_a_ready_service_is_forwarded_at_once_unchanged(replica) -> None:
    cluster = FakeCluster()
    cluster.endpoints[SERVICE.key] = [replica]
    activator = await start(cluster)
    try:
        async with aiohttp.ClientSession() as session, await post(session, activator) as response:
            assert response.status == 200 and response.headers["X-Replica"] == "1"
            answer = await response.json()
        assert answer["choices"][0]["text"] == "abc"
        assert answer["host"] == HOST and answer["x"] == "kept"  # headers pass through
        assert cluster.wakes == []  # nothing was held, nothing woken
    finally:
        await activator.stop()


@pytest.mark.asyncio
async def test_held_until_ready_then_forwarded_and_woken_once(replica) -> None:
    cluster = FakeCluster()
    activator = await start(cluster)
    try:
        async with aiohttp.ClientSession() as session:
            requests = [asyncio.create_task(post(session, activator)) for _ in range(3)]
            for _ in range(100):
                if activator.held_gauge.labels(*SERVICE.key)._value.get() == 3:
                    break
                await asyncio.sleep(0.02)
            assert activator.held_gauge.labels(*SERVICE.key)._value.get() == 3
            metrics = await (await session.get(f"{activator.admin_url}/metrics")).text()
            assert 'tokenscale_activator_held_requests{namespace="team-a",service="llama"} 3.0' in metrics
            assert cluster.wakes == [SERVICE.key]  # the first held request woke it; once
            assert not any(r.done() for r in requests)
            cluster.endpoints[SERVICE.key] = [replica]  # a replica becomes ready
            responses = await asyncio.gather(*requests)
            for response in responses:
                assert response.status == 200
                assert (await response.json())["choices"][0]["text"] == "abc"
        assert activator.held_gauge.labels(*SERVICE.key)._value.get() == 0
        assert activator.held_max == 3
    finally:
        await activator.stop()


@pytest.mark.asyncio
async def test_a_held_stream_gets_heartbeats_then_the_replicas_stream(replica) -> None:
    cluster = FakeCluster()
    activator = await start(cluster, heartbeat_seconds=0.1)
    try:
        async with aiohttp.ClientSession() as session, await post(session, activator, stream=True) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 2)
            second = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 2)
            assert first == second == b": keep-alive\n\n"
            cluster.endpoints[SERVICE.key] = [replica]
            rest = (await response.content.read()).decode()
        events = [line for line in rest.split("\n") if line.startswith("data:")]
        texts = [json.loads(e[5:])["choices"][0]["text"] for e in events if e != "data: [DONE]"]
        assert texts == ["a", "b", "c"] and events[-1] == "data: [DONE]"
    finally:
        await activator.stop()


@pytest.mark.asyncio
async def test_over_the_bound_gets_503_with_retry_after() -> None:
    cluster = FakeCluster()
    activator = await start(cluster, max_held_requests=2, retry_after_seconds=7)
    try:
        async with aiohttp.ClientSession() as session:
            held = [asyncio.create_task(post(session, activator)) for _ in range(2)]
            for _ in range(100):
                if activator.held_gauge.labels(*SERVICE.key)._value.get() == 2:
                    break
                await asyncio.sleep(0.02)
            async with await post(session, activator) as response:
                assert response.status == 503 and response.headers["Retry-After"] == "7"
                error = (await response.json())["error"]
            assert error["code"] == "activator_full" and "2 requests" in error["message"]
            assert error["type"] == "service_unavailable"
            assert not any(r.done() for r in held)  # the held ones are still held, not dropped
            for task in held:
                task.cancel()
    finally:
        await activator.stop()


@pytest.mark.asyncio
async def test_past_the_hold_timeout_503_or_an_error_event_in_the_stream() -> None:
    cluster = FakeCluster()
    activator = await start(cluster, hold_timeout_seconds=0.4, heartbeat_seconds=0.1, retry_after_seconds=3)
    try:
        async with aiohttp.ClientSession() as session:
            async with await post(session, activator) as response:
                assert response.status == 503 and response.headers["Retry-After"] == "3"
                assert (await response.json())["error"]["code"] == "activator_timeout"
            async with await post(session, activator, stream=True) as response:
                assert response.status == 200  # committed by the heartbeats
                text = (await response.content.read()).decode()
            assert ": keep-alive" in text
            events = [line for line in text.split("\n") if line.startswith("data:")]
            assert events[-1] == "data: [DONE]"
            error = json.loads(events[-2][5:])["error"]
            assert error["code"] == "activator_timeout" and error["status"] == 503
        assert activator.held_gauge.labels(*SERVICE.key)._value.get() == 0
    finally:
        await activator.stop()


@pytest.mark.asyncio
async def test_unknown_and_ambiguous_services_are_answered_openai_style() -> None:
    twins = [KnownService("team-a", "chat", "m1"), KnownService("team-b", "chat", "m1")]
    activator = await start(FakeCluster([SERVICE, *twins]))
    try:
        async with aiohttp.ClientSession() as session:
            async with await post(session, activator, host="nope.team-a.svc") as response:
                assert response.status == 404
                assert (await response.json())["error"]["type"] == "not_found_error"
            async with session.post(f"{activator.url}/v1/completions", json={"model": "m1"},
                                    headers={"Host": "chat:8000"}) as response:
                assert response.status == 400
                assert "chat.team-a, chat.team-b" in (await response.json())["error"]["message"]
            health = await session.get(f"{activator.admin_url}/healthz")
            ready = await session.get(f"{activator.admin_url}/readyz")
            assert health.status == 200 and ready.status == 200
    finally:
        await activator.stop()


@pytest.mark.asyncio
async def test_a_client_that_leaves_is_no_longer_held() -> None:
    activator = await start(FakeCluster())
    try:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(post(session, activator))
            for _ in range(100):
                if activator.held_gauge.labels(*SERVICE.key)._value.get() == 1:
                    break
                await asyncio.sleep(0.02)
            task.cancel()
        for _ in range(100):
            if activator.held_gauge.labels(*SERVICE.key)._value.get() == 0:
                break
            await asyncio.sleep(0.05)
        assert activator.held_gauge.labels(*SERVICE.key)._value.get() == 0
    finally:
        await activator.stop()


# --- telling services apart ------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [
    ("llama.team-a", HostName("llama", "team-a")),
    ("llama.team-a.svc:8000", HostName("llama", "team-a")),
    ("llama.team-a.svc.cluster.local.", HostName("llama", "team-a")),
    ("LLAMA:8000", HostName("llama", None)),
    ("10.0.0.7:8000", HostName(None, None)),
    ("[fd00::1]:8000", HostName(None, None)),
    ("llm.example.com", HostName(None, None)),
    ("", HostName(None, None)),
])
def test_parse_host(host: str, expected: HostName) -> None:
    assert parse_host(host) == expected


def test_resolve_by_host_then_by_model() -> None:
    a, b, c = KnownService("x", "chat", "m1"), KnownService("y", "chat", "m2"), KnownService("y", "code", "m3")
    services = [a, b, c]
    assert resolve("chat.y.svc", b"{}", services) == b
    assert resolve("chat", json.dumps({"model": "m2"}).encode(), services) == b
    assert resolve("code:80", b"", services) == c  # one service of that name: no model needed
    assert resolve("10.1.2.3", json.dumps({"model": "m1"}).encode(), services) == a
    with pytest.raises(Unresolved) as error:
        resolve("chat", b"{}", services)
    assert error.value.status == 400 and "<name>.<namespace>" in str(error.value)
    with pytest.raises(Unresolved) as error:
        resolve("chat", json.dumps({"model": "m9"}).encode(), services)
    assert error.value.status == 404


@pytest.mark.asyncio
async def test_a_replica_that_refuses_is_tried_again_after_a_pause(replica) -> None:
    """Listed ready but answering 503 (draining, or not serving yet): retried, not passed on."""
    from aiohttp.test_utils import TestServer

    calls = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        return web.json_response({"error": {"message": "draining"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/completions", refuse)
    refusing = TestServer(app)
    await refusing.start_server()
    cluster = FakeCluster()
    cluster.endpoints[SERVICE.key] = [str(refusing.make_url("")).rstrip("/")]
    activator = await start(cluster)
    try:
        async with aiohttp.ClientSession() as session:
            pending = asyncio.create_task(post(session, activator))
            await asyncio.sleep(0.3)
            assert not pending.done() and 2 <= len(calls) <= 10  # paced by the poll, not a busy loop
            cluster.endpoints[SERVICE.key] = [replica]
            response = await pending
            assert response.status == 200
    finally:
        await activator.stop()
        await refusing.close()
