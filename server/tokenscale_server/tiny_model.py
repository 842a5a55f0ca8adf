"""A seeded, randomly initialised tiny Llama with its own tokenizer, built without any download.

Tests, the local closed loop and the simulator's calibration load it through the same
`AutoModelForCausalLM` / `AutoTokenizer` path as a real model. The tokenizer is a BPE over
printable ASCII with a Metaspace pre-tokenizer: a random model then always emits decodable text
(a byte-level tokenizer would emit broken UTF-8), so streamed deltas and token counts stay exact.
"""

from __future__ import annotations

import json
import os
import random
import string
import tempfile
from pathlib import Path

RECIPE_VERSION = 1
MARKER_FILE = "tokenscale-tiny-model.json"

# ~2.9 M parameters: builds in a few seconds and decodes fast on one CPU core.
MODEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 640,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
VOCAB_SIZE = 1024
SEED = 1234

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

_SENTENCES = [
    "The operator reads tokens per second and queue depth from Prometheus every few seconds.",
    "A replica that is still loading its model counts as capacity on its way, not as missing capacity.",
    "Continuous batching admits new requests at every decoding step instead of waiting for a batch.",
    "When the queue grows while throughput stays flat, the service needs more replicas.",
    "Scale down slowly, scale up quickly, and never read a missing metric as zero.",
    "Each decision names the signal that asked for it and the rule that limited it.",
    "The server answers chat completions and plain completions, streamed or whole.",
    "Graceful shutdown turns readiness off, finishes the requests in flight, then exits.",
    "How many tokens can one GPU produce per second at the latency target?",
    "Write a short poem about a queue of requests waiting for a free slot.",
    "Explain why throughput saturates at capacity while the backlog keeps growing.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 128 1500 and symbols ( ) [ ] { } < > = + - * / % ! ? , . ; :",
]


def _corpus(rng: random.Random) -> list[str]:
    """Hand-written sentences plus seeded pseudo-words, so merges cover common English shapes."""
    syllables = ["ka", "to", "ren", "sa", "mi", "lo", "ver", "an", "ing", "tion", "er", "st", "qu", "ph"]
    lines = list(_SENTENCES) * 20
    for _ in range(400):
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(12)]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    lines.append(string.printable.strip())
    return lines


def _build_tokenizer(rng: random.Random):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = [c for c in string.printable if c not in "\t\n\r\x0b\x0c "] + ["\u2581", "\n"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
        limit_alphabet=len(alphabet), show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(rng), trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", chat_template=CHAT_TEMPLATE, model_max_length=MODEL_SHAPE["max_position_embeddings"],
    )


def is_built(directory: str | Path) -> bool:
    marker = Path(directory) / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("recipe") == RECIPE_VERSION
    except (OSError, ValueError):
        return False


def build(directory: str | Path) -> Path:
    """Build the tiny model into `directory` (idempotent: an existing build is kept) and return the path."""
    directory = Path(directory)
    if is_built(directory):
        return directory
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    rng = random.Random(SEED)
    tokenizer = _build_tokenizer(rng)
    config = LlamaConfig(
        vocab_size=len(tokenizer), tie_word_embeddings=True, initializer_range=0.08,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32", **MODEL_SHAPE,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    # Written beside the target, then each file renamed in: a concurrent builder or reader never
    # sees a half-written file (the build is deterministic, so racing builders agree).
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}-") as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        parameters = sum(p.numel() for p in model.parameters())
        (Path(scratch) / MARKER_FILE).write_text(json.dumps({"recipe": RECIPE_VERSION, "parameters": parameters}))
        # The marker goes last: a build interrupted half-way is redone, not reused.
        for path in sorted(Path(scratch).iterdir(), key=lambda p: p.name == MARKER_FILE):
            os.replace(path, directory / path.name)
    return directory
