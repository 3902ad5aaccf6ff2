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

The stream is endless (epoch after epoch, reshuffled) and deterministic given (seed, rank, world_size). Resuming is
exact and takes constant time: each checkpoint holds every rank's stream state (`PackedBlocks.state_dict()`: the
`datasets` position after the last book used, the partial book, the block shuffle buffer and its generator), so a
resumed run reads on from there instead of re-reading what it had trained on.
For runs where on-the-fly tokenization would starve the accelerators, `shards.prepare` writes uint16 token shards once
(`python -m training.prepare`), read back by memmap with O(1) resume (`shards.PreparedBlocks`).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, IterableDataset

from victorian_gpt.sources import load_text_dataset

TOKENIZE_BATCH_BOOKS = 8  # books per `encode_batch_fast` call: the Rust tokenizer parallelises across a batch


# ----------------------------------------------------------------------------------------------------------------------
# tokens and blocks


def token_stream(texts, tokenizer, eos_token_id: int, batch_books: int = TOKENIZE_BATCH_BOOKS) -> Iterator[np.ndarray]:
    """Yield one int32 array per book: its tokens followed by EOS. `tokenizer` is a `PreTrainedTokenizerFast`."""
    for ids, _ in encode_books(((text, None) for text in texts), tokenizer, eos_token_id, batch_books):
        yield ids


def encode_books(books, tokenizer, eos_token_id: int, batch_books: int = TOKENIZE_BATCH_BOOKS):
    """(text, tag) pairs -> (int32 tokens + EOS, tag), encoding `batch_books` books per call of the Rust tokenizer
    (which parallelises across a batch; no per-call Python overhead, no max-length warnings). The first book goes
    alone, so that a run (or a resumed run) waits for one book, not for a batch, before its first step."""
    backend = tokenizer.backend_tokenizer
    batch: list = []
    size = 1

    def encode(batch):
        encodings = backend.encode_batch_fast([text for text, _ in batch], add_special_tokens=False)
        for encoding, (_, tag) in zip(encodings, batch):
            ids = np.empty(len(encoding.ids) + 1, dtype=np.int32)
            ids[:-1] = encoding.ids
            ids[-1] = eos_token_id
            yield ids, tag

    for book in books:
        batch.append(book)
        if len(batch) == size:
            yield from encode(batch)
            batch, size = [], batch_books
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


# ----------------------------------------------------------------------------------------------------------------------
# the streaming dataset
#
# Two halves, so that all the state of the stream lives in the training process and resuming costs the same at step
# 10 as at step 100,000:
# - `BookReader` (in the DataLoader worker, which it keeps busy tokenizing ahead of the loop) yields this rank's books,
#   tokenized, each with the `datasets` state right after its row (`IterableDataset.state_dict()`), then an
#   end-of-epoch marker. It can start at any such state: `datasets` finds the row without re-reading the books before.
# - `PackedBlocks` (in the training process) packs the books it has *received* into blocks, passes them through the
#   block shuffle buffer and the block sharding filter, and can say at any moment exactly where it is: the reader's
#   position after the last book it consumed, the partial book not yet cut into blocks, the shuffle buffer and its
#   random generator (`state_dict()`, saved with each checkpoint, one per rank). Books the worker read ahead are
#   simply read again after a resume.


def texts_of(dataset, name: str) -> Iterator[str]:
    """The `text` field of each row, with a clear error for rows that lack one (JSON Lines declare no columns)."""
    for row in dataset:
        yield _text(row, name)


def _text(row, name: str) -> str:
    text = row.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{name} has no 'text' field; its fields are {sorted(row)}")
    return text


