"""The engine's prefix cache: the KV of recently prefilled prompts, so that a request whose opening was seen before
prefills only what it adds (the Space's example openings, a TGI/vLLM user's repeated system text).

Prompts are cut into blocks of `block_size` tokens. A block is stored under the whole token prefix it ends (a chain
key: the block's tokens and its parent block's key; the first block's key also names the LoRA adapter the prompt was
prefilled under, so each adapter's KV is its own), with its keys and values for every layer, as one prompt's
prefill computed them: at positions 0.., which is where the engine prefills every prompt, whatever padding its row
gets in the batch afterwards. So both recipes fit (learned positions are in the hidden states, RoPE is applied to the
cached keys), and so do int8 and bf16 (the KV is stored in the model's dtype). A lookup walks a new prompt's blocks
from the first and stops at the first one missing; at least the prompt's last token is always prefilled, since its
logits choose the first new token.

Least recently used blocks leave first, bounded by a token budget. A hit or an insert touches its chain from the last
block back to the first, so a block is always more recent than its descendants and the least recently used block
is always a leaf: eviction never strands a reachable suffix. Entries are written only by the engine thread, only
after a prompt's whole prefill succeeded, and all blocks of a prompt at once (a cancelled or failed request writes
nothing). Every tensor stored is its own copy, so the batch's cache can grow, be trimmed or be freed independently.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from .kv_cache import _cache_layers, _GrowingLayer, _new_cache


@dataclass(eq=False)
class _Block:
    key: tuple  # (parent key or None, this block's tokens): the whole prefix this block ends
    parent: tuple | None
    keys: list[torch.Tensor]  # per layer, (heads, block_size, head_dim)
    values: list[torch.Tensor]
    children: int = 0


class PrefixCache:
    """Block-aligned prompt prefixes and their KV, least recently used out first, at most `max_tokens` tokens."""

    def __init__(self, max_tokens: int, block_size: int = 16):
        if max_tokens < 0 or block_size < 1:
            raise ValueError(f"prefix cache: need max_tokens >= 0 and block_size >= 1, got {max_tokens}, {block_size}")
        self.max_tokens = int(max_tokens)
        self.block_size = int(block_size)
        self._blocks: collections.OrderedDict[tuple, _Block] = collections.OrderedDict()  # least recent first
        self.lookups = self.hits = self.tokens_served = self.evictions = 0
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens >= self.block_size

    @property
    def size_tokens(self) -> int:
        return len(self._blocks) * self.block_size

    def _chain(self, ids: list[int], blocks: int, adapter: str | None = None):
        key = None if adapter is None else ("adapter", adapter)  # the root: the first block's parent is None
        for i in range(blocks):
            key = (key, tuple(ids[i * self.block_size : (i + 1) * self.block_size]))
            yield key

    def _touch(self, keys: list[tuple]):
        for key in reversed(keys):  # the first block last: most recent, so that it outlives its descendants
            self._blocks.move_to_end(key)

    def lookup(self, ids: list[int], config, adapter: str | None = None) -> tuple[int, object | None]:
        """(tokens of `ids` found, a new KV cache holding them) for a prompt prefilled under LoRA adapter `adapter`
        (None: the base); (0, None) on a miss.

        The cache returned is the request's own (`kv_cache._new_cache`): a copy, which its prefill then extends.
        """
        if not self.enabled:
            return 0, None
        self.lookups += 1
        found = []
        for key in self._chain(ids, (len(ids) - 1) // self.block_size, adapter):  # leave the last token to prefill
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
        if not found:
            return 0, None
        self._touch([b.key for b in found])
        length = len(found) * self.block_size
        cache = _new_cache(config)
        layers = _cache_layers(cache)
        for i, (keys, values) in enumerate(zip(zip(*(b.keys for b in found)), zip(*(b.values for b in found)))):
            if isinstance(layers[i], _GrowingLayer):  # one copy, into buffers with room for the rest of the prompt
                layers[i].seed(list(keys), list(values), room=len(ids) - length)
            else:
                cache.update(torch.cat(keys, dim=1)[None], torch.cat(values, dim=1)[None], i)
        self.hits += 1
        self.tokens_served += length
        return length, cache

    def insert(self, ids: list[int], cache, adapter: str | None = None) -> int:
        """Store the whole blocks of prompt `ids` whose KV `cache` (the request's own, batch 1, positions 0..,
        prefilled under LoRA adapter `adapter`, None for the base) holds; returns how many blocks were new. Called
        once a prompt's prefill has succeeded."""
        if not self.enabled:
            return 0
        layers = _cache_layers(cache)
        blocks = min(len(ids), layers[0].keys.shape[-2]) // self.block_size
        blocks = min(blocks, self.max_tokens // self.block_size)
        keys = list(self._chain(ids, blocks, adapter))
        new = [(i, key) for i, key in enumerate(keys) if key not in self._blocks]
        # Copy every new block's tensors before touching the index: an error here leaves the index as it was.
        made = []
        for i, key in new:
            span = slice(i * self.block_size, (i + 1) * self.block_size)
            made.append(_Block(key, key[0] if i else None, [layer.keys[0, :, span].clone() for layer in layers],
                               [layer.values[0, :, span].clone() for layer in layers]))
        for block in made:
            self._blocks[block.key] = block
            self.bytes += _nbytes(block)
            if block.parent is not None:
                self._blocks[block.parent].children += 1
        self._touch(keys)
        self._evict(protect=set(keys))
        return len(made)

    def _evict(self, protect: set = frozenset()):
        while self.size_tokens > self.max_tokens:
            key = next((k for k, b in self._blocks.items() if b.children == 0 and k not in protect), None)
            if key is None:  # everything left is the chain just inserted: drop its tail
                key = next(k for k, b in reversed(self._blocks.items()) if b.children == 0)
            self._remove(key)

    def _remove(self, key: tuple):
        block = self._blocks.pop(key)
        self.bytes -= _nbytes(block)
        self.evictions += 1
        if block.parent is not None and block.parent in self._blocks:
            self._blocks[block.parent].children -= 1

    def clear(self):
        self._blocks.clear()
        self.bytes = 0

    def stats(self) -> dict:
        """What /info and /metrics report."""
        return {
            "prefix_cache_max_tokens": self.max_tokens,
            "prefix_cache_block_size": self.block_size,
            "prefix_cache_size_tokens": self.size_tokens,
            "prefix_cache_bytes": self.bytes,
            "prefix_cache_lookups": self.lookups,
            "prefix_cache_hits": self.hits,
            "prefix_cache_tokens_served": self.tokens_served,
            "prefix_cache_evictions": self.evictions,
        }


def _nbytes(block: _Block) -> int:
    return sum(t.numel() * t.element_size() for t in (*block.keys, *block.values))
