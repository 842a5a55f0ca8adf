"""Continuous batching vs static batching on the same staggered workload, in one run.

(a) tokenscale's engine (the server's engine thread, in-process) and (b) static batched HF
`generate` (collect what has arrived, pad, generate until the longest is done, repeat) serve the
same seeded requests: Poisson arrivals, mixed prompt and output lengths, outputs of exactly the
requested length (ignore_eos). Prints useful tokens/s of each, their ratio, and TTFT p50/p99.

    python bench/server_throughput.py                       # the tiny model, built in a temp dir
    python bench/server_throughput.py --trace ../shared/traces/azure2023_conv_1h.csv --requests 64
    python bench/server_throughput.py --random-model llama-1b --device cuda --concurrency 16 --requests 256
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Job:
    index: int
    arrival: float  # seconds after the start (closed loop: set when its client sends it)
    prompt_ids: list[int]
    output_len: int
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0


@dataclass
class Result:
    name: str
    jobs: list[Job] = field(default_factory=list)
    wall: float = 0.0

    @property
    def useful_tokens(self) -> int:
        return sum(j.tokens for j in self.jobs)

    @property
    def tokens_per_s(self) -> float:
        return self.useful_tokens / self.wall

    def ttft(self, quantile: float) -> float:
        values = sorted(j.first_token - j.arrival for j in self.jobs)
        return values[min(len(values) - 1, int(quantile * len(values)))]


def make_workload(tokenizer, rate: float, lengths: list[tuple[int, int]], seed: int) -> list[Job]:
    """Poisson arrivals at `rate`; prompts of random words cut to the wanted token count."""
    rng = random.Random(seed)
    words = ["queue", "replica", "token", "scale", "latency", "slot", "model", "GPU", "batch", "serve"]
    jobs, clock = [], 0.0
    for index, (prompt_len, output_len) in enumerate(lengths):
        clock += rng.expovariate(rate)
        ids = tokenizer(" ".join(rng.choice(words) for _ in range(prompt_len))).input_ids[:prompt_len]
        jobs.append(Job(index, clock, ids, output_len))
    return jobs


def trace_lengths(path: str, requests: int, prompt_scale: float, max_prompt: int, max_output: int,
                  seed: int) -> list[tuple[int, int]]:
    """(prompt, output) lengths drawn from a real trace (`timestamp_s,input_tokens,output_tokens`):
    outputs as recorded (clipped), prompts divided by `prompt_scale` (a 1-thread CPU and a small
    context cannot take multi-thousand-token prompts; the output spread is what batching feels)."""
    import csv

    with open(path) as handle:
        rows = [(int(r["input_tokens"]), int(r["output_tokens"])) for r in csv.DictReader(handle)]
    rng = random.Random(seed)
    return [(max(4, min(max_prompt, round(i / prompt_scale))), max(1, min(max_output, o)))
            for i, o in (rng.choice(rows) for _ in range(requests))]


def fresh(jobs: list[Job]) -> list[Job]:
    return [Job(j.index, j.arrival, j.prompt_ids, j.output_len) for j in jobs]


class ClosedLoop:
    """`concurrency` clients, each sending its next job when its previous one is done."""

    def __init__(self, jobs: list[Job], concurrency: int):
        self.queues = [jobs[c::concurrency] for c in range(concurrency)]
        self.client_of = {j.index: c for c, queue in enumerate(self.queues) for j in queue}
        for queue in self.queues:
            if queue:
                queue[0].arrival = 0.0

    def first_jobs(self) -> list[Job]:
        return [queue[0] for queue in self.queues if queue]

    def next_after(self, job: Job) -> Job | None:
        queue = self.queues[self.client_of[job.index]]
        position = queue.index(job)
        if position + 1 < len(queue):
            following = queue[position + 1]
            following.arrival = job.finished
            return following
        return None


def run_engine(loaded, jobs: list[Job], max_batch: int, max_len: int, concurrency: int = 0) -> Result:
    from tokenscale_server.engine import Engine, EngineConfig
    from tokenscale_server.metrics import ServerMetrics
    from tokenscale_server.sampling import SamplingParams

    by_id: dict[str, Job] = {}
    done = threading.Event()
    loop = ClosedLoop(jobs, concurrency) if concurrency else None
    start = 0.0
    engine: Engine | None = None

    def submit(job: Job) -> None:
        request_id = f"job-{job.index}"
        by_id[request_id] = job
        engine.submit(job.prompt_ids, SamplingParams(max_tokens=job.output_len, temperature=0.0,
                                                     ignore_eos=True), request_id)

    def on_outputs(outputs):
        now = time.perf_counter() - start
        for output in outputs:
            job = by_id[output.request_id]
            if job.first_token is None and output.new_token_ids:
                job.first_token = now
            job.tokens = output.completion_tokens
            if output.finish_reason:
                job.finished = now
                following = loop.next_after(job) if loop else None
                if following is not None:
                    following.arrival = now
                    submit(following)
        if all(j.finished is not None for j in jobs):
            done.set()

    config = EngineConfig(max_batch=max_batch, max_model_len=max_len, token_budget=max(512, 2 * max_batch),
                          max_waiting=len(jobs))
    engine = Engine(loaded, config, ServerMetrics("bench"), on_outputs)
    engine.start()
    start = time.perf_counter()
    if loop:
        for job in loop.first_jobs():
            submit(job)
    else:
        for job in jobs:
            delay = job.arrival - (time.perf_counter() - start)
            if delay > 0:
                time.sleep(delay)
            submit(job)
    done.wait()
    engine.stop()
    return Result("continuous batching (tokenscale engine)", jobs, max(j.finished for j in jobs))


class _StepClock:
    """A `generate` streamer: stamps when each decoding step's tokens come out."""

    def __init__(self, batch: list[Job], start: float):
        self.batch, self.start, self.calls = batch, start, 0

    def put(self, _tokens) -> None:
        self.calls += 1
        if self.calls == 1:  # the first call carries the prompt
            return
        now = time.perf_counter() - self.start
        step = self.calls - 1
        for job in self.batch:
            if job.first_token is None:
                job.first_token = now
            if step == job.output_len:  # its tokens are all out: credit it now, not at batch end
                job.finished = now
                job.tokens = job.output_len

    def end(self) -> None:
        pass


