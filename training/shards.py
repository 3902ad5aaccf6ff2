"""Pre-tokenized uint16 shards, for runs where on-the-fly tokenization would starve the accelerators: `prepare`
writes each split once (`python -m training.prepare`); `PreparedBlocks` reads the blocks back by memmap, in a fresh
random order each epoch, and resumes in O(1)."""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset
from tqdm.auto import tqdm

from victorian_gpt.sources import load_text_dataset

from .blocks import texts_of, token_stream

SHARD_TOKENS = 100_000_000  # tokens per prepared uint16 shard (200 MB)
PREPARED_META = "prepared.json"


class PreparedBlocks(IterableDataset):
    """The same stream as `PackedBlocks`, read from uint16 shards written by `prepare` (memmap, O(1) skip).

    Blocks are the consecutive `block_size + 1` windows of each shard; each epoch visits them in a fresh random
    permutation (a full shuffle is free here); rank r keeps positions j % world_size == r. Its state is the number
    of blocks yielded (`state_dict()`), from which it resumes in O(1).
    """

    def __init__(self, folder, split, block_size, rank=0, world_size=1, seed=0, skip_blocks=0, endless=True,
                 shuffle=True):
        meta = read_prepared_meta(folder)
        if split not in meta["splits"]:
            raise ValueError(f"prepared data {folder} has no {split!r} split; it has {sorted(meta['splits'])}")
        self.files = [Path(folder) / f for f in meta["splits"][split]["files"]]
        self.block_size, self.rank, self.world_size = block_size, rank, world_size
        self.seed, self.skip_blocks, self.endless, self.shuffle = seed, skip_blocks, endless, shuffle
        self.consumed = skip_blocks
        length = block_size + 1
        counts = [os.path.getsize(f) // 2 // length for f in self.files]
        self.offsets = np.cumsum([0] + counts)  # block index -> (shard, position)
        self.per_rank = int(self.offsets[-1]) // world_size  # equal counts per rank: every rank steps in lockstep
        if self.per_rank == 0:
            raise ValueError(f"prepared data {folder} ({split}) has fewer than {world_size} blocks of {length} tokens")

    def state_dict(self) -> dict:
        return {"meta": {"kind": "prepared", "blocks": self.consumed, "rank": self.rank,
                         "world_size": self.world_size, "block_size": self.block_size, "seed": self.seed}}

    def load_state_dict(self, state: dict):
        meta = state["meta"]
        now = {"kind": "prepared", "rank": self.rank, "world_size": self.world_size, "block_size": self.block_size,
               "seed": self.seed}
        if any(meta.get(k) != v for k, v in now.items()):
            raise ValueError(f"the checkpoint's data stream was written with other settings: {meta} (now {now})")
        self.skip_blocks = self.consumed = meta["blocks"]

    def __iter__(self):
        shards = [np.memmap(f, dtype=np.uint16, mode="r") for f in self.files]
        length = self.block_size + 1
        epoch, start = divmod(self.skip_blocks, self.per_rank)
        self.consumed = self.skip_blocks
        while True:
            total = int(self.offsets[-1])
            order = np.random.default_rng([self.seed, epoch]).permutation(total) if self.shuffle else np.arange(total)
            mine = order[self.rank :: self.world_size][: self.per_rank]
            for block_index in mine[start:]:
                shard = int(np.searchsorted(self.offsets, block_index, side="right")) - 1
                pos = (int(block_index) - int(self.offsets[shard])) * length
                block = torch.from_numpy(shards[shard][pos : pos + length].astype(np.int64))
                self.consumed += 1
                yield {"input_ids": block, "book": -1}
            if not self.endless:
                return
            epoch, start = epoch + 1, 0


def read_prepared_meta(folder) -> dict:
    path = Path(folder) / PREPARED_META
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a prepared dataset (no {PREPARED_META}); run `python -m training.prepare`")
    return json.loads(path.read_text())


def prepare(source: str, tokenizer, output_dir, splits=("train", "validation", "test"),
            shard_tokens: int = SHARD_TOKENS, max_books: int | None = None, text_options=None) -> dict:
    """Tokenize each split of `source` once into `{split}-NNNNN.bin` uint16 shards (EOS after every book)."""
    if len(tokenizer) > 65536:
        raise ValueError(f"uint16 shards hold ids < 65536; this tokenizer has {len(tokenizer)} tokens")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {"source": source, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "splits": {}}
    if text_options is not None:
        meta["text_options"] = dict(text_options)
    for split in splits:
        try:
            dataset = load_text_dataset(source, split=split, text_options=text_options)
        except ValueError as error:
            if f"no {split!r} split" in str(error):
                continue
            raise
        texts = texts_of(islice(dataset, max_books), f"{source} ({split})")
        files, books, tokens = [], 0, 0
        buffer, filled = np.empty(shard_tokens, dtype=np.uint16), 0

        def flush():
            nonlocal filled
            name = f"{split}-{len(files):05d}.bin"
            tmp = output_dir / (name + ".tmp")
            buffer[:filled].tofile(tmp)
            os.replace(tmp, output_dir / name)
            files.append(name)
            filled = 0

        for ids in tqdm(token_stream(texts, tokenizer, tokenizer.eos_token_id), desc=f"prepare {split}", unit="book"):
            books += 1
            tokens += len(ids)
            while len(ids):
                take = min(len(ids), shard_tokens - filled)
                buffer[filled : filled + take] = ids[:take]
                filled, ids = filled + take, ids[take:]
                if filled == shard_tokens:
                    flush()
        if filled:
            flush()
        meta["splits"][split] = {"files": files, "books": books, "tokens": tokens}
    (output_dir / PREPARED_META).write_text(json.dumps(meta, indent=2))
    return meta
