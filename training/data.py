"""PG19 text -> packed token blocks for the training loop.

A source (Hub id or local PG19-format folder) is opened only through `victorian_gpt.sources.load_text_dataset`, which
always streams, so the Hub and local files share one code path. Books are tokenized on the fly with the fast
tokenizer (batched), each followed by `<|endoftext|>`, and cut into fixed blocks of `block_size + 1` tokens (inputs are
the first `block_size`, targets the last `block_size`): no padding, no token wasted except one input per block.

Sharding across DDP ranks (`data_sharding`):
- "books" (default): `datasets.distributed.split_dataset_by_node` gives each rank whole files when the number of
  files divides by the world size, otherwise every rank reads the stream and keeps 1 book in N. Either way a book is
  read by one rank only, so no two ranks can ever train on the same block, and each rank tokenizes only its share.
- "blocks": every rank reads and packs the whole stream and keeps block j iff j % world_size == rank. The global
  batch is then the same for any number of processes (2 processes x accumulation 1 == 1 process x accumulation 2),
  at the price of every rank tokenizing everything.

The stream is endless (epoch after epoch, reshuffled) and deterministic given (seed, rank, world_size), which is what
makes resuming exact: a resumed run regenerates the stream and drops the blocks it had already consumed.
For runs where on-the-fly tokenization would starve the accelerators, `prepare` writes uint16 token shards once
(`python -m training.prepare`), read back by memmap with O(1) resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from victorian_gpt.sources import load_text_dataset

TOKENIZE_BATCH_BOOKS = 8  # books per `encode_batch_fast` call: the Rust tokenizer parallelises across a batch
SHARD_TOKENS = 100_000_000  # tokens per prepared uint16 shard (200 MB)
PREPARED_META = "prepared.json"


# ----------------------------------------------------------------------------------------------------------------------
# tokens and blocks


def token_stream(texts, tokenizer, eos_token_id: int, batch_books: int = TOKENIZE_BATCH_BOOKS) -> Iterator[np.ndarray]:
    """Yield one int32 array per book: its tokens followed by EOS. `tokenizer` is a `PreTrainedTokenizerFast`."""
    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: no per-call Python overhead, no max-length warnings
    batch: list[str] = []

    def encode(batch):
        for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
            ids = np.empty(len(encoding.ids) + 1, dtype=np.int32)
            ids[:-1] = encoding.ids
            ids[-1] = eos_token_id
            yield ids

    for text in texts:
        batch.append(text)
        if len(batch) == batch_books:
            yield from encode(batch)
            batch = []
    if batch:
        yield from encode(batch)


def pack_blocks(books: Iterator[np.ndarray], block_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Concatenate books and cut into blocks of `block_size + 1` tokens; yield (block, index of the book it ends in).

    The tail shorter than a block is dropped at the end of the stream (at most one block per epoch).
    """
    length = block_size + 1
    carry = np.empty(0, dtype=np.int32)
    for book_index, ids in enumerate(books):
        carry = np.concatenate([carry, ids]) if len(carry) else ids
        n = len(carry) // length
        for i in range(n):
            yield carry[i * length : (i + 1) * length], book_index
        carry = carry[n * length :].copy()


def shuffle_blocks(blocks: Iterator, buffer_size: int, rng: np.random.Generator) -> Iterator:
    """Bounded shuffle: keep `buffer_size` blocks, emit a random one as each new block arrives (as `datasets` does for
    rows, but at block level: one PG19 row is a whole ~400 KB book, so a row buffer would be enormous)."""
    if buffer_size <= 1:
        yield from blocks
        return
    buffer = []
    for block in blocks:
        if len(buffer) < buffer_size:
            buffer.append(block)
            continue
        i = int(rng.integers(buffer_size))
        yield buffer[i]
        buffer[i] = block
    rng.shuffle(buffer)
    yield from buffer


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for the tokenizer-independent bits per byte.

    Our tokenizer is byte-level BPE: every character of a token's string is one byte of the original text.
    """
    vocab = tokenizer.get_vocab()
    lengths = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    byte_level = type(tokenizer.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    for token, index in vocab.items():
        if index in special:
            continue
        lengths[index] = len(token) if byte_level else len(tokenizer.convert_tokens_to_string([token]).encode())
    return lengths


# ----------------------------------------------------------------------------------------------------------------------
# the streaming dataset


def texts_of(dataset, name: str) -> Iterator[str]:
    """The `text` field of each row, with a clear error for rows that lack one (JSON Lines declare no columns)."""
    for row in dataset:
        text = row.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{name} has no 'text' field; its fields are {sorted(row)}")
        yield text


class PackedBlocks(IterableDataset):
    """Endless, deterministic stream of `block_size + 1`-token blocks of one split, for one DDP rank.

    Each item is `{"input_ids": LongTensor[block_size + 1], "book": int}` (`book`: index, within the rank's reader
    for the current epoch, of the book the block ends in, for the `books_seen` figure).
    `skip_blocks` drops that many of this rank's blocks first: how a resumed run finds its place.
    """

    def __init__(
        self,
        source: str,
        split: str,
        tokenizer,
        block_size: int,
        rank: int = 0,
        world_size: int = 1,
        sharding: str = "books",
        shuffle_buffer: int = 1000,
        seed: int = 0,
        skip_blocks: int = 0,
        endless: bool = True,
        max_books: int | None = None,
    ):
        if sharding not in ("books", "blocks"):
            raise ValueError(f"data_sharding must be 'books' or 'blocks', got {sharding!r}")
        self.source, self.split, self.tokenizer, self.block_size = source, split, tokenizer, block_size
        self.rank, self.world_size, self.sharding = rank, world_size, sharding
        self.shuffle_buffer, self.seed, self.skip_blocks = shuffle_buffer, seed, skip_blocks
        self.endless, self.max_books = endless, max_books
        self.eos_token_id = tokenizer.eos_token_id

    def _books(self):
        from itertools import islice

        dataset = load_text_dataset(self.source, split=self.split)
        if self.sharding == "books" and self.world_size > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=self.rank, world_size=self.world_size)
        return islice(texts_of(dataset, f"{self.source} ({self.split})"), self.max_books)

    def epoch_blocks(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        """This rank's blocks of one pass over the split (before skipping)."""
        blocks = pack_blocks(token_stream(self._books(), self.tokenizer, self.eos_token_id), self.block_size)
        blocks = shuffle_blocks(blocks, self.shuffle_buffer, np.random.default_rng([self.seed, epoch]))
        for j, item in enumerate(blocks):
            if self.sharding == "books" or j % self.world_size == self.rank:
                yield item

    def __iter__(self):
        to_skip, epoch = self.skip_blocks, 0
        while True:
            produced = 0
            for block, book in self.epoch_blocks(epoch):
                produced += 1
                if to_skip:
                    to_skip -= 1
                    continue
                yield {"input_ids": torch.from_numpy(block.astype(np.int64)), "book": book}
            if produced == 0:
                raise ValueError(
                    f"{self.source} ({self.split}) gave rank {self.rank} of {self.world_size} no block of "
                    f"{self.block_size + 1} tokens"
                    + (" (with data_sharding='books' a rank needs its own books; try data_sharding='blocks')"
                       if self.sharding == "books" and self.world_size > 1 else "")
                )
            if not self.endless:
                return
            epoch += 1


