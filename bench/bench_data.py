"""Tokenization + packing throughput on one core (tokens/s), against the plain transformers tokenizer call.

    python bench/bench_data.py [--books 20] [--repeats 3]

Ours: `training.blocks.PackedBlocks` over the local PG19 sample (streamed JSON Lines -> `encode_batch_fast` -> EOS ->
blocks of 2049 -> shuffle buffer). Reference: `tokenizer(texts)` book by book + EOS + the same packing, the way a
`datasets.map` recipe would tokenize. Both limited to one core (RAYON_NUM_THREADS=1, one torch thread), alternating.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from itertools import islice  # noqa: E402
from pathlib import Path  # noqa: E402
from common import require_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "pg19-sample"
BLOCK = 2048


def ours(tokenizer, books: int) -> tuple[int, float]:
    from training.blocks import PackedBlocks

    data = PackedBlocks(str(SAMPLE), "train", tokenizer, BLOCK, shuffle_buffer=1000, endless=False, max_books=books)
    start, blocks = time.perf_counter(), 0
    for _ in data:
        blocks += 1
    return blocks * (BLOCK + 1), time.perf_counter() - start


def reference(tokenizer, books: int) -> tuple[int, float]:
    import numpy as np

    from training.blocks import pack_blocks
    from victorian_gpt.sources import load_text_dataset

    start = time.perf_counter()
    texts = (row["text"] for row in islice(load_text_dataset(str(SAMPLE), "train"), books))
    ids = (np.array(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id], dtype=np.int32) for text in texts)
    blocks = sum(1 for _ in pack_blocks(ids, BLOCK))
    return blocks * (BLOCK + 1), time.perf_counter() - start


def main():
    global SAMPLE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=20)
    parser.add_argument("--dataset", default=str(SAMPLE), help="a local PG19-format folder (default: ../shared/data/pg19-sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    SAMPLE = require_dataset(parser, args.dataset)
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import AutoTokenizer

    from victorian_gpt.tokenization import train_tokenizer_from_source

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        train_tokenizer_from_source(str(SAMPLE), args.vocab_size, tokenizer_dir, max_books=10)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.model_max_length = 10**9  # the reference call would warn about book-length inputs
        ours_runs, ref_runs, tokens = [], [], 0
        for _ in range(args.repeats):
            tokens, seconds = ours(tokenizer, args.books)
            ours_runs.append(tokens / seconds)
            ref_tokens, seconds = reference(tokenizer, args.books)
            ref_runs.append(ref_tokens / seconds)
    ours_tps, ref_tps = statistics.median(ours_runs), statistics.median(ref_runs)
    print(json.dumps({
        "bench": "tokenize_and_pack", "books": args.books, "tokens": tokens, "vocab_size": args.vocab_size,
        "block_size": BLOCK, "cores": 1, "tokens_per_s": round(ours_tps), "reference_tokens_per_s": round(ref_tps),
        "ratio": round(ours_tps / ref_tps, 3), "runs": [round(x) for x in ours_runs],
        "reference_runs": [round(x) for x in ref_runs],
    }))


if __name__ == "__main__":
    main()
