"""The local runtime's parts against real `tokenscale-server` processes: the router (spreading,
streaming, a replica draining under it) and the kubelet (Deployment -> processes -> status,
targets and endpoints, scale-down with drain)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tokenscale.api import parse_spec
from tokenscale.desired.workload import deployment
from tokenscale.local.children import ChildProcesses, processes_mentioning
from tokenscale.local.demo import REPLICA_ENV, DemoConfig
from tokenscale.local.emulator import start_emulator
from tokenscale.local.kubelet import Kubelet, free_port, local_server_command
from tokenscale.local.loadgen import LoadGenerator, PlannedRequest
from tokenscale.local.router import Router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SERVER = str(Path(sys.executable).parent / "tokenscale-server")


def _serve_argv(model: Path, port: int) -> list[str]:
    return [SERVER, "serve", "--model", str(model), "--served-model-name", "tiny", "--host", "127.0.0.1",
            "--port", str(port), "--max-batch", "8", "--threads", "1", "--drain-timeout", "20"]


async def _wait_ready(urls: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        for url in urls:
            while True:
                try:
                    async with session.get(f"{url}/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"{url} not ready"
                await asyncio.sleep(0.2)


def test_router_spreads_streams_and_survives_a_draining_replica(tiny_model: Path, tmp_path: Path) -> None:
    children = ChildProcesses()
    ports = [free_port(), free_port()]
    procs = [children.spawn(_serve_argv(tiny_model, port), log_path=tmp_path / f"s{port}.log",
                            env={**os.environ, **REPLICA_ENV}) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]

    async def scenario() -> None:
        await _wait_ready(urls)
        router = Router()
        await router.start()
        router.set_backends({"a": urls[0], "b": urls[1]})
        try:
            # 24 requests at once: least-outstanding spreads them; every token streams through.
            burst = [PlannedRequest(0.0, 16, 48) for _ in range(24)]
            generator = LoadGenerator(router.url, "tiny", burst)
            results = await generator.run()
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            assert all(r.output_tokens == 48 for r in results)
            served = {b.name: b.served for b in router.backends}
            assert served["a"] >= 6 and served["b"] >= 6, served
            # Streaming passthrough: the first token reaches the client long before the last.
            single = (await LoadGenerator(router.url, "tiny", [PlannedRequest(0.0, 8, 64)]).run())[0]
            assert single.ok and single.ttft is not None
            assert single.ttft < 0.5 * (single.finished_at - single.at), single

            # Replica "a" gets SIGTERM while requests keep coming: it finishes what it has, answers
            # 503 to new work, then exits; the router retries on "b"; nothing fails.
            steady = [PlannedRequest(i * 0.1, 16, 32) for i in range(40)]
            generator = LoadGenerator(router.url, "tiny", steady)
            run = asyncio.create_task(generator.run())
            await asyncio.sleep(1.0)
            children.signal(procs[0])
            results = await run
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            assert router.retries >= 1
            assert await asyncio.to_thread(procs[0].wait, 30) == 0  # drained and exited cleanly
        finally:
            await router.stop()

    try:
        asyncio.run(scenario())
    finally:
        children.stop_all()
    assert processes_mentioning(str(tiny_model)) == []


def test_kubelet_runs_a_deployment_as_processes(tiny_model: Path, tmp_path: Path) -> None:
    spec = parse_spec(DemoConfig().inference_service(tiny_model)["spec"])
    built = deployment("tiny-chat", "e2e", spec, replicas=1)
    targets: list[list] = []
    endpoints: list[dict[str, str]] = []
    children = ChildProcesses()

    async def scenario(api_url: str) -> None:
        kubelet = Kubelet(
            api_url=api_url, namespace="e2e", children=children, log_dir=tmp_path, env=REPLICA_ENV,
            command_for=lambda d, port: local_server_command(d, port, SERVER, ["--threads", "1"]),
            publish_targets=targets.append, publish_endpoints=endpoints.append,
        )
        base = f"{api_url}/apis/apps/v1/namespaces/e2e/deployments"
        async with aiohttp.ClientSession() as session:

            async def status() -> dict:
                async with session.get(f"{base}/tiny-chat") as response:
                    return (await response.json()).get("status") or {}

            async def until(predicate, what: str, timeout: float = 90) -> None:
                deadline = time.monotonic() + timeout
                while not predicate(await status()):
                    assert time.monotonic() < deadline, f"timed out waiting for {what}: {await status()}"
                    await asyncio.sleep(0.2)

            async def scale(replicas: int) -> None:
                async with session.patch(f"{base}/tiny-chat", json={"spec": {"replicas": replicas}},
                                         headers={"Content-Type": "application/merge-patch+json"}) as r:
                    assert r.status == 200

            async with session.post(f"{api_url}/api/v1/namespaces", json={"metadata": {"name": "e2e"}}):
                pass
            async with session.post(base, json=built) as response:
                assert response.status == 201
            task = asyncio.create_task(kubelet.run())
            try:
                await until(lambda s: s.get("readyReplicas") == 1, "one ready replica")
                s = await status()
                assert s["replicas"] == s["availableReplicas"] == s["updatedReplicas"] == 1
                assert s["observedGeneration"] >= 1
                (target,) = targets[-1]
                assert target.labels["namespace"] == "e2e" and target.labels["tokenscale_io_service"] == "tiny-chat"
                assert list(endpoints[-1].values()) == [f"http://{target.address}"]

                await scale(2)
                await until(lambda s: s.get("readyReplicas") == 2, "two ready replicas")
                assert len(targets[-1]) == 2 and len(endpoints[-1]) == 2

                await scale(1)
                await until(lambda s: s.get("replicas") == 1 and s.get("readyReplicas") == 1, "one replica")
                assert len(targets[-1]) == 1 and len(endpoints[-1]) == 1  # out of rotation at once
                drained = [r for r in kubelet.draining] or []
                deadline = time.monotonic() + 30
                while kubelet.draining and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert not kubelet.draining and all(r.proc.returncode == 0 for r in drained)

                async with session.delete(f"{base}/tiny-chat") as response:
                    assert response.status == 200
                deadline = time.monotonic() + 30
                while (kubelet.replicas or kubelet.draining) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert not kubelet.replicas and not kubelet.draining and targets[-1] == []
                assert kubelet.process_seconds() > 0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    api = start_emulator()
    try:
        asyncio.run(scenario(api.url))
    finally:
        children.stop_all()
        api.stop()
    assert processes_mentioning(str(tiny_model)) == []
