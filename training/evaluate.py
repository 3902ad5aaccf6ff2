"""Loss, perplexity, bits per byte and word-level perplexity of a model on a split;
`victorian-gpt eval MODEL --dataset ... --split test`.

- loss: mean negative log-likelihood per predicted token (nats); perplexity = exp(loss): both depend on the tokenizer.
- bits per byte: total NLL / ln 2 / UTF-8 bytes of the text whose tokens were predicted; does not.
- word-level perplexity (PG19's measure, as in Rae et al. 2019 and the papers that compare with it):
  exp(total NLL / words), where the words are those of the original text that start in a predicted token, a word
  being a maximal run of non-whitespace characters (what Python's `str.split()` counts;
  `training.measures.count_words`).
  Does not depend on the tokenizer either.
Evaluation covers whole `block_size + 1`-token blocks: the first token of each block is context, not predicted, and
its NLL and any word starting in it are left out alike. The training loop reports the same figures.

`--stride S` evaluates with a sliding window instead, as Hugging Face's "Perplexity of fixed-length models" does
(its `trg_len` logic): book by book (a book's tokens, then EOS, as the training blocks are made; a window never
crosses books), windows of `block_size` input tokens and their next-token targets start every S tokens; the first
window of a book scores all its targets, each later one only its last S, so every token of a book but its first is
scored exactly once, and each scored token sees from `block_size - S + 1` to `block_size` tokens of context (all of
the book before it while the book is shorter than a window). `--stride 1` gives every token a full window; `--stride`
equal to `--block_size` gives each window's targets what a block's get, the blocks overlapping by the one token that
is context for the next.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from victorian_gpt.sources import DEFAULT_DATASET, add_text_arguments, load_text_dataset, text_options_from_args
from victorian_gpt.utils.modeling import context_length

from .blocks import PackedBlocks, make_dataloader, texts_of, token_stream
from .finetune import load_for_eval
from .measures import count_words, token_byte_lengths, token_word_tables
from .shards import PreparedBlocks


def lm_loss(model, block: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of a batch of `block_size + 1`-token blocks: inputs [:-1], targets [1:]."""
    logits = model(input_ids=block[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), block[:, 1:].reshape(-1), reduction=reduction)


def eval_blocks(source, split, tokenizer, block_size, max_blocks=None, rank=0, world_size=1, prepared_data=None,
                text_options=None):
    """The first `max_blocks` blocks of a split in file order (no shuffle); rank r takes every N-th one."""
    if prepared_data is not None:
        dataset = PreparedBlocks(prepared_data, split, block_size, endless=False, shuffle=False)
    else:
        dataset = PackedBlocks(source, split, tokenizer, block_size, sharding="blocks", shuffle_buffer=0, endless=False,
                               text_options=text_options)
    for j, item in enumerate(dataset):
        if max_blocks is not None and j >= max_blocks:
            return
        if j % world_size == rank:
            yield item


def text_measures(tokenizer) -> dict:
    """What `evaluate_blocks` needs from the tokenizer to count bytes and words: computed once per run."""
    return {"byte_lengths": token_byte_lengths(tokenizer), "word_tables": token_word_tables(tokenizer)}


@torch.no_grad()
def evaluate_blocks(model, blocks, measures: dict, batch_size: int, device, accelerator=None) -> dict:
    """Sum NLL, predicted tokens, their bytes and words over `blocks` (this rank's share), reduce across ranks,
    summarise. `measures`: `text_measures(tokenizer)`."""
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    tokens = bytes_ = words = 0
    byte_table = torch.from_numpy(measures["byte_lengths"])
    for batch in make_dataloader(_Blocks(blocks), batch_size, num_workers=0):
        block = batch["input_ids"]
        targets = block[:, 1:]
        bytes_ += int(byte_table[targets.clamp(max=len(byte_table) - 1)].sum())
        words += count_words(block.numpy(), measures["word_tables"])
        tokens += targets.numel()
        with (accelerator.autocast() if accelerator is not None else nullcontext()):
            nll += lm_loss(model, block.to(device), reduction="sum").double()
    totals = torch.tensor([nll.item(), tokens, bytes_, words], dtype=torch.float64, device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    return summarise(*totals.tolist())


def summarise(nll: float, tokens: float, bytes_: float, words: float = 0) -> dict:
    if tokens == 0:
        raise ValueError("evaluation saw no complete block; the split is shorter than one block")
    loss = nll / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nll / math.log(2) / bytes_ if bytes_ else None,
        "word_perplexity": math.exp(min(nll / words, 700.0)) if words else None,
        "tokens": int(tokens),
        "bytes": int(bytes_),
        "words": int(words),
    }


