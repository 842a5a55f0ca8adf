"""The load client: streams OpenAI-compatible requests on aiohttp at planned (open-loop) times and
samples the server's queue gauges while it does.

Each request streams with `ignore_eos` (so it generates the tokens asked for) and
`stream_options.include_usage` (the usage block's count is exact even when a chunk carries more
than one token). Its TTFT counts from the planned arrival, not from when the client got round to
sending it. Anything that is not a complete 200 stream is a failed request.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from .plan import PlannedRequest
from .search import GaugeSample, RequestSample

# Common words, shuffled into each prompt, so no two prompts share a prefix a cache could reuse.
_WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government number "
    "night point home water room mother area money story fact month lot right study book eye job word "
    "business issue side kind head house service friend father power hour game line end member law car "
    "city community name president team minute idea kid body information back parent face others level"
).split()

# The queue, the batch and the KV-cache use under each engine's metric names (either spelling).
GAUGE_NAMES = {
    "waiting": ("vllm:num_requests_waiting", "vllm_num_requests_waiting", "sglang:num_queue_reqs",
                "sglang_num_queue_reqs", "tgi_queue_size"),
    "running": ("vllm:num_requests_running", "vllm_num_requests_running", "sglang:num_running_reqs",
                "sglang_num_running_reqs", "tgi_batch_current_size"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm_kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                 "vllm_gpu_cache_usage_perc", "sglang:token_usage", "sglang_token_usage"),
}


class EndpointError(Exception):
    """The endpoint cannot be calibrated (unreachable, wrong model, not OpenAI-compatible)."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # the API base, ending in /v1
    model: str
    api: str = "completions"  # or "chat"
    api_key: str | None = None
    metrics_url: str | None = None  # None: the API base's host + /metrics; "" = do not scrape

    def metrics(self) -> str | None:
        if self.metrics_url is not None:
            return self.metrics_url or None
        base = self.url.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
        return f"{base}/metrics"