class BookReader(IterableDataset):
    """One rank's books of one split, tokenized, each with the `datasets` stream state after its row.

    Items: `{"epoch": e, "ids": int32 array (tokens + EOS), "state": datasets state dict}`, and after the last book of
    each epoch `{"epoch": e, "end": True}`. `start` = `{"epoch", "dataset_state", "books_read"}` (see `PackedBlocks`).
    """

    def __init__(self, source, split, tokenizer, rank=0, world_size=1, sharding="books", endless=True,
                 max_books=None, start=None, text_options=None):
        self.source, self.split, self.tokenizer = source, split, tokenizer
        self.text_options = text_options
        self.rank, self.world_size, self.sharding = rank, world_size, sharding
        self.endless, self.max_books = endless, max_books
        self.start = start or {"epoch": 0, "dataset_state": None, "books_read": 0}

    def _dataset(self):
        dataset = load_text_dataset(self.source, split=self.split, text_options=self.text_options)
        if self.sharding == "books" and self.world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=self.rank, world_size=self.world_size)
        return dataset

    def _rows(self, dataset, books_read):
        """(text, state after the row) for each remaining row of the epoch."""
        name = f"{self.source} ({self.split})"
        for i, row in enumerate(dataset):
            if self.max_books is not None and books_read + i >= self.max_books:
                return
            yield _text(row, name), dataset.state_dict()

    def __iter__(self):
        epoch, state, books_read = self.start["epoch"], self.start["dataset_state"], self.start["books_read"]
        eos = self.tokenizer.eos_token_id
        while True:
            dataset = self._dataset()
            if state is not None:
                dataset.load_state_dict(state)
            for ids, row_state in encode_books(self._rows(dataset, books_read), self.tokenizer, eos):
                yield {"epoch": epoch, "ids": ids, "state": row_state}
            yield {"epoch": epoch, "end": True}
            if not self.endless:
                return
            epoch, state, books_read = epoch + 1, None, 0


def split_tokens(source, split, tokenizer, text_options=None) -> int:
    """Tokens (EOS included) of one whole split, read and tokenized once: the size an epoch is measured by."""
    reader = BookReader(source, split, tokenizer, endless=False, text_options=text_options)
    return sum(len(book["ids"]) for book in reader if not book.get("end"))


def _as_is(item):
    return item


