"""The engine's KV cache layers: transformers `DynamicCache` layers that grow in place, and the helpers that pad,
select and trim the batch's cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room to grow, so that appending a token
    writes it in place instead of copying the whole cache (`torch.cat`) at every step: in a batch of B sequences of
    L tokens that copy is B x L x layers, and it would grow with each of them. When the engine replaces `keys` and
    `values` (joining, leaving, trimming), the next update copies them into fresh buffers once."""

    def update(self, key_states, value_states, *args, **kwargs):
        keys = self.keys
        if not self.is_initialized or keys is None or keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        length, new = keys.shape[-2], key_states.shape[-2]
        buffers = getattr(self, "_room", None)
        if (buffers is None or buffers[0].data_ptr() != keys.data_ptr() or buffers[0].stride() != keys.stride()
                or buffers[0].shape[:2] != keys.shape[:2] or buffers[0].shape[-2] < length + new):
            capacity = length + new + max(64, length // 2)
            buffers = tuple(torch.empty(*t.shape[:2], capacity, t.shape[-1], dtype=t.dtype, device=t.device)
                            for t in (keys, self.values))
            buffers[0][:, :, :length] = keys
            buffers[1][:, :, :length] = self.values
            self._room = buffers
        buffers[0][:, :, length : length + new] = key_states
        buffers[1][:, :, length : length + new] = value_states
        self.keys, self.values = buffers[0][:, :, : length + new], buffers[1][:, :, : length + new]
        return self.keys, self.values


    def seed(self, key_blocks: list[torch.Tensor], value_blocks: list[torch.Tensor], room: int):
        """Start from `key_blocks`/`value_blocks` ((heads, tokens, head_dim) each, in order: the prefix cache's
        blocks) with room for `room` more tokens, copying each block once into the buffers that will grow."""
        first = key_blocks[0]
        length = sum(block.shape[-2] for block in key_blocks)
        buffers = tuple(torch.empty(1, first.shape[0], length + room, first.shape[-1], dtype=first.dtype,
                                    device=first.device) for _ in range(2))
        at = 0
        for keys, values in zip(key_blocks, value_blocks):
            n = keys.shape[-2]
            buffers[0][0, :, at : at + n] = keys
            buffers[1][0, :, at : at + n] = values
            at += n
        self.device, self.is_initialized, self._room = first.device, True, buffers
        self.keys, self.values = buffers[0][:, :, :length], buffers[1][:, :, :length]


def _new_cache(config) -> DynamicCache:
    """A `DynamicCache` for `config` whose plain layers grow in place (`_GrowingLayer`)."""
    cache = DynamicCache(config=config)
    layers = getattr(cache, "layers", None) or []
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[i] = _GrowingLayer()
    return cache


def _release_freed_memory():
    """Give memory freed by finished sequences back to the OS (glibc keeps it in its arenas otherwise, so a server's
    resident size would stay at its busiest); called when the engine goes idle. A no-op elsewhere than glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _cache_layers(cache) -> list:
    """The per-layer objects of a transformers `DynamicCache` (each with `.keys` and `.values`, (B, H, T, D))."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"the engine needs a transformers >= 4.56 DynamicCache with `.layers`, got {type(cache)}")
    return layers


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """Pad (B, H, T, D) states with zeros on the left of T up to `length`."""
    missing = length - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states
