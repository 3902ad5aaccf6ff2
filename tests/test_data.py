"""The data pipeline on the real tiny PG19 sample, streamed offline: packing, shuffling, sharding, resume, prepare."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest
from transformers import AutoTokenizer

from training.blocks import PackedBlocks, ReplayBlocks, load_data_state, pack_blocks, save_data_state, shuffle_blocks, token_stream
from training.measures import token_byte_lengths
from training.shards import PreparedBlocks, prepare
from victorian_gpt.sources import load_text_dataset

BLOCK = 128


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def book_tokens(pg19_tiny, tokenizer):
    """Each training book's tokens + EOS, encoded one book at a time with the ordinary tokenizer call."""
    books = [row["text"] for row in load_text_dataset(str(pg19_tiny), "train")]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in books]


def contents(blocks):
    return [tuple(int(t) for t in item["input_ids"]) for item in blocks]


def test_streaming_local_files_pack_every_token_without_padding(pg19_tiny, tokenizer, book_tokens):
    from datasets import IterableDataset

    assert isinstance(load_text_dataset(str(pg19_tiny), "train"), IterableDataset)  # the streaming code path
    stream = np.concatenate(book_tokens)
    data = PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, shuffle_buffer=0, endless=False)
    blocks = [item["input_ids"].numpy() for item in data]
    assert all(len(b) == BLOCK + 1 for b in blocks)
    assert len(blocks) == len(stream) // (BLOCK + 1)  # only the final partial block is dropped
    np.testing.assert_array_equal(np.concatenate(blocks), stream[: len(blocks) * (BLOCK + 1)])
    assert tokenizer.pad_token_id not in stream
    assert int((stream == tokenizer.eos_token_id).sum()) == len(book_tokens)  # one EOS after every book


def test_shuffle_buffer_is_a_bounded_permutation():
    items = list(range(2000))
    out = list(shuffle_blocks(iter(items), 100, np.random.default_rng(0)))
    assert sorted(out) == items and out != items
    # an item can leave the buffer no earlier than `buffer_size` places before it arrived
    assert all(position >= item - 100 for position, item in enumerate(out))
    assert out == list(shuffle_blocks(iter(items), 100, np.random.default_rng(0)))  # deterministic per seed


def test_block_sharding_ranks_are_disjoint_and_cover_the_single_process_stream(pg19_tiny, tokenizer):
    kwargs = dict(sharding="blocks", shuffle_buffer=32, seed=3, endless=False)
    single = contents(PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, **kwargs))
    ranks = [contents(PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, r, 2, **kwargs)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    # rank r holds exactly the single-process blocks j with j % 2 == r, in order
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]


@pytest.mark.parametrize("n_files", [1, 2])
def test_book_sharding_gives_each_rank_its_own_books(tmp_path, pg19_tiny, tokenizer, n_files):
    """`split_dataset_by_node`: whole files per rank when they divide evenly, else 1 book in N. Never a shared block."""
    rows = [json.loads(line) for line in (pg19_tiny / "train.jsonl").read_text().splitlines()]
    books = [dict(row, text=row["text"][i : i + 40_000]) for row in rows for i in range(0, 80_000, 40_000)]  # 6 books
    for f in range(n_files):
        part = books[f::n_files]
        (tmp_path / f"train-{f:05d}-of-{n_files:05d}.jsonl").write_text("".join(json.dumps(b) + "\n" for b in part))
    streams = [contents(PackedBlocks(str(tmp_path), "train", tokenizer, BLOCK, r, 2, sharding="books",
                                     shuffle_buffer=0, endless=False)) for r in range(2)]
    assert streams[0] and streams[1]
    assert not set(streams[0]) & set(streams[1])
    everything = contents(PackedBlocks(str(tmp_path), "train", tokenizer, BLOCK, shuffle_buffer=0, endless=False))
    # the ranks together read every book once: about as many blocks as one process (each rank drops one tail)
    assert len(everything) - 2 <= len(streams[0]) + len(streams[1]) <= len(everything) + 2


@pytest.mark.parametrize("kwargs", [dict(shuffle_buffer=64, seed=1, num_workers=1),
                                    dict(sharding="blocks", rank=1, world_size=2, shuffle_buffer=16, seed=2)])
