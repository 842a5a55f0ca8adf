"""The load client against a small aiohttp stand-in for an OpenAI server: streamed tokens and the
usage count, failures as errors, the server's gauges, and a step cut short once its TTFT
percentile is certainly missed."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tokenscale.calibrate.client import Endpoint, EndpointError, LoadClient
from tokenscale.calibrate.plan import PlannedRequest
from tokenscale.calibrate.search import TTFT, SearchConfig, Slo, late_budget, step_point, verdict


class FakeServer:
    """Streams `max_tokens` chunks (two tokens in the last one, as a server may batch them), after
    `delay` seconds; `fail_every` answers 500 to every n-th request; exposes vLLM gauges."""

    def __init__(self, delay: float = 0.0, fail_every: int = 0):
        self.delay, self.fail_every, self.seen, self.in_flight, self.bodies = delay, fail_every, 0, 0, []

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.seen += 1
        if self.fail_every and self.seen % self.fail_every == 0:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if not body.get("stream"):
            return web.json_response({"choices": [{"text": "x"}],
                                      "usage": {"prompt_tokens": len(body["prompt"].split()) * 2}})
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            tokens = body["max_tokens"]
            for _ in range(tokens - 2):
                await response.write(b'data: {"choices": [{"text": "a"}]}\n\n')
                await asyncio.sleep(0.001)
            await response.write(b'data: {"choices": [{"text": "bc"}]}\n\n')
            usage = {"choices": [], "usage": {"completion_tokens": tokens}}
            await response.write(f"data: {json.dumps(usage)}\n\n".encode() + b"data: [DONE]\n\n")
            return response
        finally:
            self.in_flight -= 1

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f'vllm:num_requests_running{{model_name="m"}} {self.in_flight}\n'
                                 'vllm:num_requests_waiting{model_name="m"} 0\n')


async def _serve(fake: FakeServer):
    app = web.Application()
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_get("/metrics", fake.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/v1"


def _run(fake: FakeServer, scenario):
    async def go():
        runner, url = await _serve(fake)
        try:
            async with LoadClient(Endpoint(url=url, model="m")) as client:
                return await scenario(client)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def test_a_step_streams_counts_tokens_and_reads_gauges() -> None:
    fake = FakeServer(delay=0.01, fail_every=10)
    plan = [PlannedRequest(i * 0.02, 20, 6) for i in range(30)]

    async def scenario(client):
        await client.prepare()
        assert client.words_per_token == 0.5 and client.has_gauges
        return await client.run_step(plan, drain_s=5)

    samples, gauges = _run(fake, scenario)
    assert fake.bodies[1]["ignore_eos"] is True and fake.bodies[1]["stream_options"] == {"include_usage": True}
    assert len(fake.bodies[1]["prompt"].split()) == 10  # 20 tokens at 0.5 words a token
    ok = [s for s in samples if s.ok]
    assert len(ok) == 27 and all(s.output_tokens == 6 for s in ok)  # 5 chunks, 6 tokens by the usage
    assert all(s.first_token_at - s.scheduled_at >= 0.01 for s in ok)
    point = step_point(50.0, samples, Slo(ttft_s=1.0, percentile=50), gauges)
    assert point.errors == 3 and point.queue_source == "server"


def test_a_lost_step_is_cut_short() -> None:
    fake = FakeServer(delay=3.0)  # every request misses a 0.2 s target
    plan = [PlannedRequest(i * 0.01, 5, 3) for i in range(100)]
    slo = Slo(ttft_s=0.2, percentile=90)

    async def scenario(client):
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await client.run_step(plan, drain_s=30, ttft_budget=(slo.ttft_s, late_budget(len(plan), 90)))
        return result, loop.time() - began

    (samples, _), took = _run(fake, scenario)
    assert took < 2.0  # not the 3 s each answer takes, nor the 30 s drain
    assert len(samples) < 100 and all(s.cut and not s.ok for s in samples)
    point = step_point(100.0, samples, slo)
    assert point.cut_short and point.errors == 0
    assert verdict(point, slo, SearchConfig()) == TTFT


def test_late_budget_is_the_nearest_rank_complement() -> None:
    assert late_budget(100, 90) == 10 and late_budget(100, 99) == 1 and late_budget(60, 90) == 6
    assert late_budget(10, 99) == 0


def test_an_endpoint_that_refuses_is_reported() -> None:
    async def refuse(request):
        return web.json_response({"error": {"message": "no such model"}}, status=404)

    async def go():
        app = web.Application()
        app.router.add_post("/v1/completions", refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with LoadClient(Endpoint(url=f"http://127.0.0.1:{port}/v1", model="m")) as client:
                await client.prepare()
        finally:
            await runner.cleanup()

    with pytest.raises(EndpointError, match="HTTP 404.*no such model"):
        asyncio.run(go())