# ----------------------------------------------------------------------------------------------------------------------
# sliding-window evaluation (`--stride`)


def stride_windows(length: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows of a `length`-token sequence, as Hugging Face's sliding-window perplexity cuts them: (begin, end,
    scored) with inputs `ids[begin:end]`, targets `ids[begin + 1 : end + 1]`, of which the last `scored` count. Every
    target (tokens 1 .. length - 1) is scored exactly once, in order."""
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be from 1 to the block size ({block_size}), got {stride}")
    windows, scored_to = [], 0  # targets 1 .. scored_to are scored
    for begin in range(0, max(length - 1, 0), stride):
        end = min(begin + block_size, length - 1)
        windows.append((begin, end, end - scored_to))
        scored_to = end
        if end == length - 1:
            break
    return windows


@torch.no_grad()
def window_nll(model, ids, windows, batch_size: int, device, autocast=None) -> np.ndarray:
    """NLL (nats, float64) of the scored targets of `windows` (`stride_windows`) of one sequence `ids`, in order.

    Windows of one length go through the model together, `batch_size` at a time; logits are computed for the
    scored positions only (`logits_to_keep`). Positions are passed explicitly (0 .. window - 1), so a caller that
    changes how positions are encoded may use windows longer than the model's context."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    out = np.empty(sum(scored for _, _, scored in windows), dtype=np.float64)
    offsets = np.cumsum([0] + [scored for _, _, scored in windows])
    groups: dict[int, list[int]] = {}
    for i, (begin, end, _) in enumerate(windows):
        groups.setdefault(end - begin, []).append(i)
    for size, members in groups.items():
        for start in range(0, len(members), batch_size):
            batch = members[start : start + batch_size]
            keep = max(windows[i][2] for i in batch)
            inputs = torch.stack([ids[windows[i][0] : windows[i][1]] for i in batch]).to(device)
            targets = torch.stack([ids[windows[i][1] + 1 - keep : windows[i][1] + 1] for i in batch]).to(device)
            positions = torch.arange(size, device=device).expand(len(batch), size)
            with autocast() if autocast is not None else nullcontext():
                logits = model(input_ids=inputs, position_ids=positions, logits_to_keep=keep,
                               use_cache=False).logits
            nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none").double().cpu().numpy()
            for row, i in enumerate(batch):
                scored = windows[i][2]
                out[offsets[i] : offsets[i + 1]] = nll[row, keep - scored :]
    return out


def book_ids(source, split, tokenizer, text_options=None):
    """Each book of a split as int64 token ids followed by EOS (what `training.blocks.token_stream` packs)."""
    dataset = load_text_dataset(source, split=split, text_options=text_options)
    for ids in token_stream(texts_of(dataset, f"{source} ({split})"), tokenizer, tokenizer.eos_token_id):
        yield ids.astype(np.int64)


def evaluate_strided(model, books, measures: dict, block_size: int, stride: int, batch_size: int, device,
                     max_windows: int | None = None) -> dict:
    """Sliding-window loss, perplexity, bits per byte and word perplexity over `books` (token id arrays, each ending
    in EOS; see the module docstring), the first `max_windows` windows of them at most."""
    was_training = model.training
    model.eval()
    byte_table, word_tables = measures["byte_lengths"], measures["word_tables"]
    nll = 0.0
    tokens = bytes_ = words = windows_done = 0
    books = list(books)
    bar = tqdm(total=sum(max(len(ids) - 1, 0) for ids in books), desc=f"eval (stride {stride})", unit="tok",
               unit_scale=True, dynamic_ncols=True)
    for ids in books:
        if max_windows is not None and windows_done >= max_windows:
            break
        windows = stride_windows(len(ids), block_size, stride)
        if max_windows is not None:
            windows = windows[: max_windows - windows_done]
        if not windows:
            continue
        windows_done += len(windows)
        book_nll = window_nll(model, ids, windows, batch_size, device)
        scored = len(book_nll)  # targets 1 .. scored
        targets = np.clip(ids[1 : scored + 1], 0, len(byte_table) - 1)
        nll += float(book_nll.sum())
        tokens += scored
        bytes_ += int(byte_table[targets].sum())
        words += count_words(np.stack([ids[:scored], ids[1 : scored + 1]], axis=1), word_tables)
        bar.update(scored)
    bar.close()
    model.train(was_training)
    if tokens == 0:
        raise ValueError("evaluation scored no token; the split has no book of two tokens or more")
    return summarise(nll, tokens, bytes_, words)


