"""`tokenscale demo --scenario scale-from-zero`: the local loop from zero replicas, with the real
activator in front.

The InferenceService starts at zero (`minReplicas: 0`, `activation: {activator: true}`). The
router sends a request that finds no ready replica to the activator process (`tokenscale
activator`), standing in for the EndpointSlice that points the Service at the activator in a
cluster. The local kubelet also plays the EndpointSlice controller: it publishes each ready
replica as an EndpointSlice of the Service in the emulated API, which is where the activator
learns that a replica is ready; the activator's own Service gets a slice too, so the operator's
`<service>-activator` slice is made and removed as in a cluster (the timeline records it).

After an idle period a burst of streaming and non-streaming requests arrives at zero: the
activator holds them (heartbeats on the streams), wakes the service, and forwards them when the
replica is ready. Once idle for the scale-to-zero window the service goes back to zero; a second
burst, one request over the activator's bound, shows the 503 with Retry-After; then zero again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tokenscale.desired.routing import SERVICE_NAME_LABEL, SLICE_MANAGER_LABEL, activator_slice_name
from tokenscale.local.demo import REPLICA_ENV, Loop, _tokenscale_executable
from tokenscale.local.kubelet import Kubelet
from tokenscale.local.prometheus import free_port
from tokenscale.local.report import percentile
from tokenscale.local.router import Router
from tokenscale.local.scenario import DemoConfig

log = logging.getLogger(__name__)

ACTIVATOR_NAMESPACE, ACTIVATOR_NAME = "tokenscale-system", "tokenscale-activator"
CONTROLLER = "endpointslice-controller.k8s.io"


@dataclass
class ScaleFromZeroConfig(DemoConfig):
    idle_seconds: float = 6.0  # at zero, before the first burst
    first_burst: int = 10  # requests (every other one streams)
    max_held_requests: int = 12  # the activator's bound; the second burst is one over it
    heartbeat_seconds: float = 2.0
    hold_timeout_seconds: float = 120.0
    output_tokens: int = 16
    scale_to_zero_after: int = 6
    scale_down_stabilization: int = 6
    zero_timeout: float = 90.0  # the longest wait for the service to return to zero
    plot_out: Path | None = Path("tokenscale-scale-from-zero.png")
    min_replicas: int = 0
    max_replicas: int = 2

    def inference_service(self, model_dir: Path) -> dict[str, Any]:
        body = super().inference_service(model_dir)
        body["spec"]["replicas"] = 0
        scaling = body["spec"]["autoscaling"]
        scaling.update(minReplicas=0, activation={"activator": True},
                       scaleToZeroAfterSeconds=self.scale_to_zero_after)
        scaling["scaleDown"]["stabilizationSeconds"] = self.scale_down_stabilization
        return body


@dataclass
class RequestOutcome:
    """One request of the scenario, as its client saw it."""

    burst: int
    stream: bool
    sent_at: float
    status: int = 0
    first_token_at: float | None = None
    heartbeats: int = 0
    retry_after: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def first_token_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at


@dataclass
class Point:
    t: float
    desired: int
    ready: int
    existing: int
    held: int
    activator_slice: bool


@dataclass
class Record:
    outcomes: list[RequestOutcome] = field(default_factory=list)
    timeline: list[Point] = field(default_factory=list)
    bursts: list[float] = field(default_factory=list)


class ScaleFromZeroLoop(Loop):
    """The local loop of the scale-from-zero scenario (shares start-up and clean-up with Loop)."""

    config: ScaleFromZeroConfig

    async def run(self) -> dict[str, Any]:  # type: ignore[override]
        from tokenscale.local.emulator import start_emulator
        from tokenscale.local.prometheus import PrometheusServer

        cfg = self.config
        api = prom = router = kubelet_task = None
        record = Record()
        try:
            self.model_dir = await self._ensure_model()
            self._phase("starting the API emulator, Prometheus, the activator and the router")
            api = start_emulator()
            kubeconfig = api.write_kubeconfig(self.workdir / "kubeconfig", namespace=cfg.namespace)
            prom = PrometheusServer(self.workdir / "prometheus", scrape_interval=cfg.scrape_seconds)
            prom.start()
            if prom.process is not None:
                self.children.adopt(prom.process)
            port, admin = free_port(), free_port()
            self.activator = self.children.spawn([
                *_tokenscale_executable(), "activator", "--kubeconfig", str(kubeconfig),
                "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
                "--max-held-requests", str(cfg.max_held_requests),
                "--hold-timeout-seconds", str(cfg.hold_timeout_seconds),
                "--heartbeat-seconds", str(cfg.heartbeat_seconds), "--poll-seconds", "0.25",
                "--retry-after-seconds", "5", "--drain-seconds", "2",
            ], log_path=self.workdir / "activator.log", env={**os.environ})  # fmt: skip
            self.activator_admin = f"http://127.0.0.1:{admin}"
            router = Router(fallback=f"http://127.0.0.1:{port}",
                            fallback_host=f"{cfg.name}.{cfg.namespace}.svc.cluster.local:8000")
            await router.start()
            (self.workdir / "replicas").mkdir(exist_ok=True)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                slices = EndpointSlices(session, api.url, cfg.namespace, cfg.name)
                await slices.publish_activator(port)

                def publish(ready: dict[str, str]) -> None:
                    router.set_backends(ready)
                    slices.publish(ready)

                self.kubelet = Kubelet(api_url=api.url, namespace=cfg.namespace, command_for=self.replica_command,
                                       children=self.children, log_dir=self.workdir / "replicas", env=REPLICA_ENV,
                                       publish_targets=prom.set_targets, publish_endpoints=publish)
                kubelet_task = asyncio.create_task(self.kubelet.run())
                self._phase("starting the operator (tokenscale run)")
                self.operator = self.children.spawn([
                    *_tokenscale_executable(), "run", "--kubeconfig", str(kubeconfig),
                    "--namespace", cfg.namespace, "--standalone", "--liveness", "",
                    "--prometheus-url", prom.url, "--tick-seconds", str(cfg.tick_seconds),
                    "--rate-window", cfg.rate_window, "--long-rate-window", cfg.long_rate_window,
                    "--log-format", "plain", "--metrics-address", "",
                ], log_path=self.workdir / "operator.log", env={
                    **os.environ, "KUBECONFIG": str(kubeconfig),
                    "TOKENSCALE_ACTIVATOR_SERVICE": f"{ACTIVATOR_NAMESPACE}/{ACTIVATOR_NAME}"})  # fmt: skip
                await self._wait_activator(session)
                await self._create_service(session, api.url)
                record = await self._scenario(session, api.url, router, kubelet_task)
                await slices.drain()
        finally:
            await self._stop_everything(kubelet_task, prom, router, api)
        return self._summary(record, router)

    async def _wait_activator(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.activator.poll() is not None:
                tail = (self.workdir / "activator.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the activator exited with {self.activator.returncode}:\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.activator_admin}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise TimeoutError("the activator did not become ready in 60 s")

    async def _held(self, session: aiohttp.ClientSession) -> int:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{self.activator_admin}/metrics") as response:
                text = await response.text()
            return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("tokenscale_activator_held_requests{")))
        return 0

    async def _slice_exists(self, session: aiohttp.ClientSession, api_url: str) -> bool:
        cfg = self.config
        url = f"{api_url}/apis/discovery.k8s.io/v1/namespaces/{cfg.namespace}/endpointslices/" \
              f"{activator_slice_name(cfg.name)}"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url) as response:
                return response.status == 200
        return False

    async def _scenario(self, session: aiohttp.ClientSession, api_url: str, router: Router,
                        kubelet_task: asyncio.Task) -> Record:
        cfg = self.config
        record = Record()
        self.start = time.monotonic()
        self.start_wall = time.time()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sample(session, api_url, record, stop, kubelet_task))
        try:
            self._phase(f"at zero replicas, idle for {cfg.idle_seconds:g} s")
            await asyncio.sleep(cfg.idle_seconds)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.hold_timeout_seconds + 60)) \
                    as clients:
                for burst, size in enumerate((cfg.first_burst, cfg.max_held_requests + 1), start=1):
                    if burst == 2:
                        self._phase("idle: waiting for the scale-to-zero window")
                        await self._until_zero(record, kubelet_task)
                    self._phase(f"burst {burst}: {size} requests at zero replicas")
                    record.bursts.append(time.monotonic() - self.start)
                    tasks = []
                    for index in range(size):
                        outcome = RequestOutcome(burst, stream=index % 2 == 0, sent_at=time.monotonic() - self.start)
                        record.outcomes.append(outcome)
                        tasks.append(asyncio.create_task(self._request(clients, router.url, outcome)))
                        await asyncio.sleep(0.02)  # in order: the one over the bound is the last
                    await asyncio.gather(*tasks)
            self._phase("idle: waiting for the service to return to zero")
            await self._until_zero(record, kubelet_task)
        finally:
            stop.set()
            await sampler
        return record

    async def _until_zero(self, record: Record, kubelet_task: asyncio.Task) -> None:
        deadline = time.monotonic() + self.config.zero_timeout
        while time.monotonic() < deadline:
            self._check_alive(kubelet_task)
            point = record.timeline[-1] if record.timeline else None
            if point is not None and point.desired == 0 and point.existing == 0:
                return
            await asyncio.sleep(0.25)
        raise TimeoutError(f"the service did not return to zero within {self.config.zero_timeout:g} s")

    async def _sample(self, session: aiohttp.ClientSession, api_url: str, record: Record, stop: asyncio.Event,
                      kubelet_task: asyncio.Task) -> None:
        while not stop.is_set():
            deployment = self._deployment_name()
            ready, existing = self.kubelet.counts(deployment) if deployment else (0, 0)
            held, routed = await asyncio.gather(self._held(session), self._slice_exists(session, api_url))
            record.timeline.append(Point(
                t=round(time.monotonic() - self.start, 2),
                desired=self.kubelet.desired.get(deployment, 0) if deployment else 0,
                ready=ready, existing=existing, held=held, activator_slice=routed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _request(self, session: aiohttp.ClientSession, url: str, outcome: RequestOutcome) -> None:
        cfg = self.config
        body = {"model": cfg.served_name, "prompt": "scale from zero", "max_tokens": cfg.output_tokens,
                "ignore_eos": True, "stream": outcome.stream}
        try:
            async with session.post(f"{url}/v1/completions", json=body) as response:
                outcome.status = response.status
                outcome.retry_after = response.headers.get("Retry-After")
                if response.status != 200:
                    outcome.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    return
                if not outcome.stream:
                    answer = await response.json()
                    outcome.first_token_at = time.monotonic() - self.start
                    if not answer.get("choices"):
                        outcome.error = "no choices in the answer"
                    return
                done = False
                async for raw in response.content:
                    line = raw.strip()
                    if line.startswith(b": keep-alive"):
                        outcome.heartbeats += 1
                    elif line == b"data: [DONE]":
                        done = True
                    elif line.startswith(b"data:"):
                        chunk = json.loads(line[5:])
                        if chunk.get("error"):
                            outcome.error = f"stream error: {chunk['error'].get('message')}"
                        elif chunk.get("choices") and outcome.first_token_at is None:
                            outcome.first_token_at = time.monotonic() - self.start
                if not done and not outcome.error:
                    outcome.error = "stream ended before [DONE]"
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            outcome.error = f"{type(error).__name__}: {error}"

    # --- the summary ---------------------------------------------------------------------------

    def _summary(self, record: Record, router: Router | None) -> dict[str, Any]:
        cfg = self.config
        outcomes = record.outcomes
        ok = [o for o in outcomes if o.ok]
        rejected = [o for o in outcomes if o.status == 503 and o.retry_after is not None]
        failed = [o for o in outcomes if not o.ok and o not in rejected]
        ttfts = [o.first_token_seconds for o in ok if o.first_token_seconds is not None]
        streams = [o for o in ok if o.stream]
        held_spans = _spans(record.timeline, lambda p: p.held > 0)
        summary: dict[str, Any] = {
            "scenario": "scale-from-zero",
            "requests_sent": len(outcomes),
            "requests_ok": len(ok),
            "requests_failed": len(failed),
            "requests_rejected_503": len(rejected),
            "rejected_retry_after": sorted({o.retry_after for o in rejected}),
            "failure_kinds": sorted({o.error.split(":")[0] for o in failed}),
            "held_max": max((p.held for p in record.timeline), default=0),
            "held_periods_s": [[round(a, 2), round(b, 2)] for a, b in held_spans],
            "first_token_seconds_p50": _round(percentile(ttfts, 50)),
            "first_token_seconds_p99": _round(percentile(ttfts, 99)),
            "streams_with_heartbeats": sum(1 for o in streams if o.heartbeats > 0),
            "streams_ok": len(streams),
            "bursts_at_s": [round(b, 2) for b in record.bursts],
            # from each burst to the Deployment's 0 -> 1 (as the kubelet saw it: up to 0.5 s late)
            "wake_seconds": [_wake(record.timeline, b) for b in record.bursts],
            "max_held_requests": cfg.max_held_requests,
            "sent_to_activator": router.sent_to_fallback if router is not None else 0,
            "activator_slice_periods_s": [[round(a, 2), round(b, 2)] for a, b in
                                          _spans(record.timeline, lambda p: p.activator_slice)],
            "final_replicas": record.timeline[-1].desired if record.timeline else None,
            "scale_events": _scale_events(record.timeline),
            "timeline": [vars(p) for p in record.timeline],
            "requests": [vars(o) | {"first_token_seconds": _round(o.first_token_seconds)} for o in outcomes],
        }
        if cfg.plot_out is not None and record.timeline:
            summary["plot"] = str(plot(record, cfg.plot_out))
        if cfg.json_out is not None:
            cfg.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        return summary


class EndpointSlices:
    """The local kubelet as the EndpointSlice controller: ready replicas as slices in the emulator."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str, namespace: str, service: str) -> None:
        self.session, self.namespace, self.service = session, namespace, service
        self.api_url = api_url
        self.base = f"{api_url}/apis/discovery.k8s.io/v1/namespaces"
        self._published: set[str] = set()
        self._pending: set[asyncio.Task] = set()

    async def publish_activator(self, port: int) -> None:
        """The activator's Service: the operator lists its ready pods in the activator slices."""
        async with self.session.post(f"{self.api_url}/api/v1/namespaces", json={"metadata": {"name": ACTIVATOR_NAMESPACE}}):
            pass  # 201, or 409 when it exists
        await self._put(ACTIVATOR_NAMESPACE, _slice(f"{ACTIVATOR_NAME}-local", ACTIVATOR_NAME, "proxy", port))

    def publish(self, ready: dict[str, str]) -> None:
        task = asyncio.get_running_loop().create_task(self._sync(dict(ready)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _sync(self, ready: dict[str, str]) -> None:
        names = set()
        for replica, url in ready.items():
            port = int(url.rsplit(":", 1)[1])
            name = f"{self.service}-{replica.rsplit('-', 1)[-1]}"
            names.add(name)
            if name not in self._published:
                await self._put(self.namespace, _slice(name, self.service, "http", port))
        for name in self._published - names:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.delete(f"{self.base}/{self.namespace}/endpointslices/{name}"):
                    pass
        self._published = names

    async def _put(self, namespace: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.post(f"{self.base}/{namespace}/endpointslices", json=body) as response:
                if response.status >= 300:
                    log.warning("publishing EndpointSlice %s: HTTP %s", body["metadata"]["name"], response.status)


def _slice(name: str, service: str, port_name: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {SERVICE_NAME_LABEL: service, SLICE_MANAGER_LABEL: CONTROLLER}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}


def _spans(timeline: list[Point], on) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    start = None
    for point in timeline:
        if on(point) and start is None:
            start = point.t
        elif not on(point) and start is not None:
            spans.append((start, point.t))
            start = None
    if start is not None and timeline:
        spans.append((start, timeline[-1].t))
    return spans


def _scale_events(timeline: list[Point]) -> list[dict[str, Any]]:
    events, last = [], 0
    for point in timeline:
        if point.desired != last:
            events.append({"t": point.t, "from_replicas": last, "to_replicas": point.desired})
            last = point.desired
    return events


def _wake(timeline: list[Point], burst: float) -> float | None:
    woken = next((e["t"] for e in _scale_events(timeline) if e["from_replicas"] == 0 and e["t"] >= burst), None)
    return None if woken is None else round(woken - burst, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plot(record: Record, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t for p in record.timeline]
    fig, (replicas, held) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    replicas.step(t, [p.desired for p in record.timeline], where="post", color="black", label="desired")
    replicas.step(t, [p.ready for p in record.timeline], where="post", color="tab:green", label="ready")
    replicas.set_ylabel("replicas")
    replicas.yaxis.get_major_locator().set_params(integer=True)
    held.step(t, [p.held for p in record.timeline], where="post", color="tab:orange", label="held by the activator")
    held.set_ylabel("requests")
    held.set_xlabel("seconds since the start (at zero replicas)")
    for ax in (replicas, held):
        for index, (a, b) in enumerate(_spans(record.timeline, lambda p: p.held > 0)):
            ax.axvspan(a, b, color="tab:orange", alpha=0.15, label="held period" if index == 0 else None)
        for b in record.bursts:
            ax.axvline(b, color="tab:red", alpha=0.4, ls="--")
        ax.legend(loc="upper right")
    fig.suptitle("tokenscale demo: scale from zero through the activator")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def run_scenario(config: ScaleFromZeroConfig) -> dict[str, Any]:
    loop = ScaleFromZeroLoop(config)
    failed = True
    try:
        summary = await loop.run()
        failed = False
        return summary
    finally:
        loop.cleanup(keep_workdir=failed)


def run_cli(args: Any) -> int:
    """`tokenscale demo --scenario scale-from-zero` (the demo's --json, --plot, --workdir, --model-cache,
    --tick-seconds apply; the ramp's load options do not)."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    plot_out = args.plot if args.plot != DemoConfig().plot_out else ScaleFromZeroConfig().plot_out
    config = ScaleFromZeroConfig(json_out=args.json, plot_out=plot_out, workdir=args.workdir,
                                 model_cache=args.model_cache, tick_seconds=args.tick_seconds)
    try:
        summary = asyncio.run(run_scenario(config))
    except KeyboardInterrupt:
        print("interrupted: every process was stopped")
        return 130
    except Exception as error:  # noqa: BLE001 - reported; every child is already stopped
        print(f"the scale-from-zero demo failed: {error}")
        return 1
    print(f"requests: {summary['requests_sent']} sent, {summary['requests_ok']} answered 200, "
          f"{summary['requests_rejected_503']} refused with 503 + Retry-After (over the activator's bound of "
          f"{summary['max_held_requests']}), {summary['requests_failed']} failed")
    print(f"held at most {summary['held_max']} at once; first token p50 {summary['first_token_seconds_p50']} s, "
          f"p99 {summary['first_token_seconds_p99']} s (cold start included); "
          f"{summary['streams_with_heartbeats']} of {summary['streams_ok']} streams got heartbeats")
    print(f"replicas: {' -> '.join(str(e['to_replicas']) for e in summary['scale_events'])} (from 0); "
          f"final {summary['final_replicas']}")
    if summary.get("plot"):
        print(f"plot: {summary['plot']}")
    if args.json is not None:
        print(f"summary: {args.json}")
    return 0