class PreparedBlocks(IterableDataset):
    """The same stream as `PackedBlocks`, read from uint16 shards written by `prepare` (memmap, O(1) skip).

    Blocks are the consecutive `block_size + 1` windows of each shard; each epoch visits them in a fresh random
    permutation (a full shuffle is free here); rank r keeps positions j % world_size == r.
    """

    def __init__(self, folder, split, block_size, rank=0, world_size=1, seed=0, skip_blocks=0, endless=True,
                 shuffle=True):
        meta = read_prepared_meta(folder)
        if split not in meta["splits"]:
            raise ValueError(f"prepared data {folder} has no {split!r} split; it has {sorted(meta['splits'])}")
        self.files = [Path(folder) / f for f in meta["splits"][split]["files"]]
        self.block_size, self.rank, self.world_size = block_size, rank, world_size
        self.seed, self.skip_blocks, self.endless, self.shuffle = seed, skip_blocks, endless, shuffle
        length = block_size + 1
        counts = [os.path.getsize(f) // 2 // length for f in self.files]
        self.offsets = np.cumsum([0] + counts)  # block index -> (shard, position)
        self.per_rank = int(self.offsets[-1]) // world_size  # equal counts per rank: every rank steps in lockstep
        if self.per_rank == 0:
            raise ValueError(f"prepared data {folder} ({split}) has fewer than {world_size} blocks of {length} tokens")

    def __iter__(self):
        shards = [np.memmap(f, dtype=np.uint16, mode="r") for f in self.files]
        length = self.block_size + 1
        epoch, start = divmod(self.skip_blocks, self.per_rank)
        while True:
            total = int(self.offsets[-1])
            order = np.random.default_rng([self.seed, epoch]).permutation(total) if self.shuffle else np.arange(total)
            mine = order[self.rank :: self.world_size][: self.per_rank]
            for block_index in mine[start:]:
                shard = int(np.searchsorted(self.offsets, block_index, side="right")) - 1
                pos = (int(block_index) - int(self.offsets[shard])) * length
                block = torch.from_numpy(shards[shard][pos : pos + length].astype(np.int64))
                yield {"input_ids": block, "book": -1}
            if not self.endless:
                return
            epoch, start = epoch + 1, 0


def collate(items):
    return {
        "input_ids": torch.stack([item["input_ids"] for item in items]),
        "book": torch.tensor([item["book"] for item in items]),
    }


def make_dataloader(dataset: IterableDataset, batch_size: int, num_workers: int = 1) -> DataLoader:
    """Batches of blocks. At most one worker: it overlaps tokenization with compute while keeping the order (and so
    exact resume) independent of the worker count; more workers would interleave their streams."""
    if num_workers > 1:
        raise ValueError("dataloader_num_workers must be 0 or 1 (one worker tokenizes ahead; use `prepare` for more)")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        generator=torch.Generator(),  # never draw from the global RNG: resuming restores it exactly
        worker_init_fn=_ignore_sigint if num_workers else None,
    )


def _ignore_sigint(worker_id):
    """Ctrl-C reaches the whole process group; the loop handles it (checkpoint, exit), so the worker must not die."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------------------------------
# prepare: pre-tokenize into uint16 shards


def read_prepared_meta(folder) -> dict:
    path = Path(folder) / PREPARED_META
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a prepared dataset (no {PREPARED_META}); run `python -m training.prepare`")
    return json.loads(path.read_text())


def prepare(source: str, tokenizer, output_dir, splits=("train", "validation", "test"),
            shard_tokens: int = SHARD_TOKENS, max_books: int | None = None) -> dict:
    """Tokenize each split of `source` once into `{split}-NNNNN.bin` uint16 shards (EOS after every book)."""
    from tqdm.auto import tqdm

    if len(tokenizer) > 65536:
        raise ValueError(f"uint16 shards hold ids < 65536; this tokenizer has {len(tokenizer)} tokens")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {"source": source, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "splits": {}}
    for split in splits:
        try:
            dataset = load_text_dataset(source, split=split)
        except ValueError as error:
            if f"no {split!r} split" in str(error):
                continue
            raise
        from itertools import islice

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
