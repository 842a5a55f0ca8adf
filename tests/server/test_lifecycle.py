"""Process lifecycle: SIGTERM drains without losing a request; a model that cannot load exits non-zero."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import httpx
import openai

from tests.server.serverkit import SERVED_NAME, scrape, start_server, wait_for


def test_sigterm_drains_in_flight_requests_then_exits_zero(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path, "--max-batch", "4", "--max-model-len", "512")
    # It listened while the model loaded: alive (/health 200) but not ready (/ready 503).
    assert (503, 200) in server.seen_while_loading
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
    results: dict[int, tuple[str, int, str]] = {}

    def stream(index: int) -> None:
        chunks = list(client.completions.create(
            model=SERVED_NAME, prompt=f"drain {index}", max_tokens=150, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        results[index] = (text, chunks[-1].usage.completion_tokens, finish[-1])

    def non_streaming(index: int) -> None:
        reply = client.completions.create(model=SERVED_NAME, prompt=f"drain {index}", max_tokens=150,
                                          temperature=0, extra_body={"ignore_eos": True})
        results[index] = (reply.choices[0].text, reply.usage.completion_tokens, reply.choices[0].finish_reason)

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    workers.append(threading.Thread(target=non_streaming, args=(3,)))
    try:
        for worker in workers:
            worker.start()
        wait_for(lambda: scrape(server.url)["vllm:num_requests_running"] == 4)
        server.process.send_signal(signal.SIGTERM)
        ready = wait_for(lambda: (r := httpx.get(f"{server.url}/ready")).status_code == 503 and r)
        assert ready.json()["status"] == "draining"
        refused = httpx.post(f"{server.url}/v1/completions", json={"model": SERVED_NAME, "prompt": "late"})
        assert refused.status_code == 503 and "retry-after" in refused.headers
        for worker in workers:
            worker.join(timeout=60)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    assert sorted(results) == [0, 1, 2, 3]
    for text, completion_tokens, finish in results.values():
        assert completion_tokens == 150 and finish == "length" and text


def test_a_missing_model_directory_fails_fast(tmp_path):
    missing = tmp_path / "no-model-here"
    result = subprocess.run(
        [sys.executable, "-m", "tokenscale_server.cli", "serve", "--model", str(missing), "--host", "127.0.0.1",
         "--port", "0", "--threads", "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"no model at {missing}" in result.stderr
