"""A preallocated KV cache of fixed slots, one row per running sequence.

One tensor per layer, `[slots, kv_heads, max_len, head_dim]`, allocated once. The running
sequences occupy rows 0..n-1 without gaps (the scheduler moves the last row into a freed one),
so a forward pass reads a contiguous slice of rows: decoding never copies the cache.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.slots = slots
        self.max_len = max_len

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy one sequence's first `length` cached positions to another row (keeps the rows dense)."""
        if source == target or length <= 0:
            return
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[target, :, :length].copy_(keys[source, :, :length])
            values[target, :, :length].copy_(values[source, :, :length])

    def view(self, first_row: int, rows: int, write_positions: torch.Tensor, read_len: int) -> CacheView:
        return CacheView(self, first_row, rows, write_positions, read_len)


class CacheView:
    """What the HF attention modules see as `cache` for one forward pass.

    Llama-family attention calls only `cache.update(key, value, layer_idx)`: it writes the new
    keys/values of rows [first_row, first_row + rows) at `write_positions` (`[rows, q_len]`)
    and returns the first `read_len` positions of those rows, a view into the slot tensors.
    """

    def __init__(self, cache: SlotKVCache, first_row: int, rows: int, write_positions: torch.Tensor,
                 read_len: int):
        self.cache = cache
        self.row_slice = slice(first_row, first_row + rows)
        self.row_index = torch.arange(first_row, first_row + rows, device=write_positions.device)[:, None]
        self.write_positions = write_positions
        self.read_len = read_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys = self.cache.keys[layer_idx]
        values = self.cache.values[layer_idx]
        # key_states: [rows, kv_heads, q_len, head_dim] -> index as [rows, q_len, kv_heads, head_dim]
        keys.transpose(1, 2)[self.row_index, self.write_positions] = key_states.transpose(1, 2).to(keys.dtype)
        values.transpose(1, 2)[self.row_index, self.write_positions] = value_states.transpose(1, 2).to(values.dtype)
        return keys[self.row_slice, :, : self.read_len], values[self.row_slice, :, : self.read_len]
