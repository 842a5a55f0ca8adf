"""The local closed loop: the whole system on one machine, with no cluster.

    emulated Kubernetes API  <-  the operator (`tokenscale run`, a child process)
          |  Deployments                     ^ signals (PromQL)
          v                                  |
    local kubelet -> tokenscale-server processes  <-  Prometheus (scrapes them every second)
                            ^
                          router  <-  load generator

Everything here is real except the cluster: real kopf handlers against an HTTP API, real
Prometheus, real servers loading a real (tiny, random) model. `Loop.run` starts it all, drives
the load, samples what happens once a second, and stops every process it started, whatever
way it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tokenscale.api import API_VERSION, PLURAL
from tokenscale.local import loadgen
from tokenscale.local.children import ChildProcesses
from tokenscale.local.kubelet import SERVICE_LABEL, Kubelet, local_server_command
from tokenscale.local.report import DecisionPoint, RunRecord, Sample, plot, run_summary
from tokenscale.local.router import Router
from tokenscale.local.scenario import DemoConfig, default_model_cache

__all__ = ["REPLICA_ENV", "DemoConfig", "Loop"]

log = logging.getLogger(__name__)


def _server_executable() -> str:
    beside = Path(sys.executable).parent / "tokenscale-server"
    return str(beside) if beside.exists() else (shutil.which("tokenscale-server") or "tokenscale-server")


def _tokenscale_executable() -> list[str]:
    beside = Path(sys.executable).parent / "tokenscale"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "tokenscale.cli"]


# Each replica gets one torch thread: several processes share the machine's cores sanely.
REPLICA_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class Loop:
    """One run of the closed loop. `run()` returns the summary; every child is gone after it."""

    def __init__(self, config: DemoConfig, view: Any = None) -> None:
        self.config = config
        self.view = view
        self.children = ChildProcesses()
        self.samples: list[Sample] = []
        self.status_decisions: list[dict[str, Any]] = []
        self.learned_capacity: float | None = None  # status.autoscaler.capacity, as last read
        self._own_workdir = config.workdir is None
        self.workdir = Path(config.workdir or tempfile.mkdtemp(prefix="tokenscale-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_dir: Path | None = None
        self.phase = "starting"
        self.operator: subprocess.Popen | None = None

    async def _stop_everything(self, kubelet_task: Any, prom: Any, router: Any, api: Any) -> None:
        """Stop whatever of the loop's parts was started (None: never started), children last but one."""
        self._phase("stopping every process")
        if kubelet_task is not None:
            kubelet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await kubelet_task
        self.children.stop_all()
        if prom is not None:
            prom.stop()
        if router is not None:
            await router.stop()
        if api is not None:
            api.stop()

    def _phase(self, text: str) -> None:
        self.phase = text
        log.info("%s", text)
        if self.view is not None:
            self.view.phase = text

    # --- start-up ----------------------------------------------------------------------------

    async def _ensure_model(self) -> Path:
        from tokenscale_server.tiny_model import is_built

        target = self.config.model_cache or default_model_cache()
        if is_built(target):
            return target
        self._phase(f"building the tiny model once into {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = self.children.spawn(
            [_server_executable(), "tiny-model", str(target)],
            log_path=self.workdir / "tiny-model.log",
            env={**os.environ, **REPLICA_ENV},
        )
        code = await asyncio.to_thread(proc.wait)
        self.children.forget(proc)
        if code != 0 or not is_built(target):
            raise RuntimeError(f"building the tiny model failed; see {self.workdir / 'tiny-model.log'}")
        return target

    def replica_command(self, deployment: dict[str, Any], port: int) -> list[str]:
        """What the Deployment's container runs, as a local process with one torch thread."""
        return local_server_command(deployment, port, _server_executable(), extra_args=["--threads", "1"])

    async def run(self) -> dict[str, Any]:
        from tokenscale.local.emulator import start_emulator
        from tokenscale.local.prometheus import PrometheusServer

        cfg = self.config
        api = prom = router = kubelet_task = None
        try:
            self.model_dir = await self._ensure_model()
            self._phase("starting the Kubernetes API emulator, Prometheus and the router")
            api = start_emulator()
            kubeconfig = api.write_kubeconfig(self.workdir / "kubeconfig", namespace=cfg.namespace)
            prom = PrometheusServer(self.workdir / "prometheus", scrape_interval=cfg.scrape_seconds)
            prom.start()
            if prom.process is not None:
                self.children.adopt(prom.process)  # stopped with the rest, even from atexit
            router = Router()
            await router.start()
            (self.workdir / "replicas").mkdir(exist_ok=True)
            self.kubelet = Kubelet(
                api_url=api.url,
                namespace=cfg.namespace,
                command_for=self.replica_command,
                children=self.children,
                log_dir=self.workdir / "replicas",
                env=REPLICA_ENV,
                publish_targets=prom.set_targets,
                publish_endpoints=router.set_backends,
            )
            kubelet_task = asyncio.create_task(self.kubelet.run())
            self._phase("starting the operator (tokenscale run)")
            self.operator = self.children.spawn(
                [
                    *_tokenscale_executable(), "run",
                    "--kubeconfig", str(kubeconfig),
                    "--namespace", cfg.namespace,
                    "--standalone",
                    "--liveness", "",
                    "--prometheus-url", prom.url,
                    "--tick-seconds", str(cfg.tick_seconds),
                    "--rate-window", cfg.rate_window,
                    "--long-rate-window", cfg.long_rate_window,
                    "--log-format", "plain",
                ],
                log_path=self.workdir / "operator.log",
                env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            )  # fmt: skip
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                await self._create_service(session, api.url)
                await self._wait_ready(session, api.url, prom.url, kubelet_task)
                record = await self._drive(session, api.url, prom.url, router, kubelet_task)
        finally:
            await self._stop_everything(kubelet_task, prom, router, api)
        return self._finish(record)

    async def _create_service(self, session: aiohttp.ClientSession, api_url: str) -> None:
        cfg = self.config
        async with session.post(f"{api_url}/api/v1/namespaces", json={"metadata": {"name": cfg.namespace}}):
            pass  # 201, or 409 when it exists
        url = f"{api_url}/apis/{API_VERSION}/namespaces/{cfg.namespace}/{PLURAL}"
        assert self.model_dir is not None
        async with session.post(url, json=cfg.inference_service(self.model_dir)) as response:
            if response.status >= 300:
                raise RuntimeError(f"creating the InferenceService: HTTP {response.status} {await response.text()}")

    async def _wait_ready(
        self, session: aiohttp.ClientSession, api_url: str, prom_url: str, kubelet_task: asyncio.Task
    ) -> None:
        cfg = self.config
        self._phase("waiting for the first replica to load its model")
        deadline = time.monotonic() + 180
        while not any(self.kubelet.counts(d)[0] for d in self.kubelet.replicas):
            self._check_alive(kubelet_task)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica became ready in 180 s; logs in {self.workdir}")
            await asyncio.sleep(0.25)
        self._phase("waiting for Prometheus to scrape it and the operator to read it")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_alive(kubelet_task)
            up = await _prom_value(session, prom_url, f'sum(up{{namespace="{cfg.namespace}"}})')
            status = await self._service_status(session, api_url)
            if up and status.get("signals"):
                return
            await asyncio.sleep(0.5)
        log.warning("the operator has not reported signals yet; starting the load anyway")

    def _check_alive(self, kubelet_task: asyncio.Task) -> None:
        if kubelet_task.done():
            kubelet_task.result()  # raises what stopped it
            raise RuntimeError("the local kubelet stopped")
        if self.operator is not None and self.operator.poll() is not None:
            tail = (self.workdir / "operator.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the operator exited with {self.operator.returncode}:\n{tail}")

    async def _service_status(self, session: aiohttp.ClientSession, api_url: str) -> dict[str, Any]:
        cfg = self.config
        url = f"{api_url}/apis/{API_VERSION}/namespaces/{cfg.namespace}/{PLURAL}/{cfg.name}"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(url) as response:
                if response.status == 200:
                    return (await response.json()).get("status") or {}
        return {}

    # --- the run -----------------------------------------------------------------------------

    async def _drive(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        prom_url: str,
        router: Router,
        kubelet_task: asyncio.Task,
    ) -> RunRecord:
        cfg = self.config
        plan = cfg.plan()
        generator = loadgen.LoadGenerator(router.url, cfg.served_name, plan, cfg.max_concurrency, seed=cfg.seed)
        self._phase("load running")
        start = time.monotonic()
        self.start_wall = time.time()
        load = asyncio.create_task(generator.run(started_at=start))
        self._events_before = len(self.kubelet.scale_events)
        settle_until: float | None = None
        try:
            while True:
                self._check_alive(kubelet_task)
                sample = await self._sample(session, api_url, prom_url, generator, plan, start)
                now = time.monotonic() - start
                if now >= cfg.duration and load.done():
                    if settle_until is None:
                        settle_until = now + cfg.settle_seconds
                        if cfg.settle_seconds:
                            self._phase("load finished; waiting for the minimum replica count")
                    settled = sample.desired <= cfg.min_replicas and sample.existing <= cfg.min_replicas
                    if settled or now >= settle_until:
                        break
                elif now >= cfg.duration and not load.done():
                    self._phase("load finished; waiting for the last requests")
                await asyncio.sleep(max(0.0, 1.0 - ((time.monotonic() - start) % 1.0)))
        finally:
            if not load.done():
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
        return RunRecord(
            duration=time.monotonic() - start,
            tick_seconds=cfg.tick_seconds,
            scrape_seconds=cfg.scrape_seconds,
            target_tokens_per_second_per_replica=cfg.target_tokens_per_second,
            min_replicas=cfg.min_replicas,
            max_replicas_allowed=cfg.max_replicas,
            plan=plan,
            results=list(generator.results),
            samples=self.samples,
            decisions=self._decision_points(start),
            process_seconds=self.kubelet.process_seconds(),
            router_retries=router.retries,
            replica_restarts=self.kubelet.restarts,
            offered_rate=None if cfg.trace is not None else cfg.planned_tokens_per_second,
        )

    async def _sample(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        prom_url: str,
        generator: loadgen.LoadGenerator,
        plan: list[loadgen.PlannedRequest],
        start: float,
    ) -> Sample:
        cfg = self.config
        selector = f'namespace="{cfg.namespace}"'
        queue, running, status = await asyncio.gather(
            _prom_value(session, prom_url, f'sum({{__name__=~"vllm[:_]num_requests_waiting",{selector}}})'),
            _prom_value(session, prom_url, f'sum({{__name__=~"vllm[:_]num_requests_running",{selector}}})'),
            self._service_status(session, api_url),
        )
        learned = ((status.get("autoscaler") or {}).get("capacity") or {}).get("tokensPerSecondPerReplica")
        if learned is not None:
            self.learned_capacity = learned
        self._merge_decisions(status.get("decisions") or [])
        t = time.monotonic() - start
        window = [r for r in plan if t - 5.0 <= r.at < t]
        deployment = self._deployment_name()
        ready, existing = self.kubelet.counts(deployment) if deployment else (0, 0)
        sample = Sample(
            t=t,
            offered_rps=len(window) / 5.0 if t > 0 else 0.0,
            offered_tokens_per_second=sum(r.output_tokens for r in window) / 5.0,
            tokens_per_second=generator.tokens_per_second(),
            queue_depth=queue,
            running=running,
            ready=ready,
            existing=existing,
            desired=self.kubelet.desired.get(deployment, 0) if deployment else 0,
            in_flight=generator.in_flight,
        )
        self.samples.append(sample)
        if self.view is not None:
            results = generator.results
            counts = {
                "served": sum(1 for r in results if r.ok),
                "rejected": sum(1 for r in results if r.status == 429),
                "failed": sum(1 for r in results if r.finished_at is not None and not r.ok and r.status != 429),
            }
            self.view.update(sample, self._last_decision(start), counts)
        if cfg.on_sample is not None:
            cfg.on_sample(sample)
        return sample

    def _deployment_name(self) -> str | None:
        for name, replicas in self.kubelet.replicas.items():
            if any(r.labels.get(SERVICE_LABEL) == self.config.name for r in replicas):
                return name
        return next(iter(self.kubelet.desired), None)

    def _merge_decisions(self, decisions: list[dict[str, Any]]) -> None:
        seen = {(d.get("time"), d.get("fromReplicas"), d.get("toReplicas")) for d in self.status_decisions}
        for decision in decisions:
            if (decision.get("time"), decision.get("fromReplicas"), decision.get("toReplicas")) not in seen:
                self.status_decisions.append(decision)

    def _decision_time(self, decision: dict[str, Any], start: float) -> float | None:
        try:
            wall = datetime.datetime.fromisoformat(str(decision["time"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            return None
        return wall - self.start_wall

    def _last_decision(self, start: float) -> DecisionPoint | None:
        if not self.status_decisions:
            return None
        d = self.status_decisions[-1]
        return DecisionPoint(
            t=self._decision_time(d, start) or 0.0,
            from_replicas=int(d.get("fromReplicas", 0)),
            to_replicas=int(d.get("toReplicas", 0)),
            limited_by=str(d.get("limitedBy", "")),
            reason=str(d.get("reason", "")),
        )

    def _decision_points(self, start: float) -> list[DecisionPoint]:
        """Scale events as the Deployment saw them, with the operator's reason for each.

        The time is when the kubelet saw the new replica count (polled every 0.25 s): a bound on
        the decision's time from above, finer than the decision record's whole seconds.
        """
        points = []
        used: set[int] = set()
        for event in self.kubelet.scale_events[self._events_before :]:
            t = event.time - start
            best = None
            for index, d in enumerate(self.status_decisions):
                if index in used or d.get("fromReplicas") != event.from_replicas or d.get("toReplicas") != event.to_replicas:
                    continue
                dt = self._decision_time(d, start)
                if dt is not None and dt <= t + 1.0 and (best is None or dt > (self._decision_time(self.status_decisions[best], start) or 0)):
                    best = index
            decision = self.status_decisions[best] if best is not None else {}
            if best is not None:
                used.add(best)
            points.append(
                DecisionPoint(
                    t=t,
                    from_replicas=event.from_replicas,
                    to_replicas=event.to_replicas,
                    limited_by=str(decision.get("limitedBy", "")),
                    reason=str(decision.get("reason", "")),
                )
            )
        return points

    # --- the end -----------------------------------------------------------------------------

    def _finish(self, record: RunRecord) -> dict[str, Any]:
        cfg = self.config
        summary = run_summary(record)
        summary["decisions"] = self.status_decisions
        # the learned capacity at the SLO (status.autoscaler.capacity); `tokenscale calibrate` fills
        # calibrated_tokens_per_second_per_replica when it measures the same replicas in the run
        summary["learned_tokens_per_second_per_replica"] = self.learned_capacity
        summary.setdefault("calibrated_tokens_per_second_per_replica", None)
        summary["workdir"] = None if self._own_workdir else str(self.workdir)
        summary["timeline"] = [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in dataclasses.asdict(s).items()}
            for s in record.samples
        ]
        if cfg.plot_out is not None:
            summary["plot"] = str(plot(record, cfg.plot_out))
        if cfg.json_out is not None:
            cfg.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        self.record = record
        return summary

    def cleanup(self, keep_workdir: bool = False) -> None:
        """Stop anything still running; remove the temporary work directory unless asked to keep it."""
        self.children.stop_all()
        if self._own_workdir and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def _prom_value(session: aiohttp.ClientSession, prom_url: str, query: str) -> float | None:
    """The single value of an instant query, or None (no data, or Prometheus unreachable)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError):
        async with session.get(f"{prom_url}/api/v1/query", params={"query": query}) as response:
            body = await response.json()
            result = body["data"]["result"]
            return float(result[0]["value"][1]) if result else None
    return None