class PackedBlocks:
    """Endless, deterministic stream of `block_size + 1`-token blocks of one split, for one DDP rank, resumable
    exactly and in constant time through `state_dict()` / `load_state_dict()`.

    Each item is `{"input_ids": LongTensor[block_size + 1], "book": int}` (`book`: index, within the rank's reader
    for the current epoch, of the book the block ends in, for the `books_seen` figure). Per epoch: books are packed
    (the tail shorter than a block is dropped at the end of the epoch), shuffled through a `shuffle_buffer`-block
    buffer seeded by (seed, epoch), and with `sharding="blocks"` rank r keeps the blocks j % world_size == r.
    `num_workers=1` tokenizes in a DataLoader worker process, ahead of the loop. `skip_blocks` drops that many blocks
    first (how checkpoints without a data state are resumed: by re-reading the stream).
    """

    def __init__(self, source, split, tokenizer, block_size, rank=0, world_size=1, sharding="books",
                 shuffle_buffer=1000, seed=0, skip_blocks=0, endless=True, max_books=None, num_workers=0,
                 text_options=None):
        if sharding not in ("books", "blocks"):
            raise ValueError(f"data_sharding must be 'books' or 'blocks', got {sharding!r}")
        if num_workers > 1:
            raise ValueError("dataloader_num_workers must be 0 or 1 (one worker tokenizes ahead; use `prepare` for more)")
        self.source, self.split, self.tokenizer, self.block_size = source, split, tokenizer, block_size
        self.rank, self.world_size, self.sharding = rank, world_size, sharding
        self.shuffle_buffer, self.seed, self.skip_blocks = shuffle_buffer, seed, skip_blocks
        self.endless, self.max_books, self.num_workers = endless, max_books, num_workers
        self.text_options = text_options  # how .txt books are read and split (victorian_gpt.sources.TextOptions)
        self._start_epoch(0)
        self.reader = {"epoch": 0, "dataset_state": None, "books_read": 0}  # where the reader resumes
        self._loader = None

    # --- state

    def _start_epoch(self, epoch: int):
        self.epoch = epoch
        self.rng = np.random.default_rng([self.seed, epoch])
        self.carry = np.empty(0, dtype=np.int32)  # tokens received but not yet cut into blocks
        self.buffer: list = []  # the shuffle buffer: (block, book) pairs
        self.draining = False  # the epoch's books are all read: the buffer is emptied in a shuffled order
        self.book = -1  # index of the last book received in this epoch
        self.emitted = 0  # blocks out of the shuffle buffer this epoch (before the sharding filter)
        self.produced = 0  # blocks this rank yielded this epoch

    def state_dict(self) -> dict:
        """Where the stream stands after the last block it yielded: JSON-able scalars plus three arrays."""
        dtype = np.uint16 if len(self.tokenizer) <= 65536 else np.int32
        blocks = np.stack([b for b, _ in self.buffer]) if self.buffer else np.empty((0, self.block_size + 1))
        return {
            "meta": {"kind": "packed", "epoch": self.epoch, "rng": self.rng.bit_generator.state,
                     "draining": self.draining, "book": self.book, "emitted": self.emitted, "produced": self.produced,
                     "reader": self.reader, "rank": self.rank, "world_size": self.world_size,
                     "sharding": self.sharding, "block_size": self.block_size, "shuffle_buffer": self.shuffle_buffer,
                     "seed": self.seed},
            "carry": self.carry.astype(dtype),
            "buffer": blocks.astype(dtype),
            "buffer_books": np.array([k for _, k in self.buffer], dtype=np.int64),
        }

    def load_state_dict(self, state: dict):
        meta = state["meta"]
        expected = {"kind": "packed", "rank": self.rank, "world_size": self.world_size, "sharding": self.sharding,
                    "block_size": self.block_size, "shuffle_buffer": self.shuffle_buffer, "seed": self.seed}
        differs = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if differs:
            raise ValueError("the checkpoint's data stream was written with other settings: "
                             + ", ".join(f"{k}={was!r} (now {now!r})" for k, (was, now) in differs.items()))
        self._start_epoch(meta["epoch"])
        self.rng.bit_generator.state = meta["rng"]
        self.draining, self.book = meta["draining"], meta["book"]
        self.emitted, self.produced = meta["emitted"], meta["produced"]
        self.reader = dict(meta["reader"])
        self.carry = np.asarray(state["carry"], dtype=np.int32)
        self.buffer = [(np.asarray(b, dtype=np.int32), int(k)) for b, k in zip(state["buffer"], state["buffer_books"])]
        self.skip_blocks = 0

    # --- the stream

    def close(self):
        """Stop the DataLoader worker now (its SIGTERM is ignored, so it must be told: at interpreter exit
        multiprocessing would otherwise wait for it forever)."""
        loader, self._loader = self._loader, None
        if loader is not None and hasattr(loader, "_shutdown_workers"):
            loader._shutdown_workers()

    def _books(self):
        self.close()
        reader = BookReader(self.source, self.split, self.tokenizer, self.rank, self.world_size, self.sharding,
                            endless=self.endless, max_books=self.max_books, start=dict(self.reader),
                            text_options=self.text_options)
        self._loader = iter(DataLoader(reader, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                                       prefetch_factor=2 * TOKENIZE_BATCH_BOOKS if self.num_workers else None,
                                       generator=torch.Generator(),  # never draw from the global RNG (exact resume)
                                       worker_init_fn=_worker_ignores_signals if self.num_workers else None))
        return self._loader

    def _shuffle(self, item):
        """Put `item` in the buffer and return the block it displaces (None while the buffer fills)."""
        if self.shuffle_buffer <= 1:
            return item
        if len(self.buffer) < self.shuffle_buffer:
            self.buffer.append(item)
            return None
        i = int(self.rng.integers(self.shuffle_buffer))
        out, self.buffer[i] = self.buffer[i], item
        return out

    def _mine(self) -> bool:
        j, self.emitted = self.emitted, self.emitted + 1
        keep = self.sharding == "books" or j % self.world_size == self.rank
        self.produced += keep
        return keep

    def __iter__(self):
        """Continue from the current state. All state is updated before each `yield`, so `state_dict()` taken between
        two items is exact."""
        length, books = self.block_size + 1, None
        to_skip, self.skip_blocks = self.skip_blocks, 0
        while True:
            if self.draining:
                if self.buffer:
                    item = self.buffer.pop(0)
                    if self._mine():
                        if to_skip:
                            to_skip -= 1
                            continue
                        yield _item(item)
                    continue
                if self.produced == 0:
                    raise ValueError(
                        f"{self.source} ({self.split}) gave rank {self.rank} of {self.world_size} no block of "
                        f"{length} tokens"
                        + (" (with data_sharding='books' a rank needs its own books; try data_sharding='blocks')"
                           if self.sharding == "books" and self.world_size > 1 else "")
                    )
                if not self.endless:
                    return
                self._start_epoch(self.epoch + 1)
                continue
            if len(self.carry) >= length:
                block, self.carry = self.carry[:length], self.carry[length:]
                item = self._shuffle((block, self.book))
                if item is not None and self._mine():
                    if to_skip:
                        to_skip -= 1
                        continue
                    yield _item(item)
                continue
            if books is None:
                books = self._books()
            book = next(books)
            if book.get("end"):
                self.draining = True
                if self.shuffle_buffer > 1:
                    self.rng.shuffle(self.buffer)
                self.carry = np.empty(0, dtype=np.int32)  # the tail shorter than a block
                self.reader = {"epoch": book["epoch"] + 1, "dataset_state": None, "books_read": 0}
                continue
            self.carry = np.concatenate([self.carry, book["ids"]]) if len(self.carry) else book["ids"]
            self.book += 1
            self.reader = {"epoch": book["epoch"], "dataset_state": book["state"],
                           "books_read": self.reader["books_read"] + 1}


