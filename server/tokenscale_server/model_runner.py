"""Loads an HF causal LM and runs one forward pass over a contiguous block of cache rows."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from .kv_cache import SlotKVCache

log = logging.getLogger(__name__)

SUPPORTED_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    max_position_embeddings: int
    device: torch.device
    dtype: torch.dtype


def load_model(source: str, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
    """Load from a local directory or a hub id (production downloads; tests use a local directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    # sdpa takes the boolean 4-D masks built below; eager attention would add them as floats.
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa", revision=revision)
    model.to(device).eval()
    family = getattr(model.config, "model_type", "")
    if family not in SUPPORTED_FAMILIES:
        log.warning("model family %r is untested; Llama, Mistral and Qwen2 are supported", family)
    max_positions = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return LoadedModel(model, tokenizer, max_positions, device, dtype)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, slots: int, max_len: int):
        config = loaded.model.config
        self.model = loaded.model
        self.decoder = loaded.model.get_decoder()
        self.lm_head = loaded.model.get_output_embeddings()
        if "cache" not in inspect.signature(self.decoder.forward).parameters:
            # transformers < 5.24 calls it `past_key_values`; an unknown keyword would be ignored
            # and every step would run without the cache.
            raise RuntimeError(f"{type(self.decoder).__name__}.forward takes no `cache`: transformers >= 5.24 needed")
        self.device = loaded.device
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        # One scratch position past max_len takes the writes of padded prompt positions.
        self.cache = SlotKVCache(config.num_hidden_layers, slots, kv_heads, max_len + 1, head_dim,
                                 loaded.dtype, loaded.device)
        self.max_len = max_len
        self.vocab_size = config.vocab_size

    @torch.inference_mode()
    def forward(self, first_row: int, chunks: list[list[int]], starts: list[int]) -> torch.Tensor:
        """Run rows [first_row, first_row + len(chunks)): row i holds `chunks[i]` at positions from
        `starts[i]`. Returns float32 logits `[rows, vocab]` at each row's last token."""
        rows = len(chunks)
        width = max(len(c) for c in chunks)
        device = self.device
        tokens = torch.zeros((rows, width), dtype=torch.long)
        for i, chunk in enumerate(chunks):
            tokens[i, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
        lengths = torch.tensor([len(c) for c in chunks], dtype=torch.long)
        start = torch.tensor(starts, dtype=torch.long)
        offsets = torch.arange(width, dtype=torch.long)
        positions = start[:, None] + offsets[None, :]
        real = offsets[None, :] < lengths[:, None]
        write_positions = torch.where(real, positions, torch.full_like(positions, self.max_len))
        ends = start + lengths
        read_len = int(ends.max())
        keys = torch.arange(read_len, dtype=torch.long)
        # Row i, query j may see key k if k <= its position and k holds a real token of row i.
        mask = (keys[None, None, :] <= positions[:, :, None]) & (keys[None, None, :] < ends[:, None, None])
        view = self.cache.view(first_row, rows, write_positions.to(device), read_len)
        hidden = self.decoder(
            input_ids=tokens.to(device),
            position_ids=positions.clamp(max=self.max_len - 1).to(device),
            attention_mask=mask[:, None].to(device),
            cache=view,
            use_cache=True,
        ).last_hidden_state
        last = hidden[torch.arange(rows, device=device), (lengths - 1).to(device)]
        return self.lm_head(last).float()


def kv_bytes_per_slot(loaded: LoadedModel, max_len: int) -> int:
    config = loaded.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    element = torch.tensor([], dtype=loaded.dtype).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * (max_len + 1) * element


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.85)  # leave room for activations and the allocator
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4  # a CPU server shares the machine
    except OSError:
        pass
    return 2 << 30


def derive_limits(loaded: LoadedModel, max_batch: int | None, max_model_len: int | None) -> tuple[int, int]:
    """Slots and sequence length: the flags where given, else the model's context and what memory holds."""
    max_len = min(max_model_len or loaded.max_position_embeddings, loaded.max_position_embeddings)
    if max_model_len and max_model_len > loaded.max_position_embeddings:
        log.warning("--max-model-len %d exceeds the model's %d positions; using %d", max_model_len,
                    loaded.max_position_embeddings, max_len)
    if max_batch:
        return max_batch, max_len
    ceiling = 256 if loaded.device.type == "cuda" else 32
    fits = _free_memory_bytes(loaded.device) // kv_bytes_per_slot(loaded, max_len)
    if fits < 1:
        raise RuntimeError(f"not enough memory for one sequence of {max_len} tokens; lower --max-model-len")
    return int(min(ceiling, fits)), max_len
