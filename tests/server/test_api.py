"""The OpenAI API of a real `tokenscale-server serve` process, held against the official client."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.server.serverkit import API_KEY, SERVED_NAME, scrape, wait_for


@pytest.fixture(scope="module")
def client(shared_server):
    return openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def auth():
    return {"Authorization": f"Bearer {API_KEY}"}


def chat_prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "How many GPUs?"}]


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]


def test_chat_non_streaming_reports_usage(client, tokenizer):
    reply = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_streaming_equals_non_streaming(client, tokenizer):
    kwargs = dict(model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=20, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_streaming_and_not(client, tokenizer):
    prompt = "Continuous batching admits new requests"
    whole = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
    assert whole.usage.completion_tokens == 16 and whole.choices[0].finish_reason == "length"
    stream = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=16, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 16


def test_default_completion_length_and_token_id_prompts(client, tokenizer):
    ids = tokenizer("The queue grows").input_ids
    reply = client.completions.create(model=SERVED_NAME, prompt=ids, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions


def test_guidellm_style_request(shared_server):
    """List-form content, max_completion_tokens, ignore_eos and continuous usage stats, as guidellm sends."""
    body = {"model": SERVED_NAME, "stream": True, "max_completion_tokens": 8, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Count the"},
                                                      {"type": "text", "text": " tokens"}]}]}
    events = []
    with httpx.stream("POST", f"{shared_server.url}/v1/chat/completions", json=body, headers=auth(),
                      timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    with_usage = [p for p in payloads[1:] if p.get("usage")]
    completion_counts = [p["usage"]["completion_tokens"] for p in with_usage]
    assert completion_counts == sorted(completion_counts) and completion_counts[-1] == 8


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "tiny", "messages": [', None),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}', "max_tokens"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}', "max_tokens"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}', None),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}', "n"),
        (b'{"model": "tiny", "messages": []}', "messages"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"scale " * 600 + b'"}]}', "messages"),
    ],
    ids=["malformed-json", "max-tokens-type", "max-tokens-zero", "max-tokens-over", "temperature-type",
         "bad-role", "n", "no-messages", "prompt-too-long"],
)
def test_bad_input_is_a_400_with_an_openai_error(shared_server, body, param):
    response = httpx.post(f"{shared_server.url}/v1/chat/completions", content=body,
                          headers={**auth(), "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param or error["param"].startswith(param)


def test_bad_input_through_the_client_and_the_server_still_serves(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=SERVED_NAME, prompt="scale " * 600, max_tokens=4)
    assert caught.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="not-this-one", prompt="hi", max_tokens=4)
    assert client.completions.create(model=SERVED_NAME, prompt="still alive", max_tokens=3).usage.completion_tokens >= 1


def test_api_key_is_required_where_set(shared_server):
    wrong = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=2)
    bare = httpx.post(f"{shared_server.url}/v1/completions", json={"model": SERVED_NAME, "prompt": "x"})
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{shared_server.url}/v1/models").status_code == 401
    # Probes and metrics stay open: kubelet and Prometheus carry no key.
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{shared_server.url}{path}").status_code == 200


class OpenStream:
    """A long streaming completion held open on a raw socket, so the test can hang up mid-stream."""

    def __init__(self, server, max_tokens=480):
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({"model": SERVED_NAME, "prompt": "slot", "max_tokens": max_tokens, "stream": True,
                           "ignore_eos": True, "temperature": 0}).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body)

    def read_some(self) -> bytes:
        self.sock.settimeout(10)
        return self.sock.recv(4096)

    def close(self):
        self.sock.close()


def aborted(url):
    return scrape(url).get('vllm:request_success_total{finished_reason="abort"}', 0.0)


def test_client_disconnect_frees_the_slot(shared_server):
    url = shared_server.url
    before = aborted(url)
    stream = OpenStream(shared_server)
    assert b"200 OK" in stream.read_some()
    wait_for(lambda: scrape(url)["vllm:num_requests_running"] == 1)
    stream.close()
    wait_for(lambda: scrape(url)["vllm:num_requests_running"] == 0)
    assert aborted(url) == before + 1


def test_non_streaming_disconnect_frees_the_slot(shared_server):
    url = shared_server.url
    before = aborted(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", headers=auth(), timeout=httpx.Timeout(10, read=0.3),
                   json={"model": SERVED_NAME, "prompt": "hold", "max_tokens": 480, "ignore_eos": True})
    wait_for(lambda: scrape(url)["vllm:num_requests_running"] == 0)
    assert aborted(url) == before + 1


def test_full_queue_answers_429_and_metrics_follow_the_load(shared_server):
    """4 slots and a queue of 4: eight long streams fill both, the ninth request is refused."""
    url = shared_server.url
    streams = [OpenStream(shared_server) for _ in range(4)]
    try:
        wait_for(lambda: scrape(url)["vllm:num_requests_running"] == 4)
        streams += [OpenStream(shared_server) for _ in range(4)]
        load = wait_for(lambda: (m := scrape(url))["vllm:num_requests_running"] == 4
                        and m["vllm:num_requests_waiting"] == 4 and m)
        assert load["vllm:kv_cache_usage_perc"] == 1.0
        refused = httpx.post(f"{url}/v1/completions", headers=auth(), timeout=10,
                             json={"model": SERVED_NAME, "prompt": "one more", "max_tokens": 2})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    finally:
        for stream in streams:
            stream.close()
    idle = wait_for(lambda: (m := scrape(url))["vllm:num_requests_running"] == 0
                    and m["vllm:num_requests_waiting"] == 0 and m)
    assert idle["vllm:kv_cache_usage_perc"] == 0.0


def test_token_counters_equal_tokens_produced(client, shared_server):
    url = shared_server.url
    before = scrape(url)
    usages = []

    def ask(index):
        reply = client.completions.create(model=SERVED_NAME, prompt=f"request number {index} " * (index + 1),
                                          max_tokens=5 + 3 * index, temperature=0.8, seed=index)
        usages.append(reply.usage)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.1)
    after = scrape(url)
    assert len(usages) == 6
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert delta["vllm:generation_tokens_total"] == sum(u.completion_tokens for u in usages)
    assert delta["vllm:prompt_tokens_total"] == sum(u.prompt_tokens for u in usages)
    assert delta["vllm:e2e_request_latency_seconds_count"] == 6
    assert delta["vllm:time_to_first_token_seconds_count"] == 6
    finished = sum(delta[f'vllm:request_success_total{{finished_reason="{r}"}}'] for r in ("stop", "length"))
    assert finished == 6