def run_static(loaded, jobs: list[Job], max_batch: int, concurrency: int = 0) -> Result:
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loop = ClosedLoop(jobs, concurrency) if concurrency else None
    pending = loop.first_jobs() if loop else list(jobs)
    start = time.perf_counter()
    while pending:
        now = time.perf_counter() - start
        earliest = min(j.arrival for j in pending)
        if earliest > now:
            time.sleep(earliest - now)
            continue
        batch = sorted((j for j in pending if j.arrival <= now), key=lambda j: j.arrival)[:max_batch]
        pending = [j for j in pending if j not in batch]
        width = max(len(j.prompt_ids) for j in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):  # left padding, as decoder-only generation needs
            ids[row, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids):] = 1
        longest = max(j.output_len for j in batch)
        with torch.inference_mode():
            model.generate(ids.to(loaded.device), attention_mask=mask.to(loaded.device), do_sample=False,
                           max_new_tokens=longest, min_new_tokens=longest, pad_token_id=pad,
                           streamer=_StepClock(batch, start))
        if loop:  # each client sends its next request as soon as its answer is complete
            pending += [n for n in (loop.next_after(j) for j in batch) if n is not None]
    return Result("static batching (HF generate)", jobs, max(j.finished for j in jobs))


def random_model(preset: str, tokenizer_dir: str, device, dtype):
    """A random-init model of a realistic size (no download): for GPU runs of the same benchmark."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tokenscale_server.model_runner import LoadedModel

    shape = PRESETS[preset]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return LoadedModel(model, tokenizer, shape["max_position_embeddings"], device, dtype)


# TinyLlama-1.1B's shape with the tiny tokenizer's 1,024-token vocabulary: about 1.0 B parameters.
PRESETS = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, max_position_embeddings=2048),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the tiny model, built in a temp dir)")
    parser.add_argument("--random-model", choices=sorted(PRESETS),
                        help="a random-init model of this shape instead (GPU runs), with the tiny tokenizer")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both sides (default 1: on a small shared CPU more "
                             "threads than free cores stall OpenMP and make timings meaningless)")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--rate", type=float, default=50.0,
                        help="mean arrivals per second (Poisson); the default offers more than either side "
                             "serves on a 2-core CPU, so tokens/s measures capacity, not the offered load")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="closed loop: this many clients, each sending its next request when the last "
                             "is answered (instead of Poisson arrivals)")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(8, 96), metavar=("MIN", "MAX"))
    parser.add_argument("--output-tokens", type=int, nargs=2, default=(8, 128), metavar=("MIN", "MAX"))
    parser.add_argument("--trace", help="draw prompt/output lengths from this trace CSV instead of uniform ranges")
    parser.add_argument("--trace-prompt-scale", type=float, default=8.0, help="divide trace prompt lengths by this")
    parser.add_argument("--trace-max-output", type=int, default=384, help="clip trace output lengths to this")
    parser.add_argument("--max-batch", type=int, default=32, help="both sides batch at most this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each side, alternated; the best of each is compared (a shared machine's "
                             "load spikes slow one run, never speed it up)")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from tokenscale_server.model_runner import load_model, resolve_device, resolve_dtype
    from tokenscale_server.tiny_model import build

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        if args.random_model:
            loaded = random_model(args.random_model, str(build(scratch)), device, dtype)
        else:
            loaded = load_model(args.model or str(build(scratch)), device, dtype)
    rng = random.Random(args.seed)
    if args.trace:
        lengths = trace_lengths(args.trace, args.requests, args.trace_prompt_scale, 512, args.trace_max_output,
                                args.seed)
        shape = (f"lengths from {args.trace.rsplit('/', 1)[-1]} (prompts / {args.trace_prompt_scale:g}, outputs "
                 f"<= {args.trace_max_output})")
    else:
        lengths = [(rng.randint(*args.prompt_tokens), rng.randint(*args.output_tokens)) for _ in range(args.requests)]
        shape = (f"prompts {args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, outputs "
                 f"{args.output_tokens[0]}-{args.output_tokens[1]} tokens")
    jobs = make_workload(loaded.tokenizer, args.rate, lengths, args.seed)
    max_len = max(len(j.prompt_ids) + j.output_len for j in jobs) + 1
    run_engine(loaded, fresh(jobs[:4]), args.max_batch, max_len)  # warm-up, not measured
    run_static(loaded, fresh(jobs[:4]), args.max_batch)
    engine_runs, static_runs = [], []
    for _ in range(args.repeats):
        engine_runs.append(run_engine(loaded, fresh(jobs), args.max_batch, max_len, args.concurrency))
        static_runs.append(run_static(loaded, fresh(jobs), args.max_batch, args.concurrency))
    engine = max(engine_runs, key=lambda r: r.tokens_per_s)
    static = max(static_runs, key=lambda r: r.tokens_per_s)

    arrivals = f"{args.concurrency} closed-loop clients" if args.concurrency else f"Poisson {args.rate:g}/s"
    print(f"workload: {len(jobs)} requests, {arrivals}, {shape}, max batch {args.max_batch}; "
          f"{device} {loaded.dtype}, {torch.get_num_threads()} threads")
    print(f"{'':42s} {'useful tok/s':>12s} {'TTFT p50':>10s} {'TTFT p99':>10s} {'makespan':>9s}")
    for result in (engine, static):
        print(f"{result.name:42s} {result.tokens_per_s:12.0f} {result.ttft(0.5) * 1000:8.0f}ms "
              f"{result.ttft(0.99) * 1000:8.0f}ms {result.wall:8.1f}s")
    if args.repeats > 1:
        print(f"best of {args.repeats} runs each; all runs (useful tok/s): continuous "
              f"{', '.join(f'{r.tokens_per_s:.0f}' for r in engine_runs)}; static "
              f"{', '.join(f'{r.tokens_per_s:.0f}' for r in static_runs)}")
    assert engine.useful_tokens == static.useful_tokens == sum(j.output_len for j in jobs)
    ratio = engine.tokens_per_s / static.tokens_per_s
    print(f"ratio (continuous / static useful tok/s): {ratio:.2f}  (target >= 1.5)")
    print(f"TTFT p50: static is {static.ttft(0.5) / engine.ttft(0.5):.0f}x slower to the first token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
