"""The continuous-batching engine in-process: exactness against HF `generate`, sampling, stops,
aborts and the dense slot layout under churn."""

from __future__ import annotations

import random
import threading
import time
import warnings

import pytest
import torch

from tokenscale_server.engine import Engine, EngineConfig, QueueFull
from tokenscale_server.metrics import ServerMetrics
from tokenscale_server.model_runner import ModelRunner
from tokenscale_server.sampling import SamplingParams

# transformers 5.24 renamed the decoder's `past_key_values` to `cache` and warns on every call
# with the old name: in these tests that warning is an error.
pytestmark = pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")


def test_a_forward_pass_uses_the_cache_keyword_and_warns_nothing(tiny_loaded):
    runner = ModelRunner(tiny_loaded, slots=2, max_len=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prefill = runner.forward(0, [[5, 6, 7], [8, 9]], [0, 0])
        decode = runner.forward(0, [[10], [11]], [3, 2])
    assert [str(w.message) for w in caught if "past_key_values" in str(w.message)] == []
    assert prefill.shape == decode.shape == (2, runner.vocab_size)
    # The preallocated cache took the keys in place: positions past each row's tokens stay zero.
    keys = runner.cache.keys[0]
    assert keys[0, :, :4].abs().sum() > 0 and keys[1, :, :3].abs().sum() > 0
    assert keys[1, :, 3:64].abs().sum() == 0


class Collector:
    """Gathers the engine's outputs per request, as the HTTP layer would."""

    def __init__(self):
        self.tokens: dict[str, list[int]] = {}
        self.text: dict[str, str] = {}
        self.finish: dict[str, str] = {}
        self.usage: dict[str, tuple[int, int]] = {}
        self.done = threading.Condition()

    def __call__(self, outputs):
        with self.done:
            for output in outputs:
                self.tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
                self.text[output.request_id] = self.text.get(output.request_id, "") + output.text_delta
                if output.finish_reason:
                    self.finish[output.request_id] = output.finish_reason
                    self.usage[output.request_id] = (output.prompt_tokens, output.completion_tokens)
            self.done.notify_all()

    def wait(self, request_ids, timeout=60.0):
        with self.done:
            assert self.done.wait_for(lambda: all(r in self.finish for r in request_ids), timeout), self.finish


@pytest.fixture
def make_engine(tiny_loaded):
    engines = []

    def make(**config):
        collector = Collector()
        engine = Engine(tiny_loaded, EngineConfig(**config), ServerMetrics("tiny"), collector)
        engine.start()
        engines.append(engine)
        return engine, collector

    yield make
    for engine in engines:
        engine.stop()


def hf_greedy(loaded, prompt_ids, new_tokens):
    with torch.inference_mode():
        out = loaded.model.generate(
            torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def random_prompt(tokenizer, rng, words):
    vocabulary = ["queue", "replica", "token", "scale", "latency", "slot", "model", "GPU", "batch", "42"]
    return tokenizer(" ".join(rng.choice(vocabulary) for _ in range(words))).input_ids


def test_greedy_matches_hf_generate_under_churn(tiny_loaded, make_engine):
    """Requests arrive while others run and finish at different lengths; prompts longer than the
    token budget are prefilled in chunks. Every output equals HF generate, token for token."""
    engine, collected = make_engine(max_batch=4, max_model_len=256, token_budget=24, max_waiting=64)
    rng = random.Random(7)
    cases = [(random_prompt(tiny_loaded.tokenizer, rng, rng.randint(1, 30)), rng.randint(1, 40)) for _ in range(10)]
    ids = []
    for prompt, length in cases:
        ids.append(engine.submit(prompt, SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=True)))
        time.sleep(rng.random() * 0.03)
    collected.wait(ids)
    assert any(len(p) > 24 for p, _ in cases), "some prompt must need chunked prefill"
    for request_id, (prompt, length) in zip(ids, cases, strict=True):
        assert collected.tokens[request_id] == hf_greedy(tiny_loaded, prompt, length), request_id
        assert collected.usage[request_id] == (len(prompt), length)
        assert collected.finish[request_id] == "length"
    assert engine.scheduler.num_running == 0 and engine.scheduler.num_waiting == 0


def test_abort_mid_batch_keeps_neighbours_exact(tiny_loaded, make_engine):
    """Aborting sequences moves other rows in the cache; the survivors' outputs stay exact."""
    engine, collected = make_engine(max_batch=6, max_model_len=256, token_budget=64)
    rng = random.Random(3)
    prompts = [random_prompt(tiny_loaded.tokenizer, rng, rng.randint(2, 12)) for _ in range(6)]
    ids = [engine.submit(p, SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)) for p in prompts]
    time.sleep(0.05)
    for victim in (ids[0], ids[3]):
        engine.abort(victim)
    collected.wait(ids)
    assert collected.finish[ids[0]] == collected.finish[ids[3]] == "abort"
    for index in (1, 2, 4, 5):
        assert collected.tokens[ids[index]] == hf_greedy(tiny_loaded, prompts[index], 60)
    assert engine.scheduler.num_running == 0


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=8, max_model_len=256)
    prompt = tiny_loaded.tokenizer("Write a short poem about a queue").input_ids
    params = dict(max_tokens=30, temperature=0.9, top_p=0.9, top_k=50, ignore_eos=True)
    alone = engine.submit(prompt, SamplingParams(seed=11, **params))
    collected.wait([alone])
    crowd = [engine.submit(prompt, SamplingParams(seed=s, **params)) for s in (11, 12, 11)]
    collected.wait(crowd)
    assert collected.tokens[crowd[0]] == collected.tokens[alone] == collected.tokens[crowd[2]]
    assert collected.tokens[crowd[1]] != collected.tokens[alone]


