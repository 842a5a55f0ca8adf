"""The local router's retries: a replica that drops the connection before answering is skipped."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiohttp
from aiohttp import web

from tokenscale.local.router import Router


async def _resetting_backend() -> tuple[asyncio.AbstractServer, str]:
    """Accepts, then resets the connection at once (a replica exiting while the request is sent)."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        writer.close()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _answering_backend() -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"bytes": len(body)})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def test_a_replica_that_resets_the_connection_is_retried_elsewhere():
    async def scenario() -> None:
        bad, bad_url = await _resetting_backend()
        good, good_url = await _answering_backend()
        router = Router(wait_for_backend_seconds=5, max_attempts=4)
        await router.start()
        try:
            router.set_backends({"bad": bad_url, "good": good_url})
            body = b"x" * (4 * 1024 * 1024)  # large: the reset lands while the body is being written
            async with aiohttp.ClientSession() as session:
                for _ in range(6):
                    async with session.post(router.url + "/v1/completions", data=body) as response:
                        assert response.status == 200, await response.text()
                        assert (await response.json())["bytes"] == len(body)
            served = {backend.name: backend.served for backend in router.backends}
            assert served == {"bad": 0, "good": 6} and router.retries >= 1
        finally:
            await router.stop()
            bad.close()
            await good.cleanup()

    asyncio.run(scenario())


def test_without_a_ready_replica_requests_go_to_the_fallback_with_the_services_host():
    """The scale-from-zero scenario: the activator stands behind the router while no replica is ready."""

    async def scenario() -> None:
        seen: list[str] = []

        async def activator(request: web.Request) -> web.Response:
            seen.append(request.headers["Host"])
            return web.json_response({"via": "activator"})

        app = web.Application()
        app.router.add_post("/v1/completions", activator)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        good, good_url = await _answering_backend()
        router = Router(fallback=f"http://{host}:{port}", fallback_host="chat.team-a.svc.cluster.local:8000")
        await router.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(router.url + "/v1/completions", data=b"{}") as response:
                    assert (await response.json()) == {"via": "activator"}
                router.set_backends({"good": good_url})  # a replica is ready: no more detours
                async with session.post(router.url + "/v1/completions", data=b"{}") as response:
                    assert (await response.json()) == {"bytes": 2}
            assert seen == ["chat.team-a.svc.cluster.local:8000"] and router.sent_to_fallback == 1
        finally:
            await router.stop()
            await runner.cleanup()
            await good.cleanup()

    asyncio.run(scenario())
