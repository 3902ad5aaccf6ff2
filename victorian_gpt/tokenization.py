"""Train VictorianGPT's byte-level BPE tokenizer from scratch with `tokenizers`, streaming the corpus.

Byte-level means every UTF-8 string maps to tokens and back exactly: no normaliser, no unknown token, and the
decoder undoes the byte-to-unicode mapping. `<|endoftext|>` separates books and doubles as bos/eos.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from .sources import DEFAULT_DATASET, add_text_arguments, load_text_dataset, text_options_from_args

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]  # ids 0 and 1, matching VictorianGPTConfig's defaults
CHUNK_CHARS = 1 << 16  # a PG19 row is a whole book; the trainer gets it in pieces of this size


def _chunks(texts: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut each text at line breaks into pieces of about `chunk_chars`, so no whole book is held twice."""
    for text in texts:
        start = 0
        while start < len(text):
            end = min(start + chunk_chars, len(text))
            if end < len(text):
                newline = text.rfind("\n", start, end)
                end = newline + 1 if newline > start else end
            yield text[start:end]
            start = end


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on an iterator of texts and wrap it as a `PreTrainedTokenizerFast`."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # the caller's tqdm over books shows progress while the iterator is consumed
    )
    tokenizer.train_from_iterator(_chunks(texts), trainer=trainer)
    return wrap_tokenizer(tokenizer, model_max_length)


def wrap_tokenizer(tokenizer: Tokenizer, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=None,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        padding_side="left",  # decoder-only generation pads on the left
        clean_up_tokenization_spaces=False,  # exact round trip
        add_prefix_space=False,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: generate() on 4.x rejects them
    )


def train_tokenizer_from_source(
    source: str,
    vocab_size: int,
    output_dir: str,
    split: str = "train",
    max_books: int | None = None,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    text_options=None,
) -> PreTrainedTokenizerFast:
    """Stream `split` of a text source (Hub id, local PG19-format path or .txt books) into the trainer and save the
    result. `text_options`: how .txt books are read and split (`sources.TextOptions`)."""
    dataset = load_text_dataset(source, split=split, text_options=text_options)
    books = tqdm(islice(dataset, max_books), desc="tokenizer: books", unit="book", total=max_books)
    texts = (row["text"] for row in books)
    tokenizer = train_tokenizer(texts, vocab_size, min_frequency=min_frequency, model_max_length=model_max_length)
    save_tokenizer(tokenizer, output_dir)
    return tokenizer


def save_tokenizer(tokenizer, output_dir: str) -> None:
    """`save_pretrained`, naming the class `PreTrainedTokenizerFast`: transformers 5 writes its new name
    `TokenizersBackend`, which transformers 4.x cannot resolve; both versions load the old name."""
    tokenizer.save_pretrained(output_dir)
    path = os.path.join(output_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for load_time_only in ("is_local", "local_files_only"):  # facts about one load, not about the tokenizer
        config.pop(load_time_only, None)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt tokenizer", description="Train a byte-level BPE tokenizer on PG19-format text."
    )
    parser.add_argument("--dataset", default=None,
                        help="Hub dataset id, local PG19-format folder/file, or .txt books (folder or file)")
    parser.add_argument("--vocab-size", type=int, default=50304, help="vocabulary size, special tokens included")
    parser.add_argument("--output", required=True, help="folder to write tokenizer.json and tokenizer_config.json")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-books", type=int, default=None, help="train on the first N books only")
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--model-max-length", type=int, default=2048)
    add_text_arguments(parser)
    args = parser.parse_args(argv)
    try:  # a missing path, no .txt files, an empty or binary book: one line, before any training
        load_text_dataset(args.dataset or DEFAULT_DATASET, split=args.split, text_options=text_options_from_args(args))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))

    tokenizer = train_tokenizer_from_source(
        args.dataset or DEFAULT_DATASET,
        args.vocab_size,
        args.output,
        split=args.split,
        max_books=args.max_books,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
        text_options=text_options_from_args(args),
    )
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.output}")
    return 0