def parse_gauges(text: str) -> dict[str, float]:
    """The gauges this client reads from a Prometheus text exposition, summed over label sets."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        for key, names in GAUGE_NAMES.items():
            if name in names:
                try:
                    rest = line.rsplit("}", 1)[-1] if line[name_end] == "{" else line[name_end:]
                    value = float(rest.split()[0])
                except (IndexError, ValueError):
                    continue
                found[key] = found.get(key, 0.0) + value
    return found


class LoadClient:
    """One aiohttp session for the whole calibration. Use as `async with LoadClient(...) as c`."""

    def __init__(self, endpoint: Endpoint, *, request_timeout_s: float = 600.0, seed: int = 0):
        self.endpoint = endpoint
        self.request_timeout_s = request_timeout_s
        self.rng = random.Random(seed)
        self.words_per_token = 1.0
        self.has_gauges = False
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadClient:
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=10),
            headers=headers,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use LoadClient as an async context manager"
        return self._session

    # --- before the sweep ---------------------------------------------------------------------

    async def prepare(self) -> None:
        """Check the endpoint answers for the model, learn how many prompt tokens a word costs
        (from the server's own usage count), and whether it exports queue gauges."""
        words = 40  # short enough for any context window
        body = self._body(" ".join(self.rng.choice(_WORDS) for _ in range(words)), 1, stream=False)
        try:
            async with self.session.post(self._path(), json=body) as response:
                text = await response.text()
                if response.status != 200:
                    raise EndpointError(f"{self._path()} answered HTTP {response.status}: {text[:300]}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EndpointError(f"cannot reach {self._path()}: {error}") from None
        try:
            prompt_tokens = json.loads(text)["usage"]["prompt_tokens"]
        except (ValueError, KeyError, TypeError):
            raise EndpointError(f"{self._path()} answered without usage.prompt_tokens: {text[:300]}") from None
        if not isinstance(prompt_tokens, int) or prompt_tokens <= 0:
            raise EndpointError(f"{self._path()} reported {prompt_tokens!r} prompt tokens")
        self.words_per_token = words / prompt_tokens
        self.has_gauges = await self.gauges(0.0) is not None

    async def service_time(self, input_tokens: int, output_tokens: int, repeats: int = 3) -> float:
        """Seconds one request takes alone (closed loop, one at a time; the median of a few).
        Only the first rate of the sweep comes from it."""
        times = []
        for _ in range(repeats):
            sample = await self._one(PlannedRequest(0.0, input_tokens, output_tokens), time.monotonic())
            if not sample.ok or sample.finished_at is None:
                raise EndpointError("a single request failed before the sweep; is the endpoint healthy?")
            times.append(sample.finished_at)
        return sorted(times)[len(times) // 2]

    # --- one step -----------------------------------------------------------------------------

    async def run_step(
        self,
        plan: list[PlannedRequest],
        *,
        drain_s: float,
        on_done: Callable[[int], None] | None = None,
        gauge_interval_s: float = 0.25,
        ttft_budget: tuple[float, int] | None = None,
    ) -> tuple[list[RequestSample], list[GaugeSample]]:
        """Send `plan` at its times (never waiting for answers), sample the gauges meanwhile, and
        cancel whatever is still running `drain_s` after the last arrival (those are failures).

        `ttft_budget` = (target seconds, how many requests may miss it): once more than that many
        have missed it (answered late, or still unanswered past the target), the step has failed
        whatever happens next, so it stops sending and cancels the rest (marked `cut`). A
        saturated step then ends in seconds instead of piling minutes of backlog on the server."""
        start = time.monotonic()
        done = 0
        gauges: list[GaugeSample] = []
        awaiting: dict[int, float] = {}  # request index -> planned arrival, until its first token
        late = 0

        def on_first(index: int, at: float) -> None:
            nonlocal late
            planned_at = awaiting.pop(index, None)
            if ttft_budget is not None and planned_at is not None and at - planned_at > ttft_budget[0]:
                late += 1

        def lost() -> bool:
            if ttft_budget is None:
                return False
            now = time.monotonic() - start
            overdue = 0
            for planned_at in awaiting.values():  # in arrival order: stop at the first still in time
                if now - planned_at <= ttft_budget[0]:
                    break
                overdue += 1
            return late + overdue > ttft_budget[1]

        def finished(_task) -> None:
            nonlocal done
            done += 1
            if on_done is not None:
                on_done(done)

        async def sample_gauges() -> None:
            while True:
                sample = await self.gauges(time.monotonic() - start)
                if sample is not None:
                    gauges.append(sample)
                await asyncio.sleep(gauge_interval_s)

        sampler = asyncio.create_task(sample_gauges()) if self.has_gauges else None
        tasks: list[asyncio.Task] = []
        cut = False
        for index, planned in enumerate(plan):
            delay = planned.at - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            if lost():
                cut = True
                break
            awaiting[index] = planned.at
            task = asyncio.create_task(self._one(planned, start, on_first=lambda at, i=index: on_first(i, at)))
            task.add_done_callback(finished)
            tasks.append(task)
        last = plan[len(tasks) - 1].at if tasks else 0.0
        deadline = start + last + drain_s
        pending = {t for t in tasks if not t.done()}
        while pending and not cut and time.monotonic() < deadline:
            _, pending = await asyncio.wait(pending, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            cut = lost()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        if sampler is not None:
            sampler.cancel()
        samples = []
        for planned, task in zip(plan, tasks, strict=False):
            if task.cancelled():
                samples.append(RequestSample(planned.at, planned.input_tokens, ok=False, cut=cut))
            else:
                samples.append(task.result())
        return samples, gauges

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Let the server finish (or drop) what a step left before the next one starts."""
        deadline = time.monotonic() + timeout_s
        while self.has_gauges and time.monotonic() < deadline:
            sample = await self.gauges(0.0)
            if sample is None or sample.running + sample.waiting == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)

    async def gauges(self, at: float) -> GaugeSample | None:
        url = self.endpoint.metrics()
        if url is None:
            return None
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status != 200:
                    return None
                found = parse_gauges(await response.text())
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None
        if "waiting" not in found or "running" not in found:
            return None
        return GaugeSample(at=at, waiting=found["waiting"], running=found["running"], kv_usage=found.get("kv_usage"))

    # --- a request ----------------------------------------------------------------------------

    def _path(self) -> str:
        return f"{self.endpoint.url.rstrip('/')}/{'chat/completions' if self.endpoint.api == 'chat' else 'completions'}"

    def _body(self, prompt: str, max_tokens: int, *, stream: bool) -> dict:
        body: dict = {"model": self.endpoint.model, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
        if self.endpoint.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _prompt(self, input_tokens: int) -> str:
        words = max(1, round(input_tokens * self.words_per_token))
        return " ".join(self.rng.choice(_WORDS) for _ in range(words))

    async def _one(self, planned: PlannedRequest, start: float, on_first=None) -> RequestSample:
        body = self._body(self._prompt(planned.input_tokens), planned.output_tokens, stream=True)
        first = last = None
        count = 0
        usage = None
        failed = False
        try:
            async with self.session.post(self._path(), json=body) as response:
                if response.status != 200:
                    await response.read()
                    failed = True
                else:
                    done = False
                    async for raw in response.content:
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
                        chunk = json.loads(data)
                        if chunk.get("error"):
                            failed = True
                            break
                        if chunk.get("usage"):
                            usage = chunk["usage"].get("completion_tokens")
                        if _has_text(chunk):
                            now = time.monotonic() - start
                            if first is None:
                                first = now
                                if on_first is not None:
                                    on_first(now)
                            last = now
                            count += 1
                    failed = failed or not done
        except (aiohttp.ClientError, TimeoutError, ValueError):
            failed = True
        finished = time.monotonic() - start
        tokens = usage if isinstance(usage, int) and usage >= count else count
        if failed or first is None:
            return RequestSample(planned.at, planned.input_tokens, ok=False, finished_at=finished)
        return RequestSample(planned.at, planned.input_tokens, ok=True, first_token_at=first, last_token_at=last,
                             finished_at=finished, output_tokens=tokens)


def _has_text(chunk: dict) -> bool:
    for choice in chunk.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False