def test_state_dict_resumes_the_endless_stream_exactly_without_rereading(tmp_path, pg19_tiny, tokenizer, kwargs):
    """A checkpoint holds the stream's state (datasets position, partial book, shuffle buffer and its generator): a
    stream restored from it continues with exactly the blocks the uninterrupted one yields next, across epochs."""
    make = lambda: PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, **kwargs)  # noqa: E731
    per_epoch = sum(1 for _ in PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, **{**kwargs, "endless": False}))
    reference = contents(islice(make(), per_epoch + 40))  # crosses into the second, reshuffled, epoch
    assert reference[per_epoch:per_epoch + 40] != reference[:40]
    for cut in (0, 7, per_epoch - 3, per_epoch + 5):
        data = make()
        head = contents(islice(data, cut))
        save_data_state(tmp_path, 3, data.state_dict())  # the checkpoint file, as training writes it
        state = load_data_state(tmp_path, 3)
        resumed = make()
        resumed.load_state_dict(state)
        assert head + contents(islice(resumed, per_epoch + 40 - cut)) == reference, cut
    # the reader resumes at the book after the last one packed: it does not start the split again
    assert state["meta"]["reader"]["epoch"] == 1 and state["meta"]["epoch"] == 1
    mid = make()
    list(islice(mid, per_epoch // 2))
    reader = mid.state_dict()["meta"]["reader"]
    assert reader["epoch"] == 0 and reader["books_read"] >= 1 and reader["dataset_state"] is not None
    # a checkpoint from before data states existed: its place is found by re-reading (skip_blocks)
    skipping = make()
    skipping.skip_blocks = 11
    assert contents(islice(skipping, 20)) == reference[11:31]
    with pytest.raises(ValueError, match="other settings: seed=.* \\(now 99\\)"):
        PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, **{**kwargs, "seed": 99}).load_state_dict(state)


def test_replayed_blocks_mix_in_at_their_share_and_the_mix_resumes_exactly(tmp_path, pg19_tiny, tokenizer):
    """replay_dataset: a seeded share of the blocks comes from the other stream, counted as no book of the fine-tuning
    data; a checkpoint holds both streams and the choosing generator, so the mix resumes block for block."""
    def make(ratio=0.3):
        primary = PackedBlocks(str(pg19_tiny), "validation", tokenizer, BLOCK, shuffle_buffer=8, seed=1)
        replay = PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, shuffle_buffer=8, seed=2)
        return ReplayBlocks(primary, replay, ratio, seed=5)

    reference = list(islice(make(), 200))
    replayed = [item["book"] == -1 for item in reference]
    assert 0.2 < np.mean(replayed) < 0.4
    train_blocks = set(contents(islice(PackedBlocks(str(pg19_tiny), "train", tokenizer, BLOCK, shuffle_buffer=8,
                                                    seed=2), 200)))
    assert all(block in train_blocks for block, r in zip(contents(reference), replayed) if r)
    for cut in (0, 13, 120):
        data = make()
        head = list(islice(data, cut))
        save_data_state(tmp_path, 0, data.state_dict())
        resumed = make()
        resumed.load_state_dict(load_data_state(tmp_path, 0))
        tail = list(islice(resumed, 200 - cut))
        assert contents(head + tail) == contents(reference), cut
        assert [item["book"] for item in head + tail] == [item["book"] for item in reference]
    with pytest.raises(ValueError, match="replay_ratio=0.3 \\(now 0.5\\)"):
        make(0.5).load_state_dict(load_data_state(tmp_path, 0))


def test_prepared_shards_hold_the_same_tokens_and_resume_in_constant_time(tmp_path, pg19_tiny, tokenizer, book_tokens):
    meta = prepare(str(pg19_tiny), tokenizer, tmp_path, shard_tokens=50_000)
    stream = np.concatenate(book_tokens)
    train = meta["splits"]["train"]
    assert train["books"] == len(book_tokens) and train["tokens"] == len(stream) and len(train["files"]) > 1
    on_disk = np.concatenate([np.fromfile(tmp_path / f, dtype=np.uint16) for f in train["files"]])
    np.testing.assert_array_equal(on_disk, stream)
    assert set(meta["splits"]) == {"train", "validation", "test"}

    ranks = [contents(islice(PreparedBlocks(tmp_path, "train", BLOCK, r, 2, seed=0), 200)) for r in range(2)]
    first_epoch = PreparedBlocks(tmp_path, "train", BLOCK, 0, 2, seed=0).per_rank
    assert not set(ranks[0][:first_epoch]) & set(ranks[1][:first_epoch])
    resumed = contents(islice(PreparedBlocks(tmp_path, "train", BLOCK, 1, 2, seed=0, skip_blocks=150), 50))
    assert resumed == ranks[1][150:200]
    data = PreparedBlocks(tmp_path, "train", BLOCK, 1, 2, seed=0)
    list(islice(data, 150))
    restored = PreparedBlocks(tmp_path, "train", BLOCK, 1, 2, seed=0)
    restored.load_state_dict(data.state_dict())  # the state a checkpoint holds: the count of blocks used
    assert contents(islice(restored, 50)) == ranks[1][150:200]


def test_token_byte_lengths_count_the_utf8_bytes_of_the_text(tokenizer):
    text = "Mr. Pickwick's café — “a naïve remark”, said Sam Weller.\n"
    lengths = token_byte_lengths(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # EOS stands for no text


def test_missing_path_and_missing_text_field_are_clear_errors(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        next(iter(PackedBlocks(str(tmp_path / "nowhere"), "train", tokenizer, BLOCK)))
    (tmp_path / "train.jsonl").write_text(json.dumps({"content": "no text here"}) + "\n")
    with pytest.raises(ValueError, match="no 'text' field"):
        next(iter(PackedBlocks(str(tmp_path), "train", tokenizer, BLOCK)))


def test_token_stream_batches_match_single_book_encoding(tokenizer, book_tokens, pg19_tiny):
    books = [row["text"] for row in load_text_dataset(str(pg19_tiny), "train")]
    batched = list(token_stream(books, tokenizer, tokenizer.eos_token_id, batch_books=2))
    assert [b.tolist() for b in batched] == book_tokens
    assert [len(b) for b, _ in pack_blocks(iter(batched), BLOCK)] == [BLOCK + 1] * (sum(map(len, batched)) // (BLOCK + 1))