class ReplayBlocks:
    """The blocks of `primary` with a share `ratio` drawn instead from `replay` (the base model's own training data,
    rehearsed while fine-tuning so that it is not forgotten), the choice made per block by a generator seeded by
    `seed`: the same mix on every run, resumable exactly through `state_dict()` / `load_state_dict()` (both streams'
    states and the generator's). A replayed block counts no book of the fine-tuning data (`book` -1)."""

    def __init__(self, primary, replay, ratio: float, seed: int = 0):
        self.primary, self.replay, self.ratio = primary, replay, ratio
        self.rng = np.random.default_rng([seed, 1])
        self.skip_blocks = 0

    def state_dict(self) -> dict:
        primary, replay = self.primary.state_dict(), self.replay.state_dict()
        state = {"meta": {"kind": "replay", "ratio": self.ratio, "rng": self.rng.bit_generator.state,
                          "primary": primary.pop("meta"), "replay": replay.pop("meta")}}
        state.update({f"primary.{k}": v for k, v in primary.items()})
        state.update({f"replay.{k}": v for k, v in replay.items()})
        return state

    def load_state_dict(self, state: dict):
        meta = state["meta"]
        if meta.get("kind") != "replay" or meta["ratio"] != self.ratio:
            raise ValueError(f"the checkpoint's data stream was written with other settings: replay_ratio="
                             f"{meta.get('ratio', 0.0)!r} (now {self.ratio!r})")
        for name in ("primary", "replay"):
            getattr(self, name).load_state_dict(
                {"meta": meta[name], **{k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")}})
        self.rng.bit_generator.state = meta["rng"]
        self.skip_blocks = 0

    def close(self):
        self.primary.close()
        self.replay.close()

    def __iter__(self):
        primary, replay = iter(self.primary), iter(self.replay)
        to_skip, self.skip_blocks = self.skip_blocks, 0
        while True:
            if self.rng.random() < self.ratio:
                item = {**next(replay), "book": -1}
            else:
                item = next(primary)
            if to_skip:
                to_skip -= 1
                continue
            yield item


def _item(item) -> dict:
    block, book = item
    return {"input_ids": torch.from_numpy(block.astype(np.int64)), "book": book}


def save_data_state(folder, rank: int, state: dict) -> None:
    """One rank's data stream state as `data_state_rank{r}.npz` (arrays, plus the JSON-able part as a string)."""
    arrays = {k: v for k, v in state.items() if k != "meta"}
    with open(Path(folder) / f"data_state_rank{rank}.npz", "wb") as f:
        np.savez(f, meta=np.array(json.dumps(state["meta"])), **arrays)


def load_data_state(folder, rank: int) -> dict | None:
    """The state `save_data_state` wrote for `rank`, or None when the checkpoint has none (an older checkpoint)."""
    path = Path(folder) / f"data_state_rank{rank}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {"meta": json.loads(str(data["meta"])), **{k: data[k] for k in data.files if k != "meta"}}


def collate(items):
    return {
        "input_ids": torch.stack([item["input_ids"] for item in items]),
        "book": torch.tensor([item["book"] for item in items]),
    }


def batches_of(blocks, batch_size: int) -> Iterator[dict]:
    """Collated batches of `batch_size` blocks from an iterable of blocks (in the training process)."""
    iterator = iter(blocks)
    while True:
        items = list(islice(iterator, batch_size))
        if not items:
            return
        yield collate(items)


def make_dataloader(dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of blocks through a torch DataLoader (evaluation)."""
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
        worker_init_fn=_worker_ignores_signals if num_workers else None,
    )


def _worker_ignores_signals(worker_id):
    """A DataLoader worker must outlive SIGINT and SIGTERM: they reach it with the training process (Ctrl-C reaches a
    terminal's process group; `accelerate launch`/torchrun passes a signal on to each rank's whole process group;
    schedulers signal every process of a job). Were it to die, torch would raise "DataLoader worker is killed by
    signal" in the training process in the middle of its checkpoint save. The training process handles the signal
    (finish the step, save, exit); the worker is shut down by its DataLoader, or leaves when its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()

    def leave_with_parent():  # a parent killed outright (SIGKILL) cannot shut the worker down: leave on our own
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=leave_with_parent, daemon=True).start()
