"""Pre-tokenize a PG19-format source into uint16 shards, for runs where on-the-fly tokenization would starve the GPUs.

    python -m training.prepare --dataset emozilla/pg19 --tokenizer runs/gpt2-124m/tokenizer --output data/pg19-tok
    ... -m training.train --config training/configs/gpt2-124m.yaml --prepared_data data/pg19-tok --tokenizer ...

Shards hold 100M tokens each (`--shard_tokens`), EOS after every book; training reads them by memmap.
"""

from __future__ import annotations

import argparse
import json
import sys

from transformers import AutoTokenizer

from victorian_gpt.sources import add_text_arguments, text_options_from_args

from .shards import SHARD_TOKENS, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True,
                        help="Hub dataset id, local PG19-format folder/file, or .txt books (folder or file)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (the one training will use)")
    parser.add_argument("--output", required=True, help="folder for the shards and prepared.json")
    parser.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    parser.add_argument("--shard_tokens", type=int, default=SHARD_TOKENS)
    parser.add_argument("--max_books", type=int, default=None, help="per split (for trials)")
    add_text_arguments(parser)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    options = text_options_from_args(args)
    meta = prepare(args.dataset, tokenizer, args.output, args.splits, args.shard_tokens, args.max_books,
                   text_options=options.to_dict())
    print(json.dumps({split: {k: v for k, v in info.items() if k != "files"} | {"shards": len(info["files"])}
                      for split, info in meta["splits"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