def test_top_k_one_is_greedy(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=2, max_model_len=128)
    prompt = tiny_loaded.tokenizer("Scale down slowly").input_ids
    greedy = engine.submit(prompt, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    top1 = engine.submit(prompt, SamplingParams(max_tokens=20, temperature=1.5, top_k=1, ignore_eos=True))
    collected.wait([greedy, top1])
    assert collected.tokens[top1] == collected.tokens[greedy]


def test_stop_string_cuts_text_and_finishes(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=2, max_model_len=128)
    prompt = tiny_loaded.tokenizer("The operator reads").input_ids
    free = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
    collected.wait([free])
    full = collected.text[free]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop.strip()) >= 2
    cut = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, stop=[stop]))
    collected.wait([cut])
    assert collected.finish[cut] == "stop"
    assert collected.text[cut] == full[: full.index(stop)]
    assert stop not in collected.text[cut]


def test_eos_stops_unless_ignored(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=2, max_model_len=128)
    prompt = tiny_loaded.tokenizer("Hello").input_ids
    probe = engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    collected.wait([probe])
    # Declare the third greedy token a stop token: the request ends there with reason "stop".
    third = collected.tokens[probe][2]
    stopped = engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0.0, stop_token_ids=[third]))
    collected.wait([stopped])
    assert collected.finish[stopped] == "stop"
    assert collected.tokens[stopped] == collected.tokens[probe][:3]


def test_bounded_queue_refuses_beyond_its_limit(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=1, max_model_len=512, max_waiting=2)
    prompt = tiny_loaded.tokenizer("queue").input_ids
    params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    # Three fit at once (one free slot + a queue of two) even before the engine admits any.
    collected_ids = [engine.submit(prompt, params) for _ in range(3)]
    with pytest.raises(QueueFull):
        engine.submit(prompt, params)
    for request_id in collected_ids:
        engine.abort(request_id)
    collected.wait(collected_ids)
    assert engine.scheduler.num_waiting == 0 and engine.scheduler.num_running == 0


def test_metrics_count_every_token(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=4, max_model_len=256)
    rng = random.Random(5)
    prompts = [random_prompt(tiny_loaded.tokenizer, rng, rng.randint(1, 10)) for _ in range(6)]
    ids = [engine.submit(p, SamplingParams(max_tokens=rng.randint(1, 30), temperature=0.7, seed=1)) for p in prompts]
    collected.wait(ids)
    def sample(name):
        return engine.metrics.registry.get_sample_value(name, {"model_name": "tiny"})

    assert sample("vllm:generation_tokens_total") == sum(len(collected.tokens[i]) for i in ids)
    assert sample("vllm:prompt_tokens_total") == sum(len(p) for p in prompts)
    assert sample("vllm:time_to_first_token_seconds_count") == len(ids)
    assert sample("vllm:request_generation_tokens_sum") == sum(len(collected.tokens[i]) for i in ids)


def test_a_failed_forward_fails_its_batch_and_the_engine_keeps_serving(tiny_loaded, make_engine):
    engine, collected = make_engine(max_batch=4, max_model_len=128)
    prompt = tiny_loaded.tokenizer("fault").input_ids
    real_forward = engine.runner.forward
    faulty = threading.Event()
    faulty.set()

    def forward(*args, **kwargs):
        if faulty.is_set():
            raise RuntimeError("injected device fault")
        return real_forward(*args, **kwargs)

    engine.runner.forward = forward
    victims = [engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0.0)) for _ in range(2)]
    collected.wait(victims)
    faulty.clear()
    assert [collected.finish[v] for v in victims] == ["error", "error"]
    assert engine.alive and engine.scheduler.num_running == 0
    survivor = engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    collected.wait([survivor])
    assert collected.finish[survivor] == "length" and len(collected.tokens[survivor]) == 8
    assert engine.metrics.registry.get_sample_value(
        "vllm:request_success_total", {"model_name": "tiny", "finished_reason": "error"}) == 2


@pytest.mark.parametrize("family", ["qwen2", "mistral", "qwen3"])
def test_other_families_match_hf_generate(family, tiny_model_dir, tmp_path):
    """Small random Qwen2, Mistral and Qwen3 models, saved and loaded through the server's path."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tokenscale_server.model_runner import load_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, head_dim=16,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    assert loaded.model.config.model_type == family
    collected = Collector()
    engine = Engine(loaded, EngineConfig(max_batch=3, max_model_len=128, token_budget=16), ServerMetrics(family),
                    collected)
    engine.start()
    try:
        rng = random.Random(1)
        cases = [(random_prompt(tokenizer, rng, rng.randint(2, 20)), rng.randint(3, 12)) for _ in range(4)]
        ids = [engine.submit(p, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)) for p, n in cases]
        collected.wait(ids)
        for request_id, (prompt, length) in zip(ids, cases, strict=True):
            assert collected.tokens[request_id] == hf_greedy(loaded, prompt, length)
    finally:
        engine.stop()