class _Blocks(torch.utils.data.IterableDataset):
    """Wrap an iterator of blocks so the DataLoader batches it."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __iter__(self):
        return iter(self.blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt eval",
        description="Print validation/test loss, perplexity, bits per byte and PG19 word-level perplexity of a "
        "model as JSON. word_perplexity = exp(total NLL / words), a word being a whitespace-separated run of "
        "characters of the original text (as str.split() counts them) that starts in a predicted token.",
    )
    parser.add_argument("model", help="an exported model folder (or a LoRA adapter folder) or Hub repo id")
    parser.add_argument("--revision", default=None, help="the Hub revision (branch, tag or commit hash) of the model")
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                        help="allow a Hub model whose config.json has auto_map to run its code (a local folder is "
                        "trusted); pin --revision to a commit hash")
    parser.add_argument("--dataset", default=None,
                        help="Hub dataset id, local PG19-format folder/file, or .txt books (folder or file)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--block_size", "--block-size", type=int, default=None, help="default: the model's context")
    parser.add_argument("--max_eval_samples", "--max-eval-samples", type=int, default=None,
                        help="evaluate the first N blocks only, or with --stride the first N windows (default: the "
                        "whole split)")
    parser.add_argument("--stride", type=int, default=None,
                        help="sliding-window evaluation, book by book: windows of --block_size tokens every S tokens, "
                        "each scoring its last S targets (the first of a book all of them), so each token is scored "
                        "once with block_size - S + 1 to block_size tokens of context (1: a full window for every "
                        "token; Hugging Face's 'perplexity of fixed-length models'). Default: packed blocks")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_text_arguments(parser)
    args = parser.parse_args(argv)
    if args.block_size is not None and args.block_size < 1:
        parser.error(f"--block_size must be 1 or more, got {args.block_size}")
    if args.stride is not None and args.stride < 1:
        parser.error(f"--stride must be 1 or more (tokens the window moves by), got {args.stride}")
    if args.stride is not None and args.block_size is not None and args.stride > args.block_size:
        parser.error(f"--stride {args.stride} exceeds --block_size {args.block_size}: tokens between windows would "
                     "never be scored")
    dataset = args.dataset or DEFAULT_DATASET
    text_options = text_options_from_args(args)
    try:  # fail on the data, the model id/revision and the remote-code rule before loading any weights
        load_text_dataset(dataset, split=args.split, text_options=text_options)
        model, tokenizer = load_for_eval(args.model, args.revision, args.trust_remote_code)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device)
    n_positions = context_length(model.config)
    block_size = args.block_size or n_positions
    if block_size > n_positions:
        parser.error(f"--block_size {block_size} exceeds the model's context ({n_positions})")
    if args.stride is not None and args.stride > block_size:
        parser.error(f"--stride {args.stride} exceeds the block size ({block_size}, the model's context): tokens "
                     "between windows would never be scored")
    if args.stride is None:
        blocks = eval_blocks(dataset, args.split, tokenizer, block_size, args.max_eval_samples,
                             text_options=text_options)
        result = evaluate_blocks(model, blocks, text_measures(tokenizer), args.batch_size, device)
        result = {"model": args.model, "dataset": dataset, "split": args.split, "block_size": block_size, **result}
    else:
        books = book_ids(dataset, args.split, tokenizer, text_options)
        result = evaluate_strided(model, books, text_measures(tokenizer), block_size, args.stride, args.batch_size,
                                  device, args.max_eval_samples)
        result = {"model": args.model, "dataset": dataset, "split": args.split, "block_size": block_size,
                  "stride": args.stride, **result}
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
